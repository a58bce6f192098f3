"""``pish cp``: files and directories between the host and a container, or a tar on stdin/stdout.

A container's files are hostile: any component of a path in it may be a symlink meant to lead out
(``/etc/evil -> /``), and a running container may swap a directory for such a link while we copy. So a
container path is resolved as the container sees it, inside its root (``rootpath.resolve_in_root``),
and then opened one component at a time from a descriptor of that root with ``O_NOFOLLOW``: a link put
there after the resolution makes the copy fail (ELOOP), never leave the root. Everything below is read
and written through directory descriptors (``*at`` calls), symlinks are copied as symlinks and never
followed, devices, fifos and sockets are skipped. Below the destination, what is written is named by
the source (a tree, a tar's members): a symlink found in its way is replaced, never written through.

The root is ``/proc/PID/root`` while the command runs (the container's own mounts, volumes and tmpfs
included), else the root filesystem its storage driver mounted (a created container, or an exited one,
whose root filesystem is kept until ``pish rm``). The host side is resolved the ordinary way. The
kernel's filesystems mounted in a running container (``/proc``, ``/sys``, ...) are not its files: as in
``docker cp``, they come out as empty directories (reading them would copy the kernel's view of the host,
fail on files like ``/proc/1/attr/*``, or consume ``/proc/kmsg``).

docker's rules for what lands where: a file onto a missing path creates it, into a directory goes
inside it; a directory onto a missing path becomes it, into an existing directory goes inside it
(``SRC/.``: its contents do); ``-`` as SRC is a tar to extract into a directory, as DEST a tar of SRC.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pish_core import log, state
from pish_core.errors import PishError, StateError
from pish_core.rootpath import resolve_in_root
from pish_core.value import Value, value

_log = log.get("cp")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: filesystems whose files are the kernel's: a copy does not descend into them
_KERNEL_FS = frozenset({"proc", "sysfs", "devpts", "cgroup", "cgroup2", "mqueue", "securityfs", "debugfs",
                        "tracefs", "bpf", "configfs", "pstore", "fusectl", "binfmt_misc", "efivarfs", "nsfs"})


class CopyError(PishError):
    """A path to copy from or to is missing, of the wrong kind, or changed under us."""


@value
class Side(Value):
    """One end of a copy: a root (``/`` for the host) and a path inside it as its owner sees it."""

    root: Path
    path: str
    label: str  # how errors name it: "container web" or "host"
    owner: tuple[int, int] | None = None  # who new files belong to (a --userns container's root)
    kernel_devs: frozenset[int] = frozenset()  # st_dev of its kernel filesystems (/proc, /sys): not descended


@dataclass
class Entry:
    """One file of a tree being copied; ``parts``: its path below the top of the copy ([] for the top)."""

    parts: list[str]
    kind: str  # "dir", "file", "symlink", "hardlink"
    mode: int
    mtime: float
    fd: int = -1  # a file's open descriptor (closed by the reader after the entry is handled)
    link: str = ""  # a symlink's target; a hardlink's path (its parts joined by /) below the top


def parse_operand(text: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` -> (container, path); a host path (or ``-``) -> (None, path). As docker: a
    path that starts with / or . is the host's even with a colon in it."""
    if text.startswith(("/", ".")) or ":" not in text:
        return None, text
    ref, _, path = text.partition(":")
    if not ref:
        raise CopyError(f"invalid container path {text!r}: use CONTAINER:PATH")
    return ref, path or "/"


def container_side(ref: str, path: str) -> Side:
    """The root a container's files are reached through now (see the module's doc)."""
    from pish_core import userns
    from pish_core.drivers import Storage, load_class
    from pish_core.spec import ContainerSpec

    s = state.resolve(ref)
    kernel_devs: frozenset[int] = frozenset()
    if s.command_running():
        root = Path(f"/proc/{s.pid}/root")
        kernel_devs = _kernel_devs(s.pid)
    else:
        record = next((r for r in s.resources if r.get("kind") == "storage" and r.get("rootfs")), None)
        if record is None or not Path(record["rootfs"]).is_dir():
            raise StateError(f"container {s.name} is {s.status} and keeps no root filesystem to copy from or to")
        root = Path(record["rootfs"])
        driver = load_class("storage", record["driver"])
        if issubclass(driver, Storage) and driver.unmounted(root):
            # rootless: its overlay went with the supervisor's mount namespace; the empty mount point
            # would read as nothing, and what was written there would be hidden by the next mount
            raise StateError(f"container {s.name} is {s.status} and its root filesystem is not mounted: "
                             "start it to copy from or to it")
    spec = ContainerSpec.from_dict(s.spec)
    owner = userns.host_root(spec.userns) if spec.userns.mode != "host" else None
    if not path.startswith("/"):
        path = "/" + path  # docker: relative to the container's root
    return Side(root, path, f"container {s.name}", owner, kernel_devs)


def _kernel_devs(pid: int | None) -> frozenset[int]:
    """The device numbers of the kernel filesystems mounted in ``pid``'s mount namespace (mountinfo)."""
    devs = set()
    with contextlib.suppress(OSError), open(f"/proc/{pid}/mountinfo") as table:
        for line in table:
            fields = line.split()
            with contextlib.suppress(ValueError, IndexError):
                if fields[fields.index("-") + 1] in _KERNEL_FS:
                    major, minor = fields[2].split(":")
                    devs.add(os.makedev(int(major), int(minor)))
    return frozenset(devs)


def host_side(path: str) -> Side:
    """A host path, made absolute; a trailing ``/`` or ``/.`` kept (they mean something to ``copy``)."""
    full = os.path.abspath(path)
    if full != "/" and path.endswith(("/.", "/")):
        full += "/." if path.endswith("/.") else "/"
    return Side(Path("/"), full, "host")


# -- resolving and opening, never leaving the root -----------------------------------------------------


def _split(side: Side, follow_last: bool) -> tuple[list[str], str]:
    """The parent directory (components below the root, symlinks resolved inside it) and the last name
    of ``side.path``; the name is "" for the root itself. ``follow_last`` resolves the last name too."""
    path = side.path.rstrip("/") or "/"
    head, name = os.path.split(path)
    if follow_last or name in ("", ".", ".."):
        resolved = resolve_in_root(side.root, path).relative_to(side.root)
        parts = list(resolved.parts)
        return (parts[:-1], parts[-1]) if parts else ([], "")
    parent = resolve_in_root(side.root, head).relative_to(side.root)
    return list(parent.parts), name


def _open_dir(root_fd: int, parts: list[str], side: Side) -> int:
    """Open directory ``parts`` below ``root_fd`` one component at a time, no symlink followed."""
    fd = os.dup(root_fd)
    for part in parts:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            raise _path_error(side, exc) from None
        os.close(fd)
        fd = child
    return fd


def _path_error(side: Side, exc: OSError) -> CopyError:
    import errno

    why = {errno.ENOENT: "no such file or directory", errno.ENOTDIR: "not a directory",
           errno.ELOOP: "a symlink appeared in the path while it was being copied",
           errno.EISDIR: "is a directory"}.get(exc.errno or 0, exc.strerror or str(exc))
    return CopyError(f"{side.label}: {side.path}: {why}")


@contextlib.contextmanager
def _opened(side: Side, follow_last: bool) -> Iterator[tuple[int, str]]:
    """(descriptor of the parent directory, last name) of ``side.path``; the name "" is the root."""
    root_fd = os.open(side.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts, name = _split(side, follow_last)
        parent = _open_dir(root_fd, parts, side)
    finally:
        os.close(root_fd)
    try:
        yield parent, name
    finally:
        os.close(parent)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name or ".", dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


# -- reading a tree -----------------------------------------------------------------------------------


def _read(dir_fd: int, name: str, parts: list[str], skip: frozenset[int] = frozenset()) -> Iterator[Entry]:
    """The tree at ``name`` in ``dir_fd`` ("" is ``dir_fd`` itself), parents before children; a directory
    on a device of ``skip`` (a kernel filesystem) as an empty one."""
    st = os.stat(name or ".", dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        yield Entry(parts, "symlink", 0o777, st.st_mtime, link=os.readlink(name, dir_fd=dir_fd))
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):  # still the file we looked at
                yield Entry(parts, "file", stat.S_IMODE(st.st_mode), st.st_mtime, fd=fd)
        finally:
            os.close(fd)
    elif stat.S_ISDIR(st.st_mode):
        sub = os.open(name or ".", _DIR_FLAGS, dir_fd=dir_fd)
        try:
            yield Entry(parts, "dir", stat.S_IMODE(st.st_mode), st.st_mtime)
            if st.st_dev in skip:
                return
            for child in sorted(os.listdir(sub)):
                yield from _read(sub, child, [*parts, child], skip)
        finally:
            os.close(sub)
    else:
        _log.warning("skipping %s: not a file, directory or symlink", "/".join(parts) or name)


def _read_tar(stream: IO[bytes]) -> Iterator[Entry]:
    """The members of a tar stream as entries; names with .. or absolute are refused."""
    import tempfile

    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if ".." in parts:
                    raise CopyError(f"tar member {member.name!r}: a path with .. is refused")
                mode = member.mode & 0o7777
                if member.isdir():
                    yield Entry(parts, "dir", mode, member.mtime)
                elif member.issym():
                    yield Entry(parts, "symlink", 0o777, member.mtime, link=member.linkname)
                elif member.islnk():
                    yield Entry(parts, "hardlink", mode, member.mtime, link=member.linkname)
                elif member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    with tempfile.TemporaryFile() as tmp:  # a streamed member must be read in order
                        while chunk := src.read(1 << 20):
                            tmp.write(chunk)
                        tmp.flush()
                        yield Entry(parts, "file", mode, member.mtime, fd=tmp.fileno())
                else:
                    _log.warning("skipping tar member %s: not a file, directory or link", member.name)
    except tarfile.TarError as exc:
        raise CopyError(f"the tar on stdin cannot be read: {exc}") from None


# -- writing a tree -----------------------------------------------------------------------------------


class _Writer:
    """Creates entries below a base directory descriptor; every step is an ``*at`` call that neither
    follows nor writes through a symlink (an existing one in the way is replaced)."""

    def __init__(self, base_fd: int, owner: tuple[int, int] | None, host: bool) -> None:
        self.base_fd = base_fd
        self.owner = owner
        self.mode_mask = 0o1777 if host else 0o7777  # no setuid/setgid file lands on the host
        self.dirs: dict[tuple[str, ...], int] = {}
        self.fixups: list[tuple[tuple[str, ...], int, float]] = []

    def close(self) -> None:
        for parts, mode, mtime in reversed(self.fixups):  # after their contents were written
            with contextlib.suppress(OSError):
                fd = self._dir(list(parts))
                os.chmod(fd, mode & self.mode_mask)
                os.utime(fd, (mtime, mtime))
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    def _dir(self, parts: list[str]) -> int:
        """The descriptor of directory ``parts`` below the base, made if missing."""
        if not parts:
            return self.base_fd
        key = tuple(parts)
        if key not in self.dirs:
            parent = self._dir(parts[:-1])
            self._make_dir(parent, parts[-1], 0o755)
            self.dirs[key] = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        return self.dirs[key]

    def _make_dir(self, parent: int, name: str, mode: int) -> None:
        st = _lstat(parent, name)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            st = None
        if st is None:
            os.mkdir(name, mode & 0o777, dir_fd=parent)
            self._chown(parent, name)

    def _clear(self, parent: int, name: str) -> None:
        """Make room for a file or link: an existing non-directory goes; a directory is an error."""
        st = _lstat(parent, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            raise CopyError(f"cannot overwrite directory {name!r} with a non-directory")
        os.unlink(name, dir_fd=parent)

    def _chown(self, parent: int, name: str) -> None:
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=parent, follow_symlinks=False)

    def write(self, parts: list[str], entry: Entry) -> None:
        parent, name = self._dir(parts[:-1]), parts[-1]
        if entry.kind == "dir":
            self._make_dir(parent, name, entry.mode)
            self.fixups.append((tuple(parts), entry.mode, entry.mtime))
        elif entry.kind == "symlink":
            self._clear(parent, name)
            os.symlink(entry.link, name, dir_fd=parent)
            self._chown(parent, name)
        elif entry.kind == "hardlink":
            target = [p for p in entry.link.split("/") if p not in ("", ".")]
            if ".." in target or not target:
                raise CopyError(f"hard link {'/'.join(parts)} -> {entry.link}: a path with .. is refused")
            self._clear(parent, name)
            os.link(target[-1], name, src_dir_fd=self._dir(target[:-1]), dst_dir_fd=parent,
                    follow_symlinks=False)
        else:
            self._clear(parent, name)
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=parent)
            try:
                os.lseek(entry.fd, 0, os.SEEK_SET)
                while chunk := os.read(entry.fd, 1 << 20):
                    os.write(out, chunk)
                if self.owner is not None:
                    os.fchown(out, *self.owner)
                os.fchmod(out, entry.mode & self.mode_mask)
                os.utime(out, (entry.mtime, entry.mtime))
            finally:
                os.close(out)


# -- the four kinds of copy ---------------------------------------------------------------------------


def copy(src: Side, dest: Side) -> None:
    """Copy ``src`` to ``dest`` by docker's rules (see the module's doc)."""
    contents_only = src.path.endswith("/.")
    with _opened(src, follow_last=contents_only) as (src_dir, src_name):
        st = _lstat(src_dir, src_name)
        if st is None:
            raise CopyError(f"{src.label}: {src.path}: no such file or directory")
        src_is_dir = stat.S_ISDIR(st.st_mode)
        if contents_only and not src_is_dir:
            raise CopyError(f"{src.label}: {src.path}: not a directory")
        with _opened(dest, follow_last=True) as (dest_dir, dest_name):
            target = _lstat(dest_dir, dest_name)
            if target is not None and stat.S_ISDIR(target.st_mode):
                if src_is_dir and contents_only:  # SRC/. into DEST: the contents
                    base, top = _open_dir(dest_dir, [dest_name] if dest_name else [], dest), []
                else:  # into DEST, under SRC's name
                    base = _open_dir(dest_dir, [dest_name] if dest_name else [], dest)
                    top = [src_name or os.path.basename(src.path.rstrip("/")) or "root"]
            elif target is None:
                if dest.path.endswith("/") and not src_is_dir:
                    raise CopyError(f"{dest.label}: {dest.path}: no such directory")
                base, top = os.dup(dest_dir), [dest_name]
            elif src_is_dir:
                raise CopyError(f"{dest.label}: {dest.path}: cannot copy a directory onto a file")
            else:
                base, top = os.dup(dest_dir), [dest_name]
            writer = _Writer(base, dest.owner, host=dest.root == Path("/"))
            try:
                for entry in _read(src_dir, src_name, [], src.kernel_devs):
                    if not entry.parts and not top and entry.kind == "dir":
                        continue  # the existing directory the contents go into
                    writer.write([*top, *entry.parts], entry)
            finally:
                writer.close()
                os.close(base)
    _log.info("copied %s:%s to %s:%s", src.label, src.path, dest.label, dest.path)


def to_tar(src: Side, out: IO[bytes]) -> None:
    """Write ``src`` as a tar stream to ``out`` (``pish cp CTR:PATH -``), its top named as SRC's last name."""
    with _opened(src, follow_last=src.path.endswith("/.")) as (src_dir, src_name):
        if _lstat(src_dir, src_name) is None:
            raise CopyError(f"{src.label}: {src.path}: no such file or directory")
        top = src_name or "."
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for entry in _read(src_dir, src_name, [], src.kernel_devs):
                info = tarfile.TarInfo("/".join([top, *entry.parts]))
                info.mode, info.mtime = entry.mode, int(entry.mtime)
                if entry.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif entry.kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, entry.link
                    tar.addfile(info)
                else:
                    info.size = os.fstat(entry.fd).st_size
                    with os.fdopen(os.dup(entry.fd), "rb") as f:
                        tar.addfile(info, f)


def from_tar(stream: IO[bytes], dest: Side) -> None:
    """Extract a tar stream into the existing directory ``dest`` (``pish cp - CTR:PATH``)."""
    with _opened(dest, follow_last=True) as (dest_dir, dest_name):
        target = _lstat(dest_dir, dest_name)
        if target is None or not stat.S_ISDIR(target.st_mode):
            raise CopyError(f"{dest.label}: {dest.path}: a tar is extracted into a directory, and this is none")
        base = _open_dir(dest_dir, [dest_name] if dest_name else [], dest)
        writer = _Writer(base, dest.owner, host=dest.root == Path("/"))
        try:
            for entry in _read_tar(stream):
                if entry.parts:
                    writer.write(entry.parts, entry)
        finally:
            writer.close()
            os.close(base)
    _log.info("extracted a tar into %s:%s", dest.label, dest.path)
