"""cgroupv1: a container's limits through the cgroup v1 hierarchies.

How cgroup v1 works:

- Each controller is a filesystem of its own, mounted at ``/sys/fs/cgroup/<controller>``: ``memory``
  counts and caps memory, ``cpu`` shares out CPU time, ``cpuacct`` counts it, ``cpuset`` pins CPUs,
  ``pids`` caps the number of processes, ``freezer`` stops and resumes them.
- A cgroup is a directory in such a filesystem. So a container's "cgroup" is really one directory per
  controller, each named ``pish/<id>``.
- A limit is a file in that directory: ``memory.limit_in_bytes``, ``cpu.cfs_quota_us``, ``pids.max``...
- A process joins by writing its pid to ``cgroup.procs``; what it forks is born in the same cgroups.
- ``rmdir`` deletes a cgroup once no process is left in it.

The ``devices`` controller, when mounted, holds the container's device allowlist
(``pish_core/security/devices.py``): every device denied, then the few a container's /dev has allowed,
as runc does; ``--privileged`` allows them all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pish_core import paths
from pish_core.drivers import Group, Limits, RunContext
from pish_core.errors import DriverError, SpecError
from pish_core.security.devices import rules_for
from pish_drivers.limits import (
    CPU_PERIOD_US,
    RELEASE_TIMEOUT,
    cgroup_mounts,
    cgroup_paths,
    check_cpus,
    ensure_dir,
    human_size,
    join,
    kill_all,
    kill_once,
    label,
    log,
    read,
    relative_cgroup,
    remove_dirs,
    remove_made_parents,
    subtree,
    subtree_pids,
    write,
)

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec, Resources

NAME = "cgroupv1"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The controllers every container gets a directory in; ``--limit`` may add others (blkio, devices...).
CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer")
#: Used when mounted: the device allowlist.
DEVICES = "devices"


def hierarchies() -> dict[str, Path]:
    """controller -> where its v1 hierarchy is mounted (``/sys/fs/cgroup/memory``...).

    Two controllers may share one hierarchy (``cpu,cpuacct`` on many distributions); both then map to
    the same directory, and the container gets one directory there, not two.
    """
    with open("/proc/cgroups") as f:  # every controller this kernel has, one per line after a header
        known = {line.split()[0] for line in f if not line.startswith("#")}
    found: dict[str, Path] = {}
    for mount_point, fstype, options in cgroup_mounts():
        if fstype == "cgroup" and mount_point.parent == CGROUP_ROOT:
            for controller in options & known:
                found.setdefault(controller, mount_point)
    return found


class CgroupV1Group(Group):
    """A container's directories in the v1 hierarchies, keyed by controller."""

    def __init__(self, dirs: dict[str, Path], memory_limited: bool) -> None:
        self.dirs = dirs
        self.memory_limited = memory_limited

    def stats(self) -> dict[str, int]:
        figures = {
            "memory_bytes": ("memory", "memory.usage_in_bytes"),
            "cpu_ns": ("cpuacct", "cpuacct.usage"),
            "pids": ("pids", "pids.current"),
            "memory_limit": ("memory", "memory.limit_in_bytes"),  # a huge number when there is none
        }
        out = {}
        for key, (controller, file) in figures.items():
            with contextlib.suppress(OSError, ValueError):
                out[key] = int(read(self.dirs[controller] / file))
        return out

    def oom_killed(self) -> bool:
        memory = self.dirs["memory"]
        try:
            # "oom_kill_disable 0\nunder_oom 0\noom_kill 1": the kill count appeared in Linux 4.13.
            fields = dict(line.split() for line in read(memory / "memory.oom_control").splitlines())
            if "oom_kill" in fields:
                return int(fields["oom_kill"]) > 0
            # Older kernels: failcnt counts the times usage hit the limit. That is not proof of a kill
            # (reclaim may have made room), but it is the best sign they give.
            return self.memory_limited and int(read(memory / "memory.failcnt")) > 0
        except (OSError, ValueError):
            return False

    def pids(self) -> list[int]:
        return subtree_pids(self.dirs.get("pids") or next(iter(self.dirs.values())))

    def freeze(self, frozen: bool) -> None:
        if "freezer" not in self.dirs:
            raise DriverError(f"{NAME}: the freezer controller is not mounted: cannot pause")
        _freeze(self.dirs["freezer"], "FROZEN" if frozen else "THAWED", time.monotonic() + RELEASE_TIMEOUT)

    def frozen(self) -> bool:
        try:
            return read(self.dirs["freezer"] / "freezer.state") == "FROZEN"
        except (KeyError, OSError):
            return False


class CgroupV1Limits(Limits):
    name = NAME
    description = "cgroup v1 hierarchies: memory, cpu, cpuset, pids, blkio limits; the devices allowlist; freezer"
    device_allowlist = True

    @classmethod
    def check(cls) -> str | None:
        try:
            mounted = hierarchies()
        except OSError as exc:
            return f"cannot read /proc/cgroups: {exc.strerror}"
        missing = [c for c in CONTROLLERS if c not in mounted]
        if len(missing) == len(CONTROLLERS):
            return f"no cgroup v1 hierarchies under {CGROUP_ROOT} (a cgroup v2 host? try --limits cgroupv2)"
        if missing:
            return f"cgroup v1 controllers not mounted under {CGROUP_ROOT}: {', '.join(missing)}"
        return None

    def validate(self, spec: ContainerSpec) -> None:
        res = spec.resources
        mounted = hierarchies()
        if (res.blkio_weight is not None or res.device_limits) and "blkio" not in mounted:
            raise SpecError(f"{NAME}: --blkio-weight and --device-*-bps/iops need the blkio controller, "
                            "which is not mounted")
        for controller, key, value in res.extra:
            where = mounted.get(controller)
            if where is None:
                raise SpecError(f"{NAME}: controller {controller} is not mounted (--limit {key}={value})")
            # Some files (pids.max, freezer.state) exist only below the root: look in pish/ too.
            file = next((d / key for d in (where, where / "pish") if (d / key).is_file()), None)
            if file is None:
                raise SpecError(f"{NAME}: {controller} has no setting {key} (see the files in {where})")
            if not file.stat().st_mode & 0o200:
                raise SpecError(f"{NAME}: {key} is read-only")
        if res.cpuset_cpus is not None or res.cpus is not None:
            cpuset = mounted["cpuset"]
            host = cpuset / "cpuset.effective_cpus"
            check_cpus(
                NAME, res.cpus, res.cpuset_cpus, read(host if host.exists() else cpuset / "cpuset.cpus")
            )

    @contextlib.contextmanager
    def apply(self, ctx: RunContext, pid: int) -> Iterator[Group]:
        res = ctx.spec.resources
        mounted = hierarchies()
        devices = [DEVICES] if DEVICES in mounted else []
        blkio = ["blkio"] if res.blkio_weight is not None or res.device_limits else []
        controllers = dict.fromkeys([*CONTROLLERS, *devices, *blkio, *(c for c, _, _ in res.extra)])  # no repeats
        relative = relative_cgroup(ctx.spec.cgroups_path, ctx.id)
        dirs = {c: mounted[c] / relative for c in controllers}
        unique = list(dict.fromkeys(dirs.values()))
        given = {"given": True} if ctx.spec.cgroups_path else {}  # an OCI config's cgroupsPath
        # Journal first: if we die half-way, `pish gc` finds the record and removes what was made.
        with ctx.journal.held("limits", NAME, "cgroup", self.release, paths=[str(d) for d in unique],
                              **given) as record:
            log.info("creating cgroup %s", label(unique[0]))
            made: list[str] = []
            for controller, cgroup in dirs.items():
                for parent in reversed([p for p in cgroup.parents if mounted[controller] in p.parents]):
                    if ensure_dir(parent, f"cgroup {parent.relative_to(mounted[controller])} in "
                                  f"{mounted[controller]}" + (" (shared by all containers)" if parent.name == "pish"
                                                              else "")) and given:
                        made.append(str(parent))
                        ctx.journal.update(record, made=made)
                    if controller == "cpuset":
                        _inherit_cpuset(parent)
                cgroup.mkdir(exist_ok=True)
                if controller == "cpuset":
                    _inherit_cpuset(cgroup)
            if DEVICES in dirs:
                _allow_devices(dirs[DEVICES], rules_for(ctx.spec.security.privileged, ctx.spec.security.device_rules))
            set_v1_limits(dirs, res)
            group = CgroupV1Group(dirs, memory_limited=res.memory is not None)
            if init_joins_itself(ctx.spec):
                group.join_files = tuple(str(cgroup / "tasks") for cgroup in unique)
            else:
                log.debug("adding pid %d to cgroup %s", pid, label(unique[0]))
                for cgroup in unique:
                    write(cgroup / "cgroup.procs", pid, NAME)
            yield group

    def join(self, record: dict[str, Any], pid: int) -> None:
        join(record, pid, NAME)

    def join_files(self, record: dict[str, Any]) -> tuple[str, ...]:
        if paths.rootless():
            return ()
        return tuple(str(cgroup / "tasks") for cgroup in cgroup_paths(record, NAME))

    def group(self, record: dict[str, Any]) -> Group:
        paths = cgroup_paths(record, NAME)
        dirs = {c: p for c, mount in hierarchies().items() for p in paths if mount in p.parents}
        return CgroupV1Group(dirs, memory_limited=True)

    def release(self, record: dict[str, Any]) -> None:
        cgroups = cgroup_paths(record, NAME)
        cgroups = [cg for cg in cgroups if cg.is_dir()]
        if not cgroups:
            remove_made_parents(record)
            return  # already released
        log.info("removing cgroup %s", label(cgroups[0]))
        deadline = time.monotonic() + RELEASE_TIMEOUT
        everything = [sub for cg in cgroups for sub in subtree(cg)]
        # Freeze first, so nothing can fork between our reading cgroup.procs and our SIGKILLs; the
        # frozen processes die as soon as they are thawed. Then kill whatever is left until none is.
        freezer = next((cg for cg in cgroups if (cg / "freezer.state").exists()), None)
        if freezer is not None:
            _freeze(freezer, "FROZEN", deadline)
            try:
                kill_once(everything)
            finally:
                _freeze(freezer, "THAWED", deadline)
        kill_all(everything, deadline, NAME)
        remove_dirs(everything, deadline, NAME)
        remove_made_parents(record)


def init_joins_itself(spec: ContainerSpec) -> bool:
    """Whether the container's init moves itself into its v1 cgroups (``Group.join_files``: its own "0" in
    each ``tasks`` file, ~10 ms cheaper than our writing its pid): it can when it is root of the host's user
    namespace, and nothing needs it in there before it is released (an OCI hook gets the pid meanwhile)."""
    return (not spec.userns.private and not paths.rootless() and not spec.hooks
            and not any(n.type == "user" for n in spec.namespaces))


def _allow_devices(cgroup: Path, rules: tuple[str, ...]) -> None:
    """The device allowlist: deny everything, then allow the container's own nodes (all: --privileged)."""
    from pish_core.security import devices

    if devices.ALLOW_ALL in rules:
        write(cgroup / "devices.allow", devices.ALLOW_ALL, NAME)
        return
    log.debug("allowing devices %s", ", ".join(rules))
    write(cgroup / "devices.deny", "a", NAME)
    for rule in rules:
        write(cgroup / "devices.allow", rule, NAME)


def set_v1_limits(dirs: dict[str, Path], res: Resources) -> None:
    if res.memory is not None:
        log.info("setting memory limit %s", human_size(res.memory))
        write(dirs["memory"] / "memory.limit_in_bytes", res.memory, NAME)
    if res.memory_swap is not None:  # memory plus swap, as docker's flag means it; -1: unlimited
        log.info("setting memory+swap limit %s", "unlimited" if res.memory_swap == -1 else human_size(res.memory_swap))
        write(dirs["memory"] / "memory.memsw.limit_in_bytes", res.memory_swap, NAME)
    if res.memory_reservation is not None:
        log.info("setting memory reservation %s", human_size(res.memory_reservation))
        write(dirs["memory"] / "memory.soft_limit_in_bytes", res.memory_reservation, NAME)
    if res.cpu_shares is not None:
        log.info("setting cpu shares %d", res.cpu_shares)
        write(dirs["cpu"] / "cpu.shares", res.cpu_shares, NAME)
    if res.cpuset_mems is not None:
        log.info("setting cpuset to memory nodes %s", res.cpuset_mems)
        write(dirs["cpuset"] / "cpuset.mems", res.cpuset_mems, NAME)
    if res.blkio_weight is not None:
        weight = next((f for f in ("blkio.bfq.weight", "blkio.weight") if (dirs["blkio"] / f).exists()), "blkio.weight")
        log.info("setting %s %d", weight, res.blkio_weight)
        write(dirs["blkio"] / weight, res.blkio_weight, NAME)
    for d in res.device_limits:
        key = {"rbps": "read_bps", "wbps": "write_bps", "riops": "read_iops", "wiops": "write_iops"}[d.what]
        log.info("setting io limit %d:%d %s=%d", d.major, d.minor, d.what, d.rate)
        write(dirs["blkio"] / f"blkio.throttle.{key}_device", f"{d.major}:{d.minor} {d.rate}", NAME)
    if res.cpus is not None:
        # CFS bandwidth: the group may run `quota` microseconds in every `period` microseconds.
        quota = int(res.cpus * CPU_PERIOD_US)
        log.info("setting cpu limit %g CPUs (%d us every %d us)", res.cpus, quota, CPU_PERIOD_US)
        write(dirs["cpu"] / "cpu.cfs_period_us", CPU_PERIOD_US, NAME)
        write(dirs["cpu"] / "cpu.cfs_quota_us", quota, NAME)
    if res.cpuset_cpus is not None:
        log.info("setting cpuset to CPUs %s", res.cpuset_cpus)
        write(dirs["cpuset"] / "cpuset.cpus", res.cpuset_cpus, NAME)
    if res.pids_limit is not None:
        log.info("setting pids limit %d", res.pids_limit)
        write(dirs["pids"] / "pids.max", res.pids_limit, NAME)
    for controller, key, value in res.extra:
        log.info("setting %s to %s", key, value)
        write(dirs[controller] / key, value, NAME)


def _inherit_cpuset(cgroup: Path) -> None:
    """A new v1 cpuset starts with no CPUs and no memory nodes, and a process cannot join it until it
    has some: give it its parent's."""
    for file in ("cpuset.cpus", "cpuset.mems"):
        if not read(cgroup / file):
            write(cgroup / file, read(cgroup.parent / file), NAME)


def _freeze(freezer: Path, state: str, deadline: float) -> None:
    """Write FROZEN or THAWED to freezer.state; wait (a little) while it says FREEZING."""
    write(freezer / "freezer.state", state, NAME)
    stop = min(deadline, time.monotonic() + 1.0)  # a task stuck in the kernel may keep it FREEZING
    while read(freezer / "freezer.state") != state and time.monotonic() < stop:
        time.sleep(0.005)
