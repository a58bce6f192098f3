"""``--limits auto`` (the default): the limits driver that fits this host, chosen when the spec is built.

- systemd as PID 1 on a unified host (most distributions now): ``systemd``, transient scopes through
  systemd's D-Bus API, so systemd and pish never fight over the tree (what podman and runc
  ``--systemd-cgroup`` do there);
- cgroup v2 alone at /sys/fs/cgroup without systemd: ``cgroupv2`` (cgroupfs);
- cgroup v1 hierarchies at /sys/fs/cgroup, with or without a v2 one beside them ("hybrid"): ``cgroupv1``,
  where the controllers are;
- pish run by a non-root user: ``none`` when no limit is asked for; with limits, ``systemd`` through the
  user's own systemd (which holds the cgroup systemd delegates to the user), else a one-line error.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pish_core.errors import SpecError

if TYPE_CHECKING:
    from pish_core.spec import Resources

CGROUP_ROOT = Path("/sys/fs/cgroup")


def systemd_booted() -> bool:
    """PID 1 is systemd: sd_booted(3)'s own test, the directory systemd makes at boot."""
    return os.path.isdir("/run/systemd/system")


def user_bus() -> Path | None:
    """The socket of the user's own systemd and D-Bus (``systemd --user``), if it runs."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    bus = Path(runtime) / "bus"
    return bus if bus.exists() else None


def unified() -> bool:
    from pish_drivers.limits import cgroup_mounts

    return any(mount == CGROUP_ROOT and fstype == "cgroup2" for mount, fstype, _ in cgroup_mounts())


def choose(resources: Resources, rootless: bool) -> str:
    """The name of the limits driver ``--limits auto`` stands for."""
    if rootless:
        if resources.empty():
            return "none"
        if systemd_booted() and unified() and user_bus() is not None:
            return "systemd"
        raise SpecError("limits without root need systemd's user manager on a cgroup v2 host (it delegates a "
                        "cgroup to the user); none runs here: drop --memory, --cpus, --pids-limit and the rest")
    if unified():
        return "systemd" if systemd_booted() else "cgroupv2"
    return "cgroupv1"
