"""Flattening: the image's layers applied in order into one plain directory (the ``copy`` storage driver).

Each layer of the store is applied on top of what the layers below it left, as overlayfs would show it:
an overlayfs whiteout (character device 0/0) deletes what is below; a directory marked opaque first
loses what is below; an entry replaces what is below unless both are directories, which merge. Owners,
modes, times and hard links within a layer are kept. The destination is made here, so nothing in it
comes from elsewhere: every path written is below directories this code made (a symlink from a lower
layer is replaced, never followed).
"""
from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from pish_core.image import whiteout


def flatten(layers: Sequence[Path], dest: Path) -> None:
    """Apply ``layers`` (bottom first) into ``dest``, which must not exist yet."""
    dest.mkdir(parents=True)
    for layer in layers:
        apply_layer(layer, dest)


def apply_layer(layer: Path, dest: Path) -> None:
    links: dict[tuple[int, int], Path] = {}
    _apply_dir(layer, dest, links)
    _copy_attrs(os.lstat(layer), dest)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _apply_dir(src: Path, dst: Path, links: dict[tuple[int, int], Path]) -> None:
    if whiteout.is_opaque(src):
        for name in os.listdir(dst):
            _remove(dst / name)
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        s, d = Path(entry.path), dst / entry.name
        st = entry.stat(follow_symlinks=False)
        if whiteout.is_whiteout(st):
            _remove(d)
        elif stat.S_ISDIR(st.st_mode):
            if os.path.lexists(d) and (d.is_symlink() or not d.is_dir()):
                os.unlink(d)
            if not os.path.lexists(d):
                os.mkdir(d, 0o700)
            _apply_dir(s, d, links)
            _copy_attrs(st, d)
        else:
            _remove(d)
            _copy_entry(s, d, st, links)


def _copy_entry(src: Path, dst: Path, st: os.stat_result, links: dict[tuple[int, int], Path]) -> None:
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in links:
        os.link(links[key], dst)
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
    else:  # a fifo or device node of a directory image used as is (archives with them are refused)
        os.mknod(dst, st.st_mode, st.st_rdev)
    _copy_attrs(st, dst)
    if st.st_nlink > 1:
        links[key] = dst


def _copy_attrs(st: os.stat_result, dst: Path) -> None:
    os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid bits
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
