"""What happened to containers, for ``pish events``: one JSON object a line in ``paths.events_file()``.

Any code that changes a container's life calls ``emit("die", cid, name, exitCode=1)``: one line, written
with one ``write`` on an ``O_APPEND`` descriptor, so concurrent writers (supervisors, the CLI) never
interleave. The log is bounded: once it passes ``max_bytes()`` it is renamed to ``events_old()`` (one
generation kept), under a lock so only one writer rotates. Events are docker's shape::

    {"Type": "container", "Action": "die", "Actor": {"ID": "...", "Attributes": {"name": ..., "exitCode": "1"}},
     "scope": "local", "time": 1764650000, "timeNano": 1764650000123456789}

A failure to log never fails the operation that logged it: events are a record, not a precondition.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Generator
from typing import Any

from pish_core import paths

#: docker's container actions pish emits (network connect/disconnect have Type "network")
ACTIONS = ("create", "start", "die", "oom", "stop", "kill", "destroy", "restart", "pause", "unpause", "rename",
           "connect", "disconnect")


def max_bytes() -> int:
    """When the log is rotated (``PISH_EVENTS_MAX_BYTES``, default 1 MiB)."""
    try:
        return max(4096, int(os.environ.get("PISH_EVENTS_MAX_BYTES", "")))
    except ValueError:
        return 1 << 20


def emit(action: str, cid: str, name: str = "", *, type: str = "container", **attributes: object) -> None:
    """Append one event: ``action`` happened to ``cid`` (a container id, or a network's name for
    ``type="network"``); ``attributes`` become the Actor's Attributes (as strings, as docker's)."""
    now = time.time_ns()
    attrs = {k: str(v) for k, v in attributes.items() if v is not None}
    if name:
        attrs["name"] = name
    event = {"Type": type, "Action": action, "Actor": {"ID": cid, "Attributes": attrs}, "scope": "local",
             "time": now // 1_000_000_000, "timeNano": now}
    line = (json.dumps(event, sort_keys=True) + "\n").encode()
    with contextlib.suppress(OSError):
        path = paths.events_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)  # one write: O_APPEND puts it whole at the end
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > max_bytes():
            _rotate()


def _rotate() -> None:
    """Rename the log to its one old generation, if it is still the big one (another writer may have
    rotated it meanwhile)."""
    lock = paths.events_lock()
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if paths.events_file().stat().st_size > max_bytes():
                os.replace(paths.events_file(), paths.events_old())
    finally:
        os.close(fd)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None  # a torn line (a writer killed mid-way cannot make one, but a full disk can)
    return event if isinstance(event, dict) and isinstance(event.get("timeNano"), int) else None


def read_all() -> list[dict[str, Any]]:
    """Every event still kept, oldest first."""
    out: list[dict[str, Any]] = []
    for path in (paths.events_old(), paths.events_file()):
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            out.extend(e for line in f if (e := _parse(line)) is not None)
    out.sort(key=lambda e: int(e["timeNano"]))
    return out


def follow(poll: float = 0.1) -> Generator[dict[str, Any] | None, None, None]:
    """Events as they are appended from now on; yields None after each idle poll (so a caller can stop
    at a deadline). A rotation is followed: the old file is read to its end, then the new one opened."""
    path = paths.events_file()
    f = _open_at_end(path)
    try:
        while True:
            line = f.readline() if f is not None else b""
            if line.endswith(b"\n"):
                if (event := _parse(line)) is not None:
                    yield event
                continue
            if line and f is not None:  # half a line: its writer is mid-write; read it again next time
                f.seek(-len(line), os.SEEK_CUR)
            if f is None or _replaced(f, path):
                if f is not None:
                    f.close()
                f = _open(path)
                if f is not None:
                    continue
            yield None
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()


def _open(path: os.PathLike[str]) -> Any:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _open_at_end(path: os.PathLike[str]) -> Any:
    f = _open(path)
    if f is not None:
        f.seek(0, os.SEEK_END)
    return f


def _replaced(f: Any, path: os.PathLike[str]) -> bool:
    """True when ``path`` is no longer the file ``f`` reads (rotated), and ``f`` is read to its end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev) and f.tell() >= mine.st_size


def last_exit_code(cid: str) -> int | None:
    """The exit code of the container's last ``die`` event, if the events log still has it."""
    for event in reversed(read_all()):
        if event.get("Action") == "die" and event.get("Actor", {}).get("ID") == cid:
            code = str(event["Actor"].get("Attributes", {}).get("exitCode", ""))
            return int(code) if code.isdigit() else None
    return None
