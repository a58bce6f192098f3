"""cgroupv2: a container's limits through the unified cgroup hierarchy (cgroup v2).

How cgroup v2 differs from v1:

- There is one hierarchy for all controllers, so a container's cgroup is one directory,
  ``<root>/pish/<id>``. The root is ``/sys/fs/cgroup``, or ``/sys/fs/cgroup/unified`` on a "hybrid" host
  that mounts the v1 hierarchies at ``/sys/fs/cgroup`` too.
- A controller is attached to v1 or to v2, never both: on a hybrid host most live in v1, and v2 may have
  none. ``cgroup.controllers`` lists the ones a cgroup has.
- A parent hands controllers down by writing ``+memory +cpu`` to its ``cgroup.subtree_control``; only
  then do its children get ``memory.*`` and ``cpu.*`` files. That is why we enable them in the root (for
  ``pish/``) and in ``pish/`` (for the container's cgroup).
- Processes live only in leaves ("no internal processes"): ``pish/`` itself never holds one.
- The limits have new names: ``memory.max``, ``cpu.max`` (``"quota period"``), ``pids.max``,
  ``cpuset.cpus``. ``cgroup.kill`` kills everything inside (Linux 5.14), and ``cgroup.events`` says
  ``populated 0`` once the cgroup is empty.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pish_core import names
from pish_core.drivers import Group, Limits, RunContext
from pish_core.errors import DriverError, SpecError
from pish_drivers.limits import (
    CPU_PERIOD_US,
    RELEASE_TIMEOUT,
    cgroup_mounts,
    check_cpus,
    ensure_dir,
    human_size,
    join,
    kill_all,
    label,
    log,
    owned,
    read,
    read_keyed,
    remove_dirs,
    subtree,
    write,
)

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec, Resources

NAME = "cgroupv2"
#: Where a cgroup2 hierarchy is usually mounted: alone, or beside the v1 ones on a hybrid host.
USUAL_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def default_root() -> Path | None:
    """The first of USUAL_ROOTS that is a cgroup2 mount, or None."""
    mounted = {mount_point for mount_point, fstype, _ in cgroup_mounts() if fstype == "cgroup2"}
    return next((root for root in USUAL_ROOTS if root in mounted), None)


def needed_controllers(res: Resources) -> list[str]:
    """The controllers the requested limits need, in a stable order."""
    wanted = {
        "memory": res.memory is not None,
        "cpu": res.cpus is not None,
        "cpuset": res.cpuset_cpus is not None,
        "pids": res.pids_limit is not None,
    }
    return list(dict.fromkeys([c for c, yes in wanted.items() if yes] + [c for c, _, _ in res.extra]))


class CgroupV2Group(Group):
    def __init__(self, cgroup: Path) -> None:
        self.cgroup = cgroup

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            out["memory_bytes"] = int(read(self.cgroup / "memory.current"))
        with contextlib.suppress(OSError, KeyError):
            out["cpu_ns"] = read_keyed(self.cgroup / "cpu.stat")["usage_usec"] * 1000  # always there
        with contextlib.suppress(OSError, ValueError):
            out["pids"] = int(read(self.cgroup / "pids.current"))
        return out

    def oom_killed(self) -> bool:
        try:
            return read_keyed(self.cgroup / "memory.events").get("oom_kill", 0) > 0
        except OSError:
            return False


class CgroupV2Limits(Limits):
    name = NAME
    description = "cgroup v2 (unified hierarchy): memory.max, cpu.max, cpuset.cpus, pids.max; cgroup.kill"
    known_options: ClassVar[Mapping[str, str]] = {
        "root": "the cgroup2 hierarchy (default: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host)"
    }

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        root = self.options.get("root")
        self.root = Path(root) if root else default_root() or USUAL_ROOTS[0]

    @classmethod
    def check(cls) -> str | None:
        if default_root() is None:
            return f"no cgroup2 hierarchy mounted at {' or '.join(map(str, USUAL_ROOTS))}"
        return None

    def validate(self, spec: ContainerSpec) -> None:
        res = spec.resources
        if not (self.root / "cgroup.controllers").is_file():
            raise SpecError(f"{NAME}: {self.root} is not a cgroup2 hierarchy (it has no cgroup.controllers)")
        available = read(self.root / "cgroup.controllers").split()
        for controller in needed_controllers(res):
            if controller not in available:
                raise SpecError(f"{NAME}: controller {controller} is not available on this host")
        # A cgroup's files for a controller exist only once its parent enabled it. pish/ shows them if the
        # root already does; if not, a wrong key is reported when apply() writes it.
        pish = self.root / "pish"
        try:
            in_pish = read(pish / "cgroup.controllers").split()
        except OSError:
            in_pish = []  # no container made pish/ yet
        for controller, key, _ in res.extra:
            if controller in in_pish:
                if not (pish / key).is_file():
                    raise SpecError(f"{NAME}: {controller} has no setting {key} (see the files in {pish})")
                if not (pish / key).stat().st_mode & 0o200:
                    raise SpecError(f"{NAME}: {key} is read-only")
        if res.cpuset_cpus is not None or res.cpus is not None:
            host = self.root / "cpuset.cpus.effective"
            if not host.exists():
                host = Path("/sys/devices/system/cpu/online")
            check_cpus(NAME, res.cpus, res.cpuset_cpus, read(host))

    @contextlib.contextmanager
    def apply(self, ctx: RunContext, pid: int) -> Iterator[Group]:
        res = ctx.spec.resources
        cgroup = self.root / names.cgroup_name(ctx.id)
        # Journal first: if we die half-way, `pish gc` finds the record and removes what was made.
        with ctx.journal.held("limits", NAME, "cgroup", self.release, paths=[str(cgroup)]):
            controllers = needed_controllers(res)
            _enable(self.root, controllers)  # root -> pish/
            ensure_dir(cgroup.parent, f"cgroup pish in {self.root} (shared by all containers)")
            _enable(cgroup.parent, controllers)  # pish/ -> pish/<id>
            log.info("creating cgroup %s", label(cgroup))
            cgroup.mkdir(exist_ok=True)
            _set_limits(cgroup, res)
            log.debug("adding pid %d to cgroup %s", pid, label(cgroup))
            write(cgroup / "cgroup.procs", pid, NAME)
            yield CgroupV2Group(cgroup)

    def join(self, record: dict[str, Any], pid: int) -> None:
        join(record, pid, NAME)

    def release(self, record: dict[str, Any]) -> None:
        cgroups = [owned(Path(p), NAME) for p in record.get("paths", [])]
        for cgroup in filter(Path.is_dir, cgroups):
            log.info("removing cgroup %s", label(cgroup))
            deadline = time.monotonic() + RELEASE_TIMEOUT
            everything = subtree(cgroup)
            if (cgroup / "cgroup.kill").exists():
                write(cgroup / "cgroup.kill", 1, NAME)  # the kernel SIGKILLs the whole subtree, forks too
            else:
                kill_all(everything, deadline, NAME)  # before Linux 5.14
            _wait_until_empty(cgroup, deadline)
            remove_dirs(everything, deadline, NAME)


def _enable(parent: Path, controllers: list[str]) -> None:
    """Let ``parent``'s children use ``controllers`` (those not enabled yet)."""
    enabled = read(parent / "cgroup.subtree_control").split()
    missing = [c for c in controllers if c not in enabled]
    if missing:
        log.info("enabling controllers %s below %s", " ".join(missing), parent)
        write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing), NAME)


def _set_limits(cgroup: Path, res: Resources) -> None:
    if res.memory is not None:
        log.info("setting memory limit %s", human_size(res.memory))
        write(cgroup / "memory.max", res.memory, NAME)
    if res.cpus is not None:
        quota = int(res.cpus * CPU_PERIOD_US)
        log.info("setting cpu limit %g CPUs (%d us every %d us)", res.cpus, quota, CPU_PERIOD_US)
        write(cgroup / "cpu.max", f"{quota} {CPU_PERIOD_US}", NAME)
    if res.cpuset_cpus is not None:
        log.info("setting cpuset to CPUs %s", res.cpuset_cpus)
        write(cgroup / "cpuset.cpus", res.cpuset_cpus, NAME)
    if res.pids_limit is not None:
        log.info("setting pids limit %d", res.pids_limit)
        write(cgroup / "pids.max", res.pids_limit, NAME)
    for _, key, value in res.extra:
        log.info("setting %s to %s", key, value)
        write(cgroup / key, value, NAME)


def _wait_until_empty(cgroup: Path, deadline: float) -> None:
    """Wait for ``populated 0`` in cgroup.events: every process of the subtree has exited."""
    while True:
        try:
            if not read_keyed(cgroup / "cgroup.events").get("populated", 0):
                return
        except FileNotFoundError:
            return
        if time.monotonic() > deadline:
            raise DriverError(
                f"{NAME}: {label(cgroup)} still has processes after SIGKILL; try `pish gc` later"
            )
        time.sleep(0.01)
