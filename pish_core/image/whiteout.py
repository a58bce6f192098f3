"""Whiteouts: how a layer says "this file of a lower layer is gone".

An OCI layer marks a deletion with an empty file named ``.wh.<name>`` beside the deleted entry, and an
*opaque* directory (lower layers' contents hidden, only this layer's shown) with ``<dir>/.wh..wh..opq``.
The store keeps each layer apart, as an overlayfs lower layer, so those markers are converted into what
overlayfs itself understands, in the unpacked layer directory:

- ``.wh.<name>`` -> ``<name>`` as a character device 0/0 (overlayfs's whiteout);
- ``<dir>/.wh..wh..opq`` -> the ``trusted.overlay.opaque=y`` extended attribute on ``<dir>``.

Both act on lower layers only: an entry the same layer also ships wins over its own whiteout, as the
image spec says. The device nodes here are made by pish, never taken from an archive (archives with
device nodes are refused); the reading side below recognises them when the layers are flattened
(storage ``copy``) or searched (``/etc/passwd`` for ``--user``).
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"


def is_marker(name: str) -> bool:
    """True for a tar member's base name that is a whiteout marker (deletion or opaque)."""
    return name.startswith(PREFIX)


def deleted_name(marker: str) -> str | None:
    """``.wh.foo`` -> ``foo``; None for the opaque marker."""
    if marker == OPAQUE:
        return None
    return marker[len(PREFIX):]


# -- writing (unpacking a layer for overlayfs) ---------------------------------------------------------


def make_whiteout(path: Path) -> None:
    """An overlayfs whiteout at ``path``: a character device 0/0, mode 0, owned by root."""
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.lchown(path, 0, 0)


def make_opaque(directory: Path) -> None:
    os.setxattr(directory, OPAQUE_XATTR, b"y", follow_symlinks=False)


# -- reading (flattening, looking a file up through the layers) ---------------------------------------


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(directory: Path) -> bool:
    try:
        return os.getxattr(directory, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            return False
        raise


def lookup(layers: Sequence[Path], rel: str) -> Path | None:
    """The file ``rel`` (e.g. ``etc/passwd``) as the merged image shows it, or None if it has none.

    ``layers`` are unpacked layer directories, bottom first. The search goes top down and stops at a
    whiteout of the file or of a parent, or at an opaque parent; parents must be real directories (a
    symlinked ``/etc`` is not followed: nothing here may lead outside the layers).
    """
    parts = [p for p in rel.split("/") if p and p != "."]
    if not parts or ".." in parts:
        return None
    for layer in reversed(layers):
        cur = layer
        hidden_below = False
        for i, part in enumerate(parts):
            cur = cur / part
            try:
                st = os.lstat(cur)
            except (FileNotFoundError, NotADirectoryError):
                break  # not in this layer: look below, unless a parent was opaque
            if is_whiteout(st):
                return None
            last = i == len(parts) - 1
            if last:
                return cur if stat.S_ISREG(st.st_mode) else None
            if not stat.S_ISDIR(st.st_mode):
                return None  # a file or symlink where a parent directory should be hides the layers below
            if is_opaque(cur):
                hidden_below = True
        if hidden_below:
            return None
    return None


def read_text(layers: Sequence[Path], rel: str, limit: int = 1 << 20) -> str | None:
    """The text of ``rel`` in the merged image (see ``lookup``), read without following a final symlink."""
    path = lookup(layers, rel)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")
