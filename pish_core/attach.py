"""``pish attach``: the terminal of a detached ``-t`` container, reached through its supervisor.

The supervisor holds the pty's master end (``terminal.PtyIO``); once the container runs, the supervisor's
monitor (``pish_core/monitor.py``, ``serve_pty``) listens on a unix socket in the container's directory
(``paths.attach_socket``). Everything the container writes
goes to its log and to every attached client; what a client sends goes to the container's terminal when
it was made with ``-i``. A client sends frames (one byte of kind, four of length, the payload): input, or
a window size for the container's pty. The client detaches on its detach keys (``ctrl-p,ctrl-q`` by
default, as docker's), which it watches for itself, and leaves with the container's exit code when the
container ends.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path

from pish_core import events, paths, state
from pish_core.errors import SpecError, StateError
from pish_core.monitor import DATA, HEADER_SIZE, WINSIZE, serve_pty, write_all
from pish_core.spec import ContainerSpec
from pish_core.terminal import ProcessIO, PtyIO, open_io

_HEADER = struct.Struct("!BI")  # the monitor reads the same frames: kind, then length, big-endian
assert _HEADER.size == HEADER_SIZE
DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"


@contextlib.contextmanager
def _in_dir(directory: Path) -> Iterator[str]:
    """A short path to ``directory`` (``/proc/self/fd/N``): a unix socket's path must fit in 108 bytes."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class AttachablePty(PtyIO):
    """A detached container's pty: copied to its log and to the clients of its attach socket."""

    def __init__(self, cid: str, interactive: bool, output: int) -> None:
        super().__init__(False, output)
        self.cid, self.accept_input = cid, interactive

    def pump(self) -> None:
        """Serve the terminal here (a supervisor that kept running as itself: see ``detach._hand_off``);
        usually the container's monitor does, after the supervisor exec'd it."""
        serve_pty(self.master, self.output, str(paths.attach_socket(self.cid)), self.accept_input)


@contextlib.contextmanager
def detached_io(spec: ContainerSpec, output: int) -> Iterator[ProcessIO]:
    """The stdio of a detached container: an attachable pty with ``-t``, else ``terminal.open_io``'s."""
    if not spec.process.terminal:
        with open_io(spec, output=output) as io:
            yield io
        return
    pty_io = AttachablePty(spec.id, spec.process.interactive, output)
    try:
        yield pty_io
    finally:
        pty_io.close()


# -- the client ---------------------------------------------------------------------------------------


def parse_detach_keys(text: str) -> bytes:
    """``ctrl-p,ctrl-q`` -> b"\\x10\\x11", as docker's --detach-keys: ``ctrl-X`` (a letter, @ [ \\ ] ^ _)
    or a single character, comma-separated."""
    keys = bytearray()
    for item in text.split(","):
        if len(item) == 1 and item.isascii():
            keys.append(ord(item))
        elif item.startswith("ctrl-") and len(item) == 6 and (c := item[5].upper()) in "@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_":
            keys.append(ord(c) - 64)
        else:
            raise SpecError(f"invalid --detach-keys {text!r}: use keys like ctrl-p,ctrl-q (ctrl-LETTER or one character)")
    return bytes(keys)


def _frame(kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def attach(ref: str, detach_keys: str = DEFAULT_DETACH_KEYS) -> int:
    """Attach this terminal to a running ``-t`` container; return its exit code when it ends, 0 when the
    user detaches with ``detach_keys``."""
    keys = parse_detach_keys(detach_keys)
    s = state.resolve(ref)
    if not s.command_running():
        raise StateError(f"container {s.name} is not running: only a running container can be attached to")
    if not s.spec.get("process", {}).get("terminal"):
        raise StateError(f"container {s.name} has no terminal (run it with -t to attach; pish logs -f shows "
                         "its output)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _in_dir(paths.attach_socket(s.id).parent) as short:
            sock.connect(f"{short}/{paths.attach_socket(s.id).name}")
    except OSError:
        sock.close()
        raise StateError(f"container {s.name}: its supervisor offers no terminal to attach to") from None
    with sock:
        detached = _pump(sock, keys)
    return 0 if detached else _exit_code(s.id)


def _pump(sock: socket.socket, keys: bytes) -> bool:
    """Copy between our terminal and the socket; True when the user detached, False when the container's
    terminal closed."""
    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
        with contextlib.suppress(OSError):
            sock.sendall(_frame(WINSIZE, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)))
    held = b""  # the detach keys typed so far, not sent yet
    watch: list[int | socket.socket] = [sock, 0]
    try:
        while True:
            ready, _, _ = select.select(watch, [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return False
                write_all(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    watch.remove(0)
                    continue
                out = bytearray()
                for byte in data:
                    candidate = held + bytes([byte])
                    if keys and keys.startswith(candidate):
                        held = candidate
                        if held == keys:
                            return True
                    else:
                        out += candidate
                        held = b""
                if out:
                    sock.sendall(_frame(DATA, bytes(out)))
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _exit_code(cid: str, timeout: float = 10) -> int:
    """The exit code the container's record (or, once removed, its die event) shows after its end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = state.ContainerState.load(cid)
        except StateError:
            break
        if s.status in ("stopped", "restarting") and s.exit_code is not None:
            return s.exit_code
        time.sleep(0.02)
    code = events.last_exit_code(cid)
    return 0 if code is None else code

