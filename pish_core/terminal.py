"""The container's stdin, stdout and stderr: inherited as they are, or a pseudo-terminal for ``-t``.

With ``-t`` the command gets the slave end of a new pty as its controlling terminal, and pish copies
bytes between its own terminal and the master end (in raw mode, so keys like Ctrl-C reach the container's
shell as they would a local one) until the container closes it. Without ``-i`` stdin is /dev/null, as
docker does it.
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

from pish_core.spec import ContainerSpec


class ProcessIO:
    """Plain stdio: the container writes straight to pish's stdout and stderr."""

    tty = False

    def __init__(self, child_fds: tuple[int, int, int]) -> None:
        self.child_fds = child_fds

    def started(self) -> None:
        """Called once the command runs: pish drops its copies of the container's ends."""

    def pump(self) -> None:
        """Copy the container's I/O until it is done (nothing to copy here)."""

    def resize(self) -> None:
        """Pass a window-size change on (only a terminal has one)."""


class PtyIO(ProcessIO):
    tty = True

    def __init__(self, master: int, slave: int, interactive: bool, output: int = 1) -> None:
        super().__init__((slave, slave, slave))
        self.master, self.slave, self.interactive, self.output = master, slave, interactive, output

    def started(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)  # now only the container holds it: read() on master gives EIO at its end
            self.slave = -1

    def resize(self) -> None:
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def pump(self) -> None:
        watch = [self.master] + ([0] if self.interactive else [])
        while True:
            ready, _, _ = select.select(watch, [], [])
            if self.master in ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError as exc:
                    if exc.errno == errno.EIO:  # every holder of the slave end is gone
                        return
                    raise
                if not data:
                    return
                _write_all(self.output, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    _write_all(self.master, data)
                else:  # our stdin ended: send the terminal's end-of-file, stop reading
                    _write_all(self.master, b"\x04")
                    watch.remove(0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def open_io(spec: ContainerSpec, output: int | None = None) -> Iterator[ProcessIO]:
    """The container's stdio for a foreground run, or with ``output`` (a detached run's log file)
    stdin from /dev/null and everything written to ``output``."""
    interactive = spec.process.interactive and output is None
    if not spec.process.terminal:
        if interactive:
            yield ProcessIO((0, 1, 2))
            return
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield ProcessIO((devnull, 1, 2) if output is None else (devnull, output, output))
        finally:
            os.close(devnull)
        return
    master, slave = os.openpty()
    io = PtyIO(master, slave, interactive, 1 if output is None else output)
    saved = None
    if interactive and os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    io.resize()
    try:
        yield io
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        io.started()
        os.close(master)
