"""Python face of the native helper (``native/pish_native.c``, compiled by cffi at install time).

Each function raises OSError with the real errno, like the ``os`` module does.
"""
from __future__ import annotations

import os

from pish_core._native import ffi, lib  # type: ignore[import-not-found]

# <sched.h> / <sys/mount.h> / <sys/prctl.h> constants
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}", path)
    return ret


def _c(s: str | None) -> object:
    return ffi.NULL if s is None else s.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(lib.pish_mount(_c(source), _c(target), _c(fstype), flags, _c(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(lib.pish_umount2(_c(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(lib.pish_pivot_root(_c(new_root), _c(put_old)), "pivot_root", new_root)


def unshare(flags: int) -> None:
    _check(lib.pish_unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(lib.pish_setns(fd, nstype), "setns")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(lib.pish_sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(lib.pish_prctl(option, arg2, arg3, arg4, arg5), "prctl")
