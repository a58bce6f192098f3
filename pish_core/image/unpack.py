"""Unpack a rootfs tar without trusting it.

A rootfs legitimately holds absolute symlinks (``/bin/sh -> /bin/busybox``): they are fine once the
container's root is ``/``. What is not fine is anything that makes the *unpacking* touch the host:
a member named ``../x`` or ``/etc/x``, a member written *through* a symlink the archive planted earlier,
a hard link to a file outside the tree, or a device node. Each is refused, naming the member, with one
exception: device nodes under ``/dev`` (``/dev/null``, ``/dev/console``..., which every ``mmdebstrap`` or
debootstrap tarball holds) are skipped with one warning, as the container gets its own ``/dev`` (rootless
podman does the same). Fifos are kept: making one touches nothing but the tree.

An image layer is unpacked the same way, from a stream (``unpack_stream``), with its OCI whiteouts turned
into overlayfs ones as it goes (see ``whiteout.py``): the layer directory is then an overlayfs lower layer
as it stands.
"""
from __future__ import annotations

import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pish_core import log
from pish_core.errors import ImageError
from pish_core.image import whiteout

_log = log.get("image")

#: pish checks every member itself (``_check``) and needs none of tarfile's own extraction filters (PEP 706,
#: Python 3.11.4+; the default from 3.14), which would refuse what a rootfs rightly holds, such as absolute
#: symlinks. Where they exist we ask for "fully_trusted", which is what 3.11.0-3.11.3 do with no argument.
_NO_TARFILE_FILTER: dict[str, str] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}

@dataclass
class UnpackStats:
    entries: int = 0
    file_bytes: int = 0  # the sizes of the regular files written
    whiteouts: int = 0
    skipped_devices: int = 0  # device nodes under /dev, not made
    data_end: int = 0  # where the data of the last member ends in the tar stream


def _inside(name: str, member: str) -> str:
    """``name`` relative to the tree, or raise if it would leave it."""
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm == ".." or norm.startswith("../"):
        raise ImageError(f"refusing tar member {member!r}: path {name!r} leaves the image")
    return norm


def _no_symlink_on_the_way(dest: Path, rel: str, member: str) -> None:
    """Refuse a path whose parent directories include a symlink: writing there would follow it out."""
    cur = dest
    for part in Path(rel).parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise ImageError(f"refusing tar member {member!r}: it would be written through the symlink {part!r}")


def _check(member: tarfile.TarInfo, dest: Path) -> str:
    rel = _inside(member.name, member.name)
    if rel == ".":
        return rel
    _no_symlink_on_the_way(dest, rel, member.name)
    if (member.ischr() or member.isblk()) and not rel.startswith("dev/"):
        raise ImageError(f"refusing tar member {member.name!r}: device nodes are not allowed in images "
                         f"(outside /dev, where they are skipped)")
    if member.islnk():
        link = _inside(member.linkname, member.name)
        _no_symlink_on_the_way(dest, link + "/x", member.name)
        if not os.path.isfile(dest / link) or os.path.islink(dest / link):
            raise ImageError(f"refusing tar member {member.name!r}: it links to {member.linkname!r}, "
                             f"which is no file the archive wrote before it")
        member.linkname = link
    elif not (member.isreg() or member.isdir() or member.issym() or member.isdev()):
        raise ImageError(f"refusing tar member {member.name!r}: unsupported member type")
    # tarfile extracts by the raw name, which the kernel resolves component by component: `sym/../x`
    # would go through the symlink `sym` that the checks above, on the normalised `x`, never saw.
    member.name = rel
    return rel


def describe(exc: BaseException) -> str:
    """A tar error in one line: tarfile's ReadError for a file that is no archive lists every
    compression it tried, one per line."""
    if isinstance(exc, tarfile.ReadError):
        return "not a tar archive (plain, gzip, bzip2 or xz)"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def unpack_tar(archive: Path, dest: Path, *, whiteouts: bool = False) -> UnpackStats:
    """Extract ``archive`` into the existing directory ``dest``, keeping numeric owners and modes."""
    try:
        with tarfile.open(archive) as tar:
            return _unpack(tar, dest, whiteouts)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageError(f"cannot unpack image {archive}: {describe(exc)}") from None


def unpack_stream(stream: IO[bytes], dest: Path, *, what: str, whiteouts: bool = True) -> UnpackStats:
    """Extract the tar read from ``stream`` (uncompressed, read once, front to back) into ``dest``."""
    padded = _EndPadded(stream)
    try:
        with tarfile.open(fileobj=padded, mode="r|") as tar:  # type: ignore[call-overload]
            stats = _unpack(tar, dest, whiteouts)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageError(f"cannot unpack {what}: {describe(exc)}") from None
    if padded.real < stats.data_end:
        raise ImageError(f"cannot unpack {what}: it is truncated (the data of its last member is cut short)")
    return stats


class _EndPadded:
    """A tar stream that may stop right after its last member's data, without the padding and the two
    end-of-archive blocks: Go's archive/tar reads those as complete, and umoci's ``insert`` writes them.
    Zeros stand in for what is missing; the caller checks that no member's data was cut."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.real = 0
        self.padding: bytes | None = None

    def read(self, n: int = -1) -> bytes:
        if self.padding is None:
            data = self.raw.read(n)
            if data or n == 0:
                self.real += len(data)
                return data
            self.padding = b"\0" * ((-self.real) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)
        if n < 0:
            n = len(self.padding)
        data, self.padding = self.padding[:n], self.padding[n:]
        return data


def _unpack(tar: tarfile.TarFile, dest: Path, whiteouts: bool) -> UnpackStats:
    stats = UnpackStats()
    made: set[str] = set()  # directories made as parents of a whiteout: their own member may follow
    dirs: list[tuple[Path, float]] = []
    for member in tar:
        rel = _check(member, dest)
        stats.entries += 1
        stats.data_end = member.offset_data + (member.size if member.isreg() else 0)
        if whiteouts and _whiteout(member, rel, dest, made):
            stats.whiteouts += 1
            continue
        if member.ischr() or member.isblk():  # under dev/ (_check refused the others)
            stats.skipped_devices += 1
            continue
        target = dest / rel
        if rel == "." or (member.isdir() and target.is_dir() and not target.is_symlink()):
            if rel in made:
                os.lchown(target, member.uid, member.gid)
                os.chmod(target, member.mode & 0o7777)
            continue
        if os.path.lexists(target):
            if target.is_dir() and not target.is_symlink():
                raise ImageError(f"refusing tar member {member.name!r}: it would replace a directory")
            # A later member replaces an earlier one (a directory replacing a symlink too): never
            # write, chmod or chown through what the archive planted before.
            os.unlink(target)
        tar.extract(member, dest, set_attrs=True, numeric_owner=True, **_NO_TARFILE_FILTER)  # type: ignore[arg-type]
        if member.isreg():
            stats.file_bytes += member.size
        elif member.issym():  # tarfile leaves a symlink's own time at "now": layers made again would differ
            os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
        elif member.isdir():
            dirs.append((target, member.mtime))
    for target, mtime in reversed(dirs):  # what was written into a directory changed its mtime: restore it
        os.utime(target, (mtime, mtime), follow_symlinks=False)
    if stats.skipped_devices:
        _log.warning("skipped %d device node(s) under /dev: the container gets its own /dev", stats.skipped_devices)
    return stats


def _whiteout(member: tarfile.TarInfo, rel: str, dest: Path, made: set[str]) -> bool:
    """Turn an OCI whiteout member into an overlayfs one; False if ``member`` is no whiteout."""
    parts = rel.split("/")
    if any(whiteout.is_marker(p) for p in parts[:-1]):
        raise ImageError(f"refusing tar member {member.name!r}: a whiteout cannot have entries below it")
    if not whiteout.is_marker(parts[-1]):
        return False
    parent = _parent_dirs(dest, parts[:-1], member.name, made)
    name = whiteout.deleted_name(parts[-1])
    if name is None:
        whiteout.make_opaque(parent)
        return True
    if name in ("", ".", ".."):
        raise ImageError(f"refusing tar member {member.name!r}: it whites out no valid name")
    target = parent / name
    if not os.path.lexists(target):  # an entry this layer ships itself wins over its whiteout
        whiteout.make_whiteout(target)
    return True


def _parent_dirs(dest: Path, parts: list[str], member: str, made: set[str]) -> Path:
    """Make the missing directories ``parts`` below ``dest`` (0755, root), never through a symlink."""
    cur = dest
    for i, part in enumerate(parts):
        cur = cur / part
        if cur.is_symlink() or (os.path.lexists(cur) and not cur.is_dir()):
            raise ImageError(f"refusing tar member {member!r}: {'/'.join(parts[:i + 1])!r} is not a directory")
        if not cur.exists():
            cur.mkdir(mode=0o755)
            os.chmod(cur, 0o755)
            made.add("/".join(parts[:i + 1]))
    return cur
