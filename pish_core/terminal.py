"""The container's stdin, stdout and stderr: inherited as they are, or a pseudo-terminal for ``-t``.

With ``-t`` the container's init makes a pty from the container's own /dev/pts (so inside, ``tty`` names
it), takes the slave end as its controlling terminal, and hands the master end back to pish over a unix
socket, as runc's ``--console-socket`` does. pish then copies bytes between its own terminal and the
master (in raw mode, so keys like Ctrl-C reach the container's shell as they would a local one) until the
container closes it. Without ``-i`` stdin is /dev/null, as docker does it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import termios
import tty
from collections.abc import Iterator

from pish_core.monitor import read_pty, write_all  # one copy: the monitor may import nothing of pish
from pish_core.spec import ContainerSpec


class ProcessIO:
    """Plain stdio: the container writes straight to pish's stdout and stderr (or a log file)."""

    tty = False
    console: int | None = None  # the child's end of the console socket, for a pty

    def __init__(self, child_fds: tuple[int, int, int], owned: int | None = None) -> None:
        self.child_fds = child_fds
        self._owned = owned  # an fd we opened for the child (/dev/null), closed with us

    def started(self) -> None:
        """Called once the command runs: pish drops its copies of the container's ends."""

    def pump(self) -> None:
        """Copy the container's I/O until it is done (nothing to copy here)."""

    def resize(self) -> None:
        """Pass a window-size change on (only a terminal has one)."""

    def close(self) -> None:
        """Release what this holds."""
        if self._owned is not None:
            os.close(self._owned)
            self._owned = None


class PtyIO(ProcessIO):
    tty = True

    def __init__(self, interactive: bool, output: int = 1) -> None:
        import socket  # here, not at the top: socket.py costs every run without a terminal ~3 ms

        self._sock, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        super().__init__((0, 1, 2))
        self.console = child_end.detach()
        self.master = -1
        self.interactive, self.output = interactive, output

    def started(self) -> None:
        if self.console is not None:
            os.close(self.console)  # only the container holds it now
            self.console = None
        import socket

        _, fds, _, _ = socket.recv_fds(self._sock, 16, 1)  # sent by the init before it exec'd
        if not fds:
            raise OSError(errno.EPROTO, "the container sent no terminal")
        self.master = fds[0]
        self.resize()

    def resize(self) -> None:
        if self.master < 0:
            return
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def pump(self) -> None:
        saved = None
        if self.interactive and os.isatty(0):  # raw only while we copy: our own log lines stay whole
            saved = termios.tcgetattr(0)
            tty.setraw(0)
        try:
            self._copy()
        finally:
            if saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)

    def _copy(self) -> None:
        watch = [self.master] + ([0] if self.interactive else [])
        while True:
            ready, _, _ = select.select(watch, [], [])
            if self.master in ready:
                data = read_pty(self.master)
                if not data:
                    return
                write_all(self.output, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    write_all(self.master, data)
                else:  # our stdin ended: send the terminal's end-of-file, stop reading
                    write_all(self.master, b"\x04")
                    watch.remove(0)

    def close(self) -> None:
        for fd in (self.console, self.master):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.console, self.master = None, -1
        self._sock.close()


@contextlib.contextmanager
def open_io(spec: ContainerSpec, output: int | None = None) -> Iterator[ProcessIO]:
    """The container's stdio for a foreground run, or with ``output`` (a detached run's log file)
    stdin from /dev/null and everything written to ``output``."""
    interactive = spec.process.interactive and output is None
    if spec.process.terminal:
        io: ProcessIO = PtyIO(interactive, 1 if output is None else output)
    elif interactive:
        io = ProcessIO((0, 1, 2))
    else:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        io = ProcessIO((devnull, 1, 2) if output is None else (devnull, output, output), owned=devnull)
    try:
        yield io
    finally:
        io.close()
