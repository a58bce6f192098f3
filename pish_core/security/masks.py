"""Masked and read-only paths: the parts of /proc and /sys that tell about, or change, the whole host.

A container has its own /proc and /sys, but many files in them are not namespaced: /proc/kcore is the
host's memory, /proc/sys/vm/* tunes the host's kernel, /proc/keys lists keys, /proc/timer_list and
/proc/sched_debug leak what runs outside. As docker and runc do, pish hides the first kind (*masked*:
/dev/null bound over a file, an empty read-only tmpfs over a directory) and freezes the second
(*read-only*: bound onto itself and remounted read-only). Paths this kernel lacks are skipped.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

#: docker's default linux.maskedPaths (moby oci/defaults.go), /proc/asound included.
MASKED = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
#: docker's default linux.readonlyPaths.
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def mask(root: Path, paths: Iterable[str]) -> None:
    """Hide each of ``paths`` (container paths) that exists under ``root``."""
    from pish_core import native
    from pish_core.rootpath import resolve_in_root

    null = root / "dev" / "null"
    for path in paths:
        target = resolve_in_root(root, path)
        if not os.path.lexists(target):
            continue
        if target.is_dir():
            native.mount("tmpfs", str(target), "tmpfs", native.MS_RDONLY, "mode=0555")
        else:
            native.mount(str(null), str(target), None, native.MS_BIND)


def make_readonly(root: Path, paths: Iterable[str]) -> None:
    """Bind each of ``paths`` that exists onto itself, read-only."""
    from pish_core import native
    from pish_core.rootpath import resolve_in_root

    for path in paths:
        target = resolve_in_root(root, path)
        if not os.path.lexists(target):
            continue
        native.mount(str(target), str(target), None, native.MS_BIND | native.MS_REC)
        native.mount(None, str(target), None,
                     native.MS_BIND | native.MS_REMOUNT | native.MS_RDONLY | kept_flags(target))


def kept_flags(path: Path) -> int:
    """The nosuid/nodev/noexec flags ``path``'s mount has now: a remount must repeat them, or in a user
    namespace it fails (they are locked), and outside one it would quietly clear them."""
    from pish_core import native

    have = os.statvfs(path).f_flag
    pairs = ((os.ST_NOSUID, native.MS_NOSUID), (os.ST_NODEV, native.MS_NODEV), (os.ST_NOEXEC, native.MS_NOEXEC))
    return sum(ms_flag for st_flag, ms_flag in pairs if have & st_flag)
