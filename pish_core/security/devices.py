"""Devices: which device files a container may use.

Two locks, as with runc. The container's /dev holds only the few nodes ``init.mount_dev`` makes (null,
zero, full, random, urandom, tty, a private devpts with its ptmx); and the devices cgroup (cgroup v1
``devices.deny``/``devices.allow``) refuses every other device, so even a node made with ``mknod`` (root in
the container holds CAP_MKNOD, as in docker) cannot be created for a block device, or opened. Under
``--privileged`` the cgroup allows every device and /dev gets the host's nodes, as docker does.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

#: The device nodes a container's /dev gets, as docker and runc give them: (name, major, minor).
NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))

#: The devices cgroup allowlist, in ``devices.allow`` syntax (type major:minor access): runc's defaults
#: for the nodes a container gets, without its blanket ``mknod`` rights for any device.
ALLOWLIST = (
    "c 1:3 rwm",  # /dev/null
    "c 1:5 rwm",  # /dev/zero
    "c 1:7 rwm",  # /dev/full
    "c 1:8 rwm",  # /dev/random
    "c 1:9 rwm",  # /dev/urandom
    "c 5:0 rwm",  # /dev/tty
    "c 5:2 rwm",  # /dev/ptmx (the host's multiplexer; the container's is /dev/pts/ptmx)
    "c 136:* rwm",  # /dev/pts/*
)
#: Everything: ``--privileged``.
ALLOW_ALL = "a *:* rwm"


def rules_for(privileged: bool, device_rules: tuple[str, ...] | None) -> tuple[str, ...]:
    """The allowlist a container's limits driver enforces: everything under ``--privileged``, else the
    spec's own rules (an OCI config's linux.resources.devices and linux.devices), else ALLOWLIST."""
    if privileged:
        return (ALLOW_ALL,)
    return ALLOWLIST if device_rules is None else tuple(ALLOW_ALL if r == "a" else r for r in device_rules)


def copy_host_devices(root: Path) -> None:
    """``--privileged``: give /dev (already a tmpfs of the container's) every device node at the top of
    the host's /dev that it lacks. Runs before pivot_root, while the host's /dev is still in view."""
    for entry in os.scandir("/dev"):
        st = entry.stat(follow_symlinks=False)
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            continue
        target = root / "dev" / entry.name
        if not os.path.lexists(target):
            os.mknod(target, st.st_mode, st.st_rdev)
            os.chmod(target, stat.S_IMODE(st.st_mode))
            os.chown(target, st.st_uid, st.st_gid)
