"""A container's resources found again from its journal, by whichever process holds the record: its cgroup
(``group_of``), and the release of what the journal lists (``release_journal``: ``pish gc``, ``rm``, and a
detached container's supervisor once its command ended)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

from pish_core import state
from pish_core.drivers import Child, Group, Isolation, Limits, load, load_class
from pish_core.errors import StateError
from pish_core.spec import Process, Security

#: a journal entry's kind -> the key of its driver's choice in the spec
_SPEC_KEY = {"storage": "storage", "limits": "limits", "network": "net", "isolation": "isolation"}


def limits_of(s: state.ContainerState) -> tuple[Limits, dict[str, Any]]:
    """The limits driver that made the container's cgroup, and its journal entry."""
    record = next((r for r in s.resources if r.get("kind") == "limits"), None)
    if record is None:
        raise StateError(f"container {s.name} has no cgroup")
    spec_limits = s.spec.get("limits", {})
    options = spec_limits.get("options", {}) if spec_limits.get("name") == record["driver"] else {}
    # The driver made this group, so it works here: no host check (systemd's is a D-Bus round trip, and
    # `pish ps` asks this of every running container)
    return cast(Limits, load_class("limits", record["driver"])(options)), record


def group_of(s: state.ContainerState) -> Group:
    """The container's cgroup, found again through the limits driver that made it (its journal entry)."""
    limits, record = limits_of(s)
    return limits.group(record)


def oom_killed(s: state.ContainerState) -> bool:
    """Whether the OOM killer struck the container's cgroup, asked once its command has ended."""
    limits, record = limits_of(s)
    return limits.oom_killed(record)


@contextlib.contextmanager
def entered(isolation: Isolation, limits: Limits | None, record: dict[str, Any] | None, pid: int,
            process: Process, env: dict[str, str], security: Security, *,
            stdio: tuple[int, int, int] = (0, 1, 2), console: int | None = None) -> Iterator[Child]:
    """``isolation.enter`` the running container of ``pid`` (``pish exec``, ``pish-oci exec``), the new
    process in the container's group (``record``, made by ``limits``): born in it where both drivers can
    (cgroup v2), else moving itself in (``join_files``: cgroup v1), else moved there by ``join``."""
    if limits is None or record is None:  # a container without a cgroup
        with isolation.enter(pid, process, env, security, stdio=stdio, console=console) as child:
            yield child
        return
    into = limits.clone_into(record) if isolation.clones_into_cgroup else None
    files = limits.join_files(record) if into is None else ()
    where = {"cgroup_dir": into} if into is not None else {}
    with isolation.enter(pid, process, env, security, stdio=stdio, console=console, cgroup_files=files,
                         **where) as child:
        if not files and not child.in_cgroup:
            limits.join(record, child.pid)
        yield child


def release_journal(s: state.ContainerState, keep_kept: bool = False) -> list[str]:
    """Release what the journal of ``s`` lists, newest first (but what a run kept, with ``keep_kept``),
    forgetting each once released; return the failures, whose entries stay."""
    failed = []
    for record in reversed(list(s.resources)):
        if keep_kept and record.get("kept"):
            continue
        kind = record["kind"]
        try:
            options = s.spec.get(_SPEC_KEY.get(kind, kind), {}).get("options", {})
            load(kind, record["driver"], options).release(record)
        except Exception as exc:  # noqa: BLE001 - one failing release must not keep the rest
            failed.append(f"{kind} ({record['driver']}): {exc}")
            continue
        s.resources.remove(record)
        s.save()
    return failed
