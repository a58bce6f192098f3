"""A file that nobody writes while pish reads it: a read lease (``fcntl(F_SETLEASE, F_RDLCK)``).

The import of an uncompressed rootfs tar hashes the file in one thread and unpacks it from another read
of it (``importer.py``, ``untar.py``): the digest names the tree unpacked only if no byte changed between
the two reads. A look at the file's ctime does not tell: a write through a shared mapping whose pages are
dirty already moves no ctime. A read lease does: the kernel refuses it while any process has the file
open for writing (a writable mapping included) and, once it is held, holds up every later open for
writing and every truncate until pish lets go (or the kernel's lease-break-time, 45 s, runs out); such an
attempt starts a *lease break*, which ``held()`` then sees. Where no lease can be had (a writer has the
file open, NFS or FUSE, a file of another user without CAP_LEASE, a thread other than the main one),
the import hashes the very bytes it unpacks instead.
"""
from __future__ import annotations

import contextlib
import fcntl
import signal
from collections.abc import Callable, Iterator

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)


@contextlib.contextmanager
def read_lease(fd: int) -> Iterator[Callable[[], bool] | None]:
    """Hold a read lease on ``fd`` (opened read-only) for the block: yields ``held``, which is True while
    nobody has asked to write the file, or None if it could not be leased."""
    try:  # a lease break is told by SIGIO, whose default action would end pish: ignored meanwhile
        old = signal.signal(signal.SIGIO, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to set
        yield None
        return
    try:
        try:
            fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
        except OSError:  # EAGAIN: open for writing somewhere; EINVAL: no leases here; EACCES: not ours
            yield None
            return
        try:
            yield lambda: bool(fcntl.fcntl(fd, F_GETLEASE) == fcntl.F_RDLCK)  # a break pending reads F_UNLCK
        finally:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
    finally:
        signal.signal(signal.SIGIO, old if old is not None else signal.SIG_DFL)
