"""``pish-oci update``: change a running container's limits, from a linux.resources JSON or runc's flags.
The new values go through the container's limits driver files (cgroup v1 or v2) directly
(``pish_core.live_limits``, shared with ``pish update``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pish_core.errors import PishError


def update(oci_id: str, resources_file: Path | None, *, memory: str | None, pids_limit: int | None,
           cpu_quota: int | None, cpu_period: int | None, cpu_share: int | None) -> None:
    from pish_core.flags import parse_size
    from pish_core.live_limits import set_group_limits
    from pish_core.oci import container
    from pish_core.spec import Resources

    data: dict[str, Any] = {}
    if resources_file is not None:
        try:
            data = json.loads(resources_file.read_text() if str(resources_file) != "-" else input())
        except (OSError, ValueError) as exc:
            raise PishError(f"cannot read resources {resources_file}: {exc}") from None
    memory_bytes = parse_size(memory, "--memory") if memory else (data.get("memory") or {}).get("limit")
    pids = pids_limit or (data.get("pids") or {}).get("limit")
    cpu = data.get("cpu") or {}
    quota, period = cpu_quota or cpu.get("quota"), cpu_period or cpu.get("period") or 100_000
    shares = cpu_share or cpu.get("shares")
    res = Resources(memory=memory_bytes or None, pids_limit=pids or None,
                    cpus=(quota / period) if quota and quota > 0 else None, cpu_shares=shares or None)
    set_group_limits(container._group(container._record(oci_id)), res, oci_id)
