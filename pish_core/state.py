"""The state store: one record per container under ``/run/pish/containers/<id>/state.json``.

The record is also the container's journal: a driver writes what it is about to acquire into
``resources`` *before* acquiring it and drops the entry after releasing it. Whatever a killed run leaves
behind is therefore listed here, and ``pish gc`` can undo it. Writes are atomic (write, then rename);
anything that reads-then-writes shared state holds an ``flock``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pish_core import events, paths, proc
from pish_core.errors import StateError

STATUSES = ("creating", "created", "running", "restarting", "stopped")


@contextlib.contextmanager
def flocked(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold an flock on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write, then rename over: a reader, or a process killed mid-write, never sees half a file. No fsync:
    the state lives in /run (tmpfs) and what must survive is a crash of pish, not of the machine.

    One line, from ``json.dumps`` without indent: only that runs the C encoder (``json.dump`` to a file, or
    any indent, runs the pure-Python one: ~1 ms for a container's record, written several times a run).
    ``pish inspect`` is the readable view."""
    text = json.dumps(data, default=str).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            while text:
                text = text[os.write(fd, text):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk, say: no half-written temp file left behind
        raise


@dataclasses.dataclass
class ContainerState:
    id: str
    name: str
    image: str
    command: list[str]
    status: str = "creating"
    created: float = dataclasses.field(default_factory=time.time)
    pid: int | None = None
    pid_start: str | None = None
    supervisor_pid: int | None = None
    supervisor_start: str | None = None  # with the pid, names the supervisor for good (pids get reused)
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    oom_killed: bool = False  # docker's State.OOMKilled: the kernel's OOM killer killed a process of it
    error: str | None = None
    address: str | None = None
    auto_remove: bool = False
    restart_policy: dict[str, Any] = dataclasses.field(default_factory=dict)  # docker's {Name, MaximumRetryCount}
    restart_count: int = 0  # restarts by the policy since the last `pish start`
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    resources: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def command_running(self) -> bool:
        """True while the record says running and its pid is still that same process (pids get reused)."""
        return self.status == "running" and proc.is_same(self.pid, self.pid_start)

    def current_name(self) -> str:
        """The name now: a ``pish rename`` since this record was loaded is in the name file."""
        try:
            return paths.name_file(self.id).read_text()
        except FileNotFoundError:
            return self.name

    def save(self) -> None:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # shallow: json copies
        write_json_atomic(paths.state_file(self.id), fields)

    @classmethod
    def load(cls, cid: str) -> ContainerState:
        try:
            data = json.loads(paths.state_file(cid).read_text())
        except FileNotFoundError:
            raise StateError(f"no such container: {cid[:12]}") from None
        fields = {f.name for f in dataclasses.fields(cls)}
        with contextlib.suppress(FileNotFoundError):
            data["name"] = paths.name_file(cid).read_text()
        return cls(**{k: v for k, v in data.items() if k in fields})


class Journal:
    """The list of resources a container holds, persisted in its state record on every change.

    It also holds the supervisor lock: while the lock is held, the container has a live supervisor.
    """

    #: True once the container is left to run without us (``pish-oci create`` exits, as runc's does):
    #: leaving a driver's block then keeps what it acquired, recorded here for a later ``delete``.
    detached = False

    def __init__(self, state: ContainerState, lock_fd: int) -> None:
        self.state = state
        self.lock_fd = lock_fd
        self._in_transition = False

    def _save(self) -> None:
        if not self._in_transition:
            self.state.save()

    @contextlib.contextmanager
    def transition(self) -> Iterator[None]:
        """What changes in the block (the record's fields, resources noted or kept) is written once, at its
        end: one write per transition of the container. Nothing is written if the block raises."""
        self._in_transition = True
        try:
            yield
        finally:
            self._in_transition = False
        self.state.save()

    def close(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    def add(self, kind: str, driver: str, what: str, **data: Any) -> dict[str, Any]:
        """Record a resource about to be acquired; return the record to pass to ``drop`` later."""
        record = {"kind": kind, "driver": driver, "what": what, **data}
        self.state.resources.append(record)
        self._save()
        return record

    @contextlib.contextmanager
    def held(self, kind: str, driver: str, what: str, release: Callable[[dict[str, Any]], None],
             **data: Any) -> Iterator[dict[str, Any]]:
        """Record a resource, then acquire it in the block; on the way out ``release`` it and forget it.
        The shape of every driver: what it takes and how it gives it back, side by side."""
        record = self.add(kind, driver, what, **data)
        try:
            yield record
        finally:
            if not self.detached and not record.get("kept"):
                release(record)
                self.drop(record)

    def note(self, kind: str, **data: Any) -> dict[str, Any] | None:
        """Add ``data`` to the record of the resource of ``kind``; return it, None if it holds none."""
        record = self.kept(kind) or next((r for r in self.state.resources if r.get("kind") == kind), None)
        if record is not None:
            self.update(record, **data)
        return record

    def keep(self, kind: str) -> dict[str, Any] | None:
        """Mark the resource of ``kind`` to outlive this run (a detached container's root filesystem, kept
        until ``pish rm`` as docker keeps the writable layer); return its record, None if it holds none."""
        return self.note(kind, kept=True)

    def kept(self, kind: str) -> dict[str, Any] | None:
        """The record of ``kind`` an earlier run kept (``keep``), if any."""
        return next((r for r in self.state.resources if r.get("kind") == kind and r.get("kept")), None)

    def update(self, record: dict[str, Any], **data: Any) -> None:
        """Change a resource's record; written only if something changed."""
        if any(k not in record or record[k] != v for k, v in data.items()):
            record.update(data)
            self._save()

    def drop(self, record: dict[str, Any]) -> None:
        """Forget a resource after it is released."""
        with contextlib.suppress(ValueError):
            self.state.resources.remove(record)
        if paths.container_dir(self.state.id).exists():
            self._save()


def create(state: ContainerState) -> Journal:
    """Write a new container's record, its supervisor lock already held; refuse a name in use.

    The lock is taken before the record becomes visible, so ``pish gc`` can never mistake a container
    being created for one whose supervisor died.
    """
    with flocked(paths.names_lock()):
        for other in list_all():
            if other.name == state.name:
                raise StateError(f"the container name {state.name!r} is already in use by {other.id[:12]}")
        # 0711, as runc's state directories: a container in a user namespace of its own must reach the
        # files bound into it from here (hosts, hostname, resolv.conf); the record and logs are 0600.
        paths.container_dir(state.id).mkdir(parents=True, mode=0o711)
        os.chmod(paths.container_dir(state.id), 0o711)
        # A `pish gc` may hold it a moment, having found the directory without a record: it lets go
        # without removing anything, as we hold the names lock (see remove_unloadable).
        lock_fd = try_lock(state.id, wait=True)
        assert lock_fd is not None, "a new container's directory cannot vanish while we hold the names lock"
        state.save()
    return Journal(state, lock_fd)


def rename(ref: str, new: str) -> ContainerState:
    """Give a container another name (``pish rename``), under the names lock, refused if it is taken.
    The new name goes into a file of its own: the record is its supervisor's to write."""
    from pish_core.names import check_name

    check_name(new)
    with flocked(paths.names_lock()):
        s = resolve(ref)
        for other in list_all():
            if other.name == new and other.id != s.id:
                raise StateError(f"the container name {new!r} is already in use by {other.id[:12]}")
        tmp = paths.name_file(s.id).with_suffix(".tmp")
        tmp.write_text(new)
        os.replace(tmp, paths.name_file(s.id))
    events.emit("rename", s.id, new, image=s.image, oldName=s.name)
    s.name = new
    return s


def try_lock(cid: str, wait: bool = False) -> int | None:
    """Take the supervisor lock of ``cid`` if it is free (or once it is, with ``wait``); return its fd
    (close it to let go), else None."""
    try:
        fd = os.open(paths.supervisor_lock(cid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:  # the container directory is gone
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def supervisor_alive(cid: str) -> bool:
    """True while the supervisor of ``cid`` holds its lock. Only looks: a lock file missing (the directory
    being removed) is not made again, or the removal's last rmdir would fail and leave the directory."""
    try:
        fd = os.open(paths.supervisor_lock(cid), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def wait_supervisor_gone(cid: str, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the supervisor of ``cid`` to finish; True if it did."""
    deadline = time.monotonic() + timeout
    while supervisor_alive(cid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def remove(cid: str) -> None:
    shutil.rmtree(paths.container_dir(cid), ignore_errors=True)


def remove_unloadable(cid: str) -> bool:
    """Remove the directory of a container whose record does not load (a run killed before it wrote it);
    True if it did. Not while it is being created: ``create`` holds the names lock from mkdir to the
    first write, so under that lock a record still missing, with its supervisor lock free, is debris.
    The caller must not hold the supervisor lock: ``create`` waits for it while holding the names lock."""
    with flocked(paths.names_lock()):
        fd = try_lock(cid)
        if fd is None:
            return False
        try:
            ContainerState.load(cid)
        except (StateError, ValueError):
            remove(cid)
            return True
        finally:
            os.close(fd)
        return False  # written meanwhile: an ordinary record now


def finish(record: ContainerState) -> None:
    """Remove a container's record, unless its journal still lists resources: then keep it for `pish gc`."""
    if record.resources:
        record.error = record.error or "clean-up incomplete: run `pish gc`"
        record.save()
    else:
        remove(record.id)
        events.emit("destroy", record.id, record.name, image=record.image)


def list_all() -> list[ContainerState]:
    try:
        ids = os.listdir(paths.containers_dir())
    except FileNotFoundError:
        return []
    out = []
    for cid in ids:
        with contextlib.suppress(StateError, json.JSONDecodeError, TypeError):
            out.append(ContainerState.load(cid))
    return sorted(out, key=lambda s: s.created)


def resolve(ref: str) -> ContainerState:
    """A container by name, full id, or unique id prefix, as docker accepts them."""
    states = list_all()
    for s in states:
        if s.name == ref or s.id == ref:
            return s
    matches = [s for s in states if s.id.startswith(ref)] if len(ref) >= 1 else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise StateError(f"container id prefix {ref!r} is ambiguous ({len(matches)} match)")
    raise StateError(f"no such container: {ref}")
