"""Layers out of the store: a directory of files back into a tar stream.

The store keeps layers unpacked (``whiteout.py``), and a container's changes are an overlayfs upper
directory, so what leaves pish (``export``, ``commit``, ``image save``, ``push``) is written here from
directories, in two shapes:

- ``write_layer(root, out)``: one layer directory (a stored layer, or a container's upper directory) as
  an OCI layer: overlayfs whiteouts (character devices 0/0) become ``.wh.NAME`` files and directories
  marked opaque get a ``.wh..wh..opq`` entry; gzip'd, with the compressed digest and the ``diff_id``
  (the digest of the uncompressed tar) taken while the bytes are written.
- ``write_merged(sources, out)``: several layers, top first, as one flat tar of what overlayfs would
  show (``pish export``): whiteouts and opaque directories applied, no markers.

The tar is deterministic: entries sorted by name (bytes), the opaque marker first in its directory,
numeric owners only (no user names), whole-second mtimes, markers with fixed metadata, gzip without a
name or time; so the same directory always gives the same digests, and a layer pish wrote, unpacked into
the store and written again, comes out byte for byte the same. Owners, modes, mtimes, extended
attributes (overlayfs's own ``trusted.overlay.*`` excepted), symlinks, fifos, device nodes and hard
links within the tar are kept.

Nothing here follows a symlink: directories are opened one component at a time with ``O_NOFOLLOW``
relative to their parent's descriptor, and files are read through descriptors opened the same way, so a
running container that swaps a directory for a symlink cannot make pish read the host's files. A file
that shrinks or grows while it is read is cut or padded to the size it had when it was listed.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pish_core.errors import ImageError
from pish_core.image import whiteout

#: host (uid, gid) -> the owner the tar records; a container's upper layer under --userns holds host ids
IdMap = Callable[[int, int], tuple[int, int]]
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
GZIP_LEVEL = 6


@dataclass(frozen=True)
class LayerDigests:
    """What a written layer is: ``digest`` and ``size`` of the blob as written (gzip'd), ``diff_id``
    (hex sha256 of the uncompressed tar) and ``tar_size``."""

    digest: str
    size: int
    diff_id: str
    tar_size: int


class HashingWriter:
    """A write-only stream that hashes and counts what passes through it to ``raw`` (None: nowhere)."""

    def __init__(self, raw: IO[bytes] | None) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self.raw is not None:
            self.raw.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if self.raw is not None:
            self.raw.flush()

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


# -- reading a directory tree without following symlinks --------------------------------------------


@dataclass
class _Node:
    """One entry to write: where it is (its directory's descriptor and name) and what it was."""

    dir_fd: int
    name: str
    st: os.stat_result
    idmap: IdMap | None


def _open_dir(name: str | Path, dir_fd: int | None = None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise ImageError(f"cannot read directory {name}: {exc.strerror}") from None


def _listing(fd: int) -> list[str]:
    return os.listdir(fd)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None  # gone meanwhile (a running container deleted it)


def _opaque_fd(fd: int) -> bool:
    try:
        return os.getxattr(fd, whiteout.OPAQUE_XATTR) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return False
        raise


def _sort_key(name: str) -> bytes:
    return os.fsencode(name)


def _xattrs(node: _Node) -> dict[str, bytes]:
    """The node's extended attributes (overlayfs's own left out), read without following a symlink."""
    path = f"/proc/self/fd/{node.dir_fd}/{node.name}"
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOENT, errno.EPERM):
            return {}
        raise
    out = {}
    for key in sorted(names):
        if key.startswith(_OVERLAY_XATTRS):
            continue
        with contextlib.suppress(FileNotFoundError, OSError):
            out[key] = os.getxattr(path, key, follow_symlinks=False)
    return out


# -- writing tar members -----------------------------------------------------------------------------


class _Exact:
    """``size`` bytes of ``fd``: cut if the file grew since it was listed, zeros if it shrank."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.left = fd, size

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes]
        n = self.left if n < 0 else min(n, self.left)
        parts, want = [], n
        while want > 0:  # tarfile wants every read whole: a short one is "unexpected end of data"
            data = os.read(self.fd, want)
            if not data:
                parts.append(b"\0" * want)
                break
            parts.append(data)
            want -= len(data)
        self.left -= n
        return b"".join(parts)


def _needs_binary(*texts: str) -> bool:
    try:
        for t in texts:
            t.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _Writer:
    """Tar members from nodes: hard links within this tar, owners through each node's id map."""

    def __init__(self, out: IO[bytes]) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.links: dict[tuple[int, int], str] = {}

    def close(self) -> None:
        self.tar.close()

    def marker(self, name: str) -> None:
        """An OCI whiteout marker: an empty file, root's, mode 0, time 0 (fixed: the tar stays the same)."""
        info = tarfile.TarInfo(name)
        info.mode, info.uid, info.gid, info.mtime, info.uname, info.gname = 0, 0, 0, 0, "", ""
        self.tar.addfile(info)

    def node(self, name: str, node: _Node) -> None:
        st = node.st
        info = tarfile.TarInfo(name)
        uid, gid = node.idmap(st.st_uid, st.st_gid) if node.idmap else (st.st_uid, st.st_gid)
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        texts = [name]
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in self.links:
            info.type, info.linkname = tarfile.LNKTYPE, self.links[key]
            texts.append(info.linkname)
            self._add(info, texts, {})
            return
        xattrs = _xattrs(node)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(node.name, dir_fd=node.dir_fd)
            texts.append(info.linkname)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISREG(st.st_mode):
            if self._file(info, node, texts, xattrs) and st.st_nlink > 1:  # only a name in the tar
                self.links[key] = name
            return
        else:
            return  # a socket: nothing a tar can hold (docker and podman leave them out too)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self.links[key] = name
        self._add(info, texts, xattrs)

    def _file(self, info: tarfile.TarInfo, node: _Node, texts: list[str], xattrs: dict[str, bytes]) -> bool:
        """Add a regular file; False if it is left out (gone or replaced meanwhile)."""
        try:
            fd = os.open(node.name, _FILE_FLAGS, dir_fd=node.dir_fd)
        except FileNotFoundError:
            return False  # deleted meanwhile by a running container
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink meanwhile: not followed, left out
                return False
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False  # replaced by something else meanwhile
            info.type, info.size = tarfile.REGTYPE, node.st.st_size
            self._add(info, texts, xattrs, _Exact(fd, node.st.st_size))
            return True
        finally:
            os.close(fd)

    def _add(self, info: tarfile.TarInfo, texts: list[str], xattrs: dict[str, bytes],
             data: _Exact | None = None) -> None:
        values = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
        if values or _needs_binary(*texts):
            if _needs_binary(*texts, *values.values()):
                values["hdrcharset"] = "BINARY"
            info.pax_headers = values
        self.tar.addfile(info, data)


# -- one layer ---------------------------------------------------------------------------------------


def _layer_dir(w: _Writer, fd: int, prefix: str, idmap: IdMap | None) -> None:
    entries: list[tuple[str, str, os.stat_result]] = []
    for name in _listing(fd):
        st = _lstat(name, fd)
        if st is None:
            continue
        out = whiteout.PREFIX + name if whiteout.is_whiteout(st) else name
        entries.append((out, name, st))
    for out, name, st in sorted(entries, key=lambda e: _sort_key(e[0])):
        if whiteout.is_whiteout(st):
            w.marker(prefix + out)
            continue
        w.node(prefix + name, _Node(fd, name, st, idmap))
        if stat.S_ISDIR(st.st_mode):
            sub = _open_subdir(fd, name)
            if sub is None:
                continue
            try:
                if _opaque_fd(sub):
                    w.marker(f"{prefix}{name}/{whiteout.OPAQUE}")
                _layer_dir(w, sub, f"{prefix}{name}/", idmap)
            finally:
                os.close(sub)


def _open_subdir(fd: int, name: str) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None  # gone, or swapped for a symlink meanwhile: not followed
        raise


def write_layer_tar(root: Path, out: IO[bytes], idmap: IdMap | None = None) -> None:
    """The uncompressed OCI layer tar of the layer directory ``root`` into ``out``."""
    fd = _open_dir(root)
    w = _Writer(out)
    try:
        _layer_dir(w, fd, "", idmap)
    finally:
        os.close(fd)
    w.close()


def write_layer(root: Path, out: IO[bytes] | None, idmap: IdMap | None = None) -> LayerDigests:
    """The gzip'd OCI layer of ``root`` into ``out`` (None: only the digests), digests taken on the way."""
    blob = HashingWriter(out)
    with gzip.GzipFile(fileobj=blob, mode="wb", mtime=0, filename="", compresslevel=GZIP_LEVEL) as gz:
        tar = HashingWriter(gz)  # type: ignore[arg-type]
        write_layer_tar(root, tar, idmap)  # type: ignore[arg-type]
    blob.flush()
    return LayerDigests(blob.hexdigest(), blob.size, tar.hexdigest(), tar.size)


# -- the merged view ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One layer of a merged view: its directory and how its owners map (None: as they are)."""

    path: Path
    idmap: IdMap | None = None


def _merged_dir(w: _Writer, fds: Sequence[tuple[int, IdMap | None]], prefix: str) -> None:
    """The directory made of ``fds`` (top first, already cut below the first opaque one)."""
    names: set[str] = set()
    for fd, _ in fds:
        names.update(_listing(fd))
    for name in sorted(names, key=_sort_key):
        top: tuple[int, os.stat_result] | None = None
        for i, (fd, _) in enumerate(fds):
            st = _lstat(name, fd)
            if st is not None:
                top = (i, st)
                break
        if top is None:
            continue
        i, st = top
        if whiteout.is_whiteout(st):
            continue
        fd, idmap = fds[i]
        w.node(prefix + name, _Node(fd, name, st, idmap))
        if stat.S_ISDIR(st.st_mode):
            with _subdirs(fds[i:], name) as below:
                _merged_dir(w, below, f"{prefix}{name}/")


@contextlib.contextmanager
def _subdirs(fds: Sequence[tuple[int, IdMap | None]], name: str) -> Iterator[list[tuple[int, IdMap | None]]]:
    """The directories ``name`` of each layer, top first, down to the first that hides what is below it."""
    opened: list[tuple[int, IdMap | None]] = []
    try:
        for fd, idmap in fds:
            st = _lstat(name, fd)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a whiteout or a file: the layers below are hidden here
            sub = _open_subdir(fd, name)
            if sub is None:
                break
            opened.append((sub, idmap))
            if _opaque_fd(sub):
                break
        yield opened
    finally:
        for sub, _ in opened:
            os.close(sub)


def write_merged(sources: Sequence[Source], out: IO[bytes]) -> int:
    """The flat tar of ``sources`` (layer directories, top first) merged as overlayfs shows them, with
    the root directory as ``./``; returns the bytes written."""
    counted = HashingWriter(out)
    fds: list[tuple[int, IdMap | None]] = []
    try:
        for src in sources:
            fds.append((_open_dir(src.path), src.idmap))
            if _opaque_fd(fds[-1][0]):
                break
        w = _Writer(counted)  # type: ignore[arg-type]
        top = fds[0]
        w.node(".", _Node(top[0], ".", os.fstat(top[0]), top[1]))
        _merged_dir(w, fds, "")
        w.close()
    finally:
        for fd, _ in fds:
            os.close(fd)
    return counted.size
