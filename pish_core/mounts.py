"""Mounting into a container's root before it pivots: volumes (-v), tmpfs, files other drivers provide;
and ``detach``, the idempotent unmount every driver's release needs.

The destination is a path *inside* the container, so it must be resolved the way the container will see
it: an absolute symlink in the image (``/data -> /etc``) means the container's /etc, never the host's.
``resolve_in_root`` walks the path one component at a time and keeps every step inside the root, as
runc's filepath-securejoin does.
"""
from __future__ import annotations

import errno
import logging
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from pish_core import native
from pish_core.spec import Mount

_MAX_LINKS = 40  # like the kernel's ELOOP limit

_FLAGS = {"ro": native.MS_RDONLY, "nosuid": native.MS_NOSUID, "nodev": native.MS_NODEV,
          "noexec": native.MS_NOEXEC, "rbind": native.MS_BIND | native.MS_REC, "bind": native.MS_BIND}


def detach(path: Path, log: logging.Logger) -> None:
    """Lazily unmount ``path``. Not mounted, or already gone, counts as done: releases must be idempotent."""
    try:
        native.umount2(str(path), native.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise
        return
    log.info("unmounted %s", path)


def resolve_in_root(root: Path, path: str) -> Path:
    """The host path of container path ``path``, following symlinks as if ``root`` were ``/``."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_LINKS:
                raise OSError(40, "too many levels of symbolic links", path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _make_target(target: Path, like_dir: bool) -> None:
    if target.exists():
        return
    if like_dir:
        target.mkdir(parents=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()


def apply(root: Path, mounts: Iterable[Mount]) -> None:
    """Mount each of ``mounts`` at its destination inside ``root`` (before pivot_root)."""
    for m in mounts:
        target = resolve_in_root(root, posixpath.normpath(m.destination))
        flags = 0
        data = []
        for opt in m.options:
            if opt in _FLAGS:
                flags |= _FLAGS[opt]
            elif opt not in ("rw",):
                data.append(opt)
        if m.type == "bind":
            _make_target(target, os.path.isdir(m.source))
            bind = flags & (native.MS_BIND | native.MS_REC) or native.MS_BIND
            native.mount(m.source, str(target), None, bind)
            rest = flags & ~(native.MS_BIND | native.MS_REC)
            if rest:  # bind mounts take ro/nosuid/... only on a remount
                native.mount(None, str(target), None, native.MS_BIND | native.MS_REMOUNT | rest)
            if m.readonly and flags & native.MS_REC:  # ...and that remount reaches the top mount only
                native.mount_setattr_readonly(str(target))
        else:
            _make_target(target, True)
            native.mount(m.source or m.type, str(target), m.type, flags, ",".join(data) or None)
