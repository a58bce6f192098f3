"""``--limits auto`` (the default): the limits driver that fits this host, chosen when the spec is built.

- cgroup v2 alone at /sys/fs/cgroup (a "unified" host, most distributions now): ``cgroupv2``;
- cgroup v1 hierarchies at /sys/fs/cgroup, with or without a v2 one beside them ("hybrid"): ``cgroupv1``,
  where the controllers are;
- pish run by a non-root user: ``none`` when no limit is asked for, else a one-line error.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pish_core.errors import SpecError

if TYPE_CHECKING:
    from pish_core.spec import Resources

CGROUP_ROOT = Path("/sys/fs/cgroup")


def choose(resources: Resources, rootless: bool) -> str:
    """The name of the limits driver ``--limits auto`` stands for."""
    from pish_drivers.limits import cgroup_mounts

    if rootless:
        if not resources.empty():
            raise SpecError("limits need root (or a delegated cgroup): rootless pish runs without them; "
                            "drop --memory, --cpus, --cpuset-cpus, --pids-limit and --limit")
        return "none"
    unified = any(mount == CGROUP_ROOT and fstype == "cgroup2" for mount, fstype, _ in cgroup_mounts())
    return "cgroupv2" if unified else "cgroupv1"
