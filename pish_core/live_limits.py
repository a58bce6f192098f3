"""Change a running container's limits in place (``pish update``, ``pish-oci update``): the new values go
straight into the files of the cgroup its limits driver made, v2 (cgroupv2, systemd) or v1."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pish_core.errors import PishError

if TYPE_CHECKING:
    from pish_core.drivers import Group
    from pish_core.spec import Resources


def set_group_limits(group: Group, res: Resources, container: str) -> None:
    """Write the limits ``res`` sets (its None fields are left as they are) into ``group``'s files."""
    cgroup = getattr(group, "cgroup", None)
    if cgroup is not None:  # cgroup v2 (cgroupv2, systemd)
        from pish_drivers.limits.cgroupv2 import set_limits

        set_limits(cgroup, res, "update")
        return
    dirs = getattr(group, "dirs", None)
    if dirs is None:
        raise PishError(f"container {container}: its limits driver cannot be updated")
    from pish_drivers.limits.cgroupv1 import set_v1_limits

    set_v1_limits(dirs, res)
