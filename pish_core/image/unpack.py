"""Unpack a rootfs tar without trusting it.

A rootfs legitimately holds absolute symlinks (``/bin/sh -> /bin/busybox``): they are fine once the
container's root is ``/``. What is not fine is anything that makes the *unpacking* touch the host:
a member named ``../x`` or ``/etc/x``, a member written *through* a symlink the archive planted earlier,
a hard link to a file outside the tree, or a device node. Each is refused, naming the member.
"""
from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path

from pish_core.errors import ImageError


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
    if member.ischr() or member.isblk() or member.isfifo():
        raise ImageError(f"refusing tar member {member.name!r}: device nodes and fifos are not allowed in images")
    if member.islnk():
        _no_symlink_on_the_way(dest, _inside(member.linkname, member.name) + "/x", member.name)
    elif not (member.isreg() or member.isdir() or member.issym()):
        raise ImageError(f"refusing tar member {member.name!r}: unsupported member type")
    return rel


def unpack_tar(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into the existing directory ``dest``, keeping numeric owners and modes."""
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                rel = _check(member, dest)
                target = dest / rel
                if rel == "." or (member.isdir() and target.is_dir() and not target.is_symlink()):
                    continue
                if os.path.lexists(target):
                    if target.is_dir() and not target.is_symlink():
                        raise ImageError(f"refusing tar member {member.name!r}: it would replace a directory")
                    # A later member replaces an earlier one (a directory replacing a symlink too): never
                    # write, chmod or chown through what the archive planted before.
                    os.unlink(target)
                tar.extract(member, dest, set_attrs=True, numeric_owner=True, filter="fully_trusted")
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"cannot unpack image {archive}: {exc}") from None
