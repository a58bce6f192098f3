"""Mounting into a container's root before it pivots: volumes (-v), tmpfs, files other drivers provide;
and ``detach``, the idempotent unmount every driver's release needs.

The destination is a path *inside* the container, so it must be resolved the way the container will see
it: an absolute symlink in the image (``/data -> /etc``) means the container's /etc, never the host's.
``rootpath.resolve_in_root`` walks the path one component at a time and keeps every step inside the
root, as runc's filepath-securejoin does.
"""
from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from pish_core import native
from pish_core.log import Logger
from pish_core.rootpath import resolve_in_root
from pish_core.spec import Mount

_FLAGS = {"ro": native.MS_RDONLY, "nosuid": native.MS_NOSUID, "nodev": native.MS_NODEV,
          "noexec": native.MS_NOEXEC, "rbind": native.MS_BIND | native.MS_REC, "bind": native.MS_BIND,
          "sync": native.MS_SYNCHRONOUS, "dirsync": native.MS_DIRSYNC, "mand": native.MS_MANDLOCK,
          "noatime": native.MS_NOATIME, "nodiratime": native.MS_NODIRATIME, "relatime": native.MS_RELATIME,
          "strictatime": native.MS_STRICTATIME}
#: options that only say "not the other one" (rw, suid...) or that pish does not need (tmpcopyup: podman's
#: image content under a tmpfs, which its images here do not have)
_NO_FLAG = {"rw", "suid", "dev", "exec", "async", "atime", "diratime", "norelatime", "nostrictatime",
            "tmpcopyup", "notmpcopyup", "nocopyup", "copyup", "defaults"}
#: mount propagation, set on the mount once it is made
_PROPAGATION = {"private": native.MS_PRIVATE, "rprivate": native.MS_PRIVATE | native.MS_REC,
                "slave": native.MS_SLAVE, "rslave": native.MS_SLAVE | native.MS_REC,
                "shared": native.MS_SHARED, "rshared": native.MS_SHARED | native.MS_REC,
                "unbindable": native.MS_UNBINDABLE, "runbindable": native.MS_UNBINDABLE | native.MS_REC}


def detach(path: Path, log: Logger) -> None:
    """Lazily unmount ``path``. Not mounted, or already gone, counts as done: releases must be idempotent."""
    try:
        native.umount2(str(path), native.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise
        return
    log.info("unmounted %s", path)


def _make_target(target: Path, like_dir: bool) -> None:
    if target.exists():
        return
    if like_dir:
        target.mkdir(parents=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()


def _bind(source: str, target: Path, flags: int, readonly: bool) -> None:
    _make_target(target, os.path.isdir(source))
    bind = flags & (native.MS_BIND | native.MS_REC) or native.MS_BIND
    native.mount(source, str(target), None, bind)
    rest = flags & ~(native.MS_BIND | native.MS_REC)
    if rest:  # bind mounts take ro/nosuid/... only on a remount
        native.mount(None, str(target), None, native.MS_BIND | native.MS_REMOUNT | rest)
    if readonly and flags & native.MS_REC:  # ...and that remount reaches the top mount only
        native.mount_setattr_readonly(str(target))


def apply(root: Path, mounts: Iterable[Mount]) -> None:
    """Mount each of ``mounts`` at its destination inside ``root`` (before pivot_root)."""
    for m in mounts:
        target = resolve_in_root(root, posixpath.normpath(m.destination))
        flags = propagation = 0
        data = []
        for opt in m.options:
            if opt in _FLAGS:
                flags |= _FLAGS[opt]
            elif opt in _PROPAGATION:
                propagation = _PROPAGATION[opt]
            elif opt not in _NO_FLAG:
                data.append(opt)
        if m.type == "cgroup" and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            # cgroup v1 (or hybrid): the host's hierarchies, read-only, as a tree of binds
            m = Mount(m.destination, "/sys/fs/cgroup", "bind", ("rbind", *m.options))
            flags |= native.MS_BIND | native.MS_REC
        elif m.type == "cgroup":  # OCI's "cgroup" on a unified host: the v2 hierarchy, through our namespace
            m = Mount(m.destination, "cgroup2", "cgroup2", m.options)
        if m.type == "bind" or flags & native.MS_BIND:
            _bind(m.source, target, flags, m.readonly)
        else:
            _make_target(target, True)
            try:
                native.mount(m.source or m.type, str(target), m.type, flags, ",".join(data) or None)
            except OSError as exc:
                if m.type == "sysfs" and exc.errno == errno.EPERM:
                    # sysfs in a user namespace needs a network namespace of its own: bind the host's, read-only
                    native.mount("/sys", str(target), None, native.MS_BIND | native.MS_REC)
                    native.mount(None, str(target), None, native.MS_BIND | native.MS_REMOUNT | flags)
                elif m.type == "cgroup2" and exc.errno in (errno.EPERM, errno.EBUSY):
                    # As runc: a user namespace that may not mount cgroup2 here (rootless, in a cgroup it
                    # does not own) gets the host's hierarchy bound instead, with the flags asked (ro)
                    _bind("/sys/fs/cgroup", target, flags | native.MS_BIND | native.MS_REC, m.readonly)
                else:
                    raise
        if propagation:
            native.mount(None, str(target), None, propagation)
