"""Unpack an uncompressed tar *file* in several processes: what a first import of a big rootfs tar waits for.

``unpack.py`` reads a tar once, front to back, and makes each member as it comes: one process, one core.
Most of that time is the kernel making files (open, write, owner, times, close: ~5 syscalls a file, 7,000
files in a Debian rootfs), and a tar on a file can be read in any order. So for a big uncompressed tar:

1. **Plan** (this process): the headers are read by offset, the data skipped (``_Headers``), and every
   member goes through the same ``Unpacker`` and its checks as in a streamed unpack, which makes the
   directories, symlinks and fifos at once; a regular file becomes a job (path, where its data is, owner,
   mode, time) and a hard link waits for the files.
2. **Write the files** while the plan goes on: each time the plan passes a quarter of the tar, a forked
   writer takes the files planned since the last one (the fork itself hands them over: no pipe of jobs),
   and this process writes the last quarter's. Each file is created new (``O_EXCL | O_NOFOLLOW``) under
   directories the plan made, and its data copied inside the kernel from the tar (``copy_file_range``):
   no byte passes through Python.
3. **Hard links**, once every writer is done, then the directories' modes and times
   (``Unpacker.finish``), as a streamed unpack ends.

Nothing in step 2 can meet a symlink: the plan refused every path with one on the way, and a directory
is never replaced. An archive the plan cannot order this way (a file given twice, or replaced by a later
member; OCI whiteouts) is unpacked again, from the start, by the streamed unpack (``_Sequential``), once
the writers are stopped.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import signal
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple, cast

from pish_core.errors import ImageError
from pish_core.image import whiteout
from pish_core.image.tarheaders import Member, members
from pish_core.image.unpack import (
    Unpacker,
    UnpackStats,
    create_file,
    describe,
    set_attributes,
    unpack_stream,
)

#: A tar smaller than this is streamed: a fork and a second look at the headers cost more than they save.
MIN_SIZE = 32 << 20
#: The tar's files are shared out between this many processes (this one and forked writers).
WRITERS = 4
#: What the child never takes: pish's handlers for them are the parent's alone.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE}


class _Sequential(Exception):
    """The archive does something the plan cannot order: unpack it front to back instead."""


class _Job(NamedTuple):
    path: str
    offset: int  # of its data in the tar
    member: Member
    chown: bool


class _Headers:
    """A tar file as ``tarheaders.members`` reads it, by offset: headers and long names read with ``pread``,
    file data skipped, never read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0
        self.real = os.fstat(fd).st_size  # what the file holds: a member's data must end before this

    def read(self, n: int) -> bytes:
        data = os.pread(self.fd, max(0, min(n, self.real - self.pos)), self.pos)  # never past the end
        self.pos += len(data)
        return data

    def skip(self, n: int) -> None:
        self.pos += n

    def take(self, n: int) -> list[memoryview]:
        return [memoryview(self.read(n))]

    def tell(self) -> int:
        return self.pos


class _Planner(Unpacker):
    """The streamed unpack's ``Unpacker``, with regular files and hard links kept for later."""

    def __init__(self, dest: Path, reader: _Headers, whiteouts: bool) -> None:
        super().__init__(dest, reader, whiteouts)
        self.jobs: list[_Job] = []
        self.links: list[tuple[str, str, Member]] = []
        self.later: set[str] = set()  # the paths of those: not made yet

    def whiteout(self, member: Member, rel: str) -> bool:
        if whiteout.PREFIX in rel:  # perhaps a whiteout (told apart, and made, by the streamed unpack)
            raise _Sequential(f"{member.name!r} may be a whiteout")
        return False

    def replacing(self, rel: str, member: Member) -> None:
        if rel in self.later:
            raise _Sequential(f"{member.name!r} replaces a file the archive gave before it")

    def file(self, rel: str, path: str, member: Member) -> None:
        self.jobs.append(_Job(path, member.offset_data, member, self.root and self.owner_differs(rel, member)))
        self.tree.modes[rel] = stat.S_IFREG
        self.later.add(rel)

    def hardlink(self, rel: str, path: str, member: Member) -> None:
        self.links.append((rel, path, member))
        self.tree.modes[rel] = stat.S_IFREG
        self.later.add(rel)


def worth_it(f: IO[bytes]) -> bool:
    """Whether ``f`` (an uncompressed tar) is unpacked faster in several processes: a big regular file, and
    a second CPU to run them on."""
    try:
        st = os.fstat(f.fileno())
    except (AttributeError, OSError):
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size >= MIN_SIZE and len(os.sched_getaffinity(0)) > 1


def unpack_parallel(f: IO[bytes], dest: Path, *, what: str, whiteouts: bool = True,
                    on_bytes: Callable[[int], None] | None = None) -> UnpackStats:
    """Unpack the uncompressed tar file ``f`` into the empty directory ``dest`` (see the module's text).
    ``f.read(0)`` is called between the steps: a reader may stop the unpack there by raising."""
    fd = f.fileno()
    if os.listdir(dest):
        raise ImageError(f"cannot unpack {what} into {dest}: it is not empty")
    try:
        try:
            return _unpack(f, fd, dest, whiteouts, on_bytes)
        except _Sequential:
            for entry in os.scandir(dest):  # what the plan made: the streamed unpack starts afresh
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            return unpack_stream(cast(IO[bytes], _Stream(f, on_bytes)), dest, what=what, whiteouts=whiteouts)
    except (tarfile.TarError, OSError, EOFError) as exc:  # what unpack_stream reports so too
        raise ImageError(f"cannot unpack {what}: {describe(exc)}") from None


def _unpack(f: IO[bytes], fd: int, dest: Path, whiteouts: bool,
            on_bytes: Callable[[int], None] | None) -> UnpackStats:
    reader = _Headers(fd)
    plan = _Planner(dest, reader, whiteouts)
    writers = _Writers(fd, plan.kept, on_bytes)
    try:
        # Each time the plan passes a quarter of the tar, a forked writer takes the files planned since the
        # last: they are written while the plan goes on (the plan is ~40 % of the work), and the fork
        # itself hands the jobs over. The files of the last quarter are written here.
        marks = [reader.real * k // WRITERS for k in range(1, WRITERS)]
        handed = 0
        for member in members(reader):
            plan.member(member)
            if marks and reader.pos >= marks[0]:
                del marks[0]
                writers.start(plan.jobs[handed:])
                handed = len(plan.jobs)
        if reader.real < plan.stats.data_end:
            raise EOFError("it is truncated (the data of its last member is cut short)")
        f.read(0)
        _write_files(fd, plan.jobs[handed:], plan.kept, on_bytes)
        writers.wait()
    finally:
        writers.stop()  # (none left, unless this failed: then they are killed and reaped)
    f.read(0)
    for rel, path, member in plan.links:
        Unpacker.hardlink(plan, rel, path, member)
    return plan.finish()


class _Writers:
    """Forked processes writing files; each one's error, if any, is raised by ``wait`` as it said it. Each
    is reaped by ``wait`` or ``stop`` (which kills those still running: this process failed)."""

    def __init__(self, fd: int, kept: int, on_bytes: Callable[[int], None] | None) -> None:
        self.fd, self.kept, self.on_bytes = fd, kept, on_bytes
        self.running: list[tuple[int, IO[bytes], int]] = []  # pid, the pipe it reports on, its bytes

    def start(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        # Blocked across the fork, and for good in the child: it must never run a handler of pish's (a ^C
        # would unwind it into the importer's clean-up, removing the tree this process is still writing).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:  # no other process to be had (a pids limit, say): these files are written here
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(read_end)
            os.close(write_end)
            _write_files(self.fd, jobs, self.kept, self.on_bytes)
            return
        if pid == 0:  # the child: syscalls only, and out without running anything of the parent's
            code = 1
            try:
                gc.disable()  # no finalizer of an object the parent owns runs here
                os.close(read_end)
                _write_files(self.fd, jobs, self.kept, None)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, as one line
                with contextlib.suppress(BaseException):
                    os.write(write_end, describe(exc).encode(errors="replace")[:4000])
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(write_end)
        self.running.append((pid, os.fdopen(read_end, "rb"), sum(job.member.size for job in jobs)))

    def wait(self) -> None:
        """Wait for each writer; raise the first failure."""
        while self.running:
            pid, said, size = self.running[0]
            message = said.read().decode(errors="replace")  # all it said, once it is gone
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            said.close()
            del self.running[0]
            if code != 0:
                raise OSError(message or f"a process writing files ended with {code}")
            if self.on_bytes is not None:
                self.on_bytes(size)

    def stop(self) -> None:
        for pid, said, _ in self.running:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            said.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.running = []


def _write_files(fd: int, jobs: list[_Job], kept: int, on_bytes: Callable[[int], None] | None) -> None:
    for job in jobs:
        out = create_file(job.path, job.member.mode)
        try:
            _copy(fd, out, job.offset, job.member.size)
            set_attributes(out, job.member, job.chown, kept)
        finally:
            os.close(out)
        if on_bytes is not None:
            on_bytes(job.member.size)


_in_kernel = True  # copy_file_range works between these files (else: sendfile, as old kernels need)


def _copy(src: int, dst: int, offset: int, size: int) -> None:
    """``size`` bytes of ``src`` from ``offset`` to the end of ``dst``, copied by the kernel."""
    global _in_kernel
    while size > 0:
        n = 0
        if _in_kernel:
            try:
                n = os.copy_file_range(src, dst, size, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                _in_kernel = False
        if n == 0:  # (a filesystem may also answer 0 for "not here": sendfile tells a real end)
            n = os.sendfile(dst, src, offset, size)
            if n == 0:
                raise EOFError("it is truncated (the data of a member is cut short)")
        offset += n
        size -= n


class _Stream:
    """The tar file from its start, read by offset (its file position is not ours to move), for the
    streamed unpack: ``f.read(0)`` before each read, as a reader of ``f`` itself would, and the bytes told."""

    def __init__(self, f: IO[bytes], on_bytes: Callable[[int], None] | None) -> None:
        self.f, self.fd, self.on_bytes = f, f.fileno(), on_bytes
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        self.f.read(0)
        data = os.pread(self.fd, n if n >= 0 else os.fstat(self.fd).st_size, self.pos)
        self.pos += len(data)
        if self.on_bytes is not None and data:
            self.on_bytes(len(data))
        return data
