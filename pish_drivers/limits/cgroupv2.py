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
- The limits have new names: ``memory.max``, ``memory.swap.max`` (swap alone, not memory plus swap as
  v1's memsw), ``memory.low``, ``cpu.max`` (``"quota period"``), ``cpu.weight`` (1-10000, not v1's
  shares), ``cpuset.cpus``/``cpuset.mems``, ``pids.max``, ``io.max`` (``"8:0 rbps=1048576"``) and
  ``io.weight``. ``cgroup.kill`` kills everything inside (Linux 5.14), ``cgroup.events`` says
  ``populated 0`` once the cgroup is empty, and ``memory.events`` counts OOM kills (``oom_kill``).
- A container sees its own cgroup as ``/`` through a cgroup namespace of its own, with the hierarchy
  mounted read-only at /sys/fs/cgroup (``Group.mounts``): programs that size themselves from
  ``/sys/fs/cgroup/memory.max`` and ``cpu.max`` (the JVM, Go, Node) see their limits.
- No device controller: the device allowlist is a BPF program attached to the cgroup (``bpfdevices.py``).

``pish/`` is made by the first container and removed with the last one, so no empty cgroup of pish's stays.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pish_core.drivers import Group, Limits, RunContext
from pish_core.errors import DriverError, SpecError
from pish_core.security.devices import rules_for
from pish_core.spec import Mount
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
    label,
    log,
    read,
    read_keyed,
    relative_cgroup,
    remove_dirs,
    remove_made_parents,
    subtree,
    subtree_pids,
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


#: The container's view of its cgroup: the hierarchy read-only at /sys/fs/cgroup (with a private cgroup
#: namespace, its root is the container's own cgroup), as docker mounts it.
CGROUP_MOUNT = Mount("/sys/fs/cgroup", "cgroup2", "cgroup2", ("ro", "nosuid", "nodev", "noexec"))


def needed_controllers(res: Resources) -> list[str]:
    """The controllers the requested limits need, in a stable order."""
    wanted = {
        "memory": res.memory is not None or res.memory_swap is not None or res.memory_reservation is not None,
        "cpu": res.cpus is not None or res.cpu_shares is not None,
        "cpuset": res.cpuset_cpus is not None or res.cpuset_mems is not None,
        "pids": res.pids_limit is not None,
        "io": res.blkio_weight is not None or bool(res.device_limits),
    }
    return list(dict.fromkeys([c for c, yes in wanted.items() if yes] + [c for c, _, _ in res.extra]))


#: Controllers a container gets even with no limit, when the hierarchy has them, as runc enables them: their
#: figures (memory.current, cpu.stat, pids.current) are what `stats`, `pish-oci events` and OOM reports read.
ACCOUNTING = ("cpu", "memory", "pids")


def with_accounting(root: Path, controllers: list[str]) -> list[str]:
    """``controllers`` and those of ACCOUNTING the hierarchy's root offers."""
    try:
        offered = read(root / "cgroup.controllers").split()
    except OSError:
        offered = []
    return list(dict.fromkeys([*controllers, *(c for c in ACCOUNTING if c in offered)]))


def cpu_weight(shares: int) -> int:
    """docker's --cpu-shares (2-262144, default 1024) as cgroup v2's cpu.weight (1-10000, default 100),
    the conversion runc and crun use."""
    return 1 + ((shares - 2) * 9999) // 262142


def io_weight(blkio_weight: int) -> int:
    """docker's --blkio-weight (10-1000) as cgroup v2's io.weight (1-10000), as runc converts it."""
    return 1 + ((blkio_weight - 10) * 9999) // 990


class CgroupV2Group(Group):
    def __init__(self, cgroup: Path, mounts: tuple[Mount, ...] = ()) -> None:
        self.cgroup = cgroup
        self.mounts = mounts

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            out["memory_bytes"] = int(read(self.cgroup / "memory.current"))
        with contextlib.suppress(OSError, KeyError):
            out["cpu_ns"] = read_keyed(self.cgroup / "cpu.stat")["usage_usec"] * 1000  # always there
        with contextlib.suppress(OSError, ValueError):
            out["pids"] = int(read(self.cgroup / "pids.current"))
        with contextlib.suppress(OSError, ValueError):  # "max": no limit, no figure
            out["memory_limit"] = int(read(self.cgroup / "memory.max"))
        return out

    def oom_killed(self) -> bool:
        try:
            return read_keyed(self.cgroup / "memory.events").get("oom_kill", 0) > 0
        except OSError:
            return False

    def pids(self) -> list[int]:
        return subtree_pids(self.cgroup)

    def freeze(self, frozen: bool) -> None:
        """cgroup.freeze (Linux 5.2); done once cgroup.events says ``frozen`` as asked."""
        write(self.cgroup / "cgroup.freeze", int(frozen), NAME)
        deadline = time.monotonic() + RELEASE_TIMEOUT
        while self.frozen() != frozen and time.monotonic() < deadline:
            time.sleep(0.005)

    def frozen(self) -> bool:
        try:
            return read_keyed(self.cgroup / "cgroup.events").get("frozen", 0) == 1
        except OSError:
            return False


class CgroupV2Limits(Limits):
    name = NAME
    description = ("cgroup v2 (unified hierarchy, cgroupfs): memory, cpu, cpuset, pids, io; a BPF device "
                   "allowlist; cgroup.kill")
    unified = True
    device_allowlist = True
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
        if res.memory_swap is not None and res.memory_swap != -1 and not _swap_accounted(self.root):
            raise SpecError(f"{NAME}: --memory-swap needs swap accounting, which this kernel does not do "
                            "(no memory.swap.max)")
        if res.cpuset_cpus is not None or res.cpus is not None:
            host = self.root / "cpuset.cpus.effective"
            if not host.exists():
                host = Path("/sys/devices/system/cpu/online")
            check_cpus(NAME, res.cpus, res.cpuset_cpus, read(host))

    @contextlib.contextmanager
    def apply(self, ctx: RunContext, pid: int) -> Iterator[Group]:
        res = ctx.spec.resources
        cgroup = self.root / relative_cgroup(ctx.spec.cgroups_path, ctx.id)
        given = {"given": True} if ctx.spec.cgroups_path else {}  # an OCI config's cgroupsPath
        # Journal first: if we die half-way, `pish gc` finds the record and removes what was made.
        with ctx.journal.held("limits", NAME, "cgroup", self.release, paths=[str(cgroup)], **given) as record:
            made = make_cgroup(self.root, cgroup, with_accounting(self.root, needed_controllers(res)), NAME)
            if given and made:
                ctx.journal.update(record, made=[str(p) for p in made])
            set_limits(cgroup, res, NAME)
            allow_devices(cgroup, rules_for(ctx.spec.security.privileged, ctx.spec.security.device_rules))
            log.debug("adding pid %d to cgroup %s", pid, label(cgroup))
            write(cgroup / "cgroup.procs", pid, NAME)
            yield CgroupV2Group(cgroup, (CGROUP_MOUNT,) if ctx.spec.cgroupns == "private" else ())

    def join(self, record: dict[str, Any], pid: int) -> None:
        join(record, pid, NAME)

    def clone_into(self, record: dict[str, Any]) -> str | None:
        return str(cgroup_paths(record, NAME)[0])

    def group(self, record: dict[str, Any]) -> Group:
        return CgroupV2Group(cgroup_paths(record, NAME)[0])

    def release(self, record: dict[str, Any]) -> None:
        cgroups = cgroup_paths(record, NAME)
        for cgroup in filter(Path.is_dir, cgroups):
            log.info("removing cgroup %s", label(cgroup))
            kill_and_remove(cgroup, NAME)
            if not record.get("given"):
                remove_parent_if_empty(cgroup.parent)
        remove_made_parents(record)


def kill_and_remove(cgroup: Path, driver: str) -> None:
    """Kill every process of ``cgroup`` and its subtree, wait until it is empty, remove it all."""
    deadline = time.monotonic() + RELEASE_TIMEOUT
    everything = subtree(cgroup)
    if (cgroup / "cgroup.kill").exists():
        write(cgroup / "cgroup.kill", 1, driver)  # the kernel SIGKILLs the whole subtree, forks too
    else:
        kill_all(everything, deadline, driver)  # before Linux 5.14
    wait_until_empty(cgroup, deadline, driver)
    remove_dirs(everything, deadline, driver)  # retried while the kernel still counts a process


def make_cgroup(root: Path, cgroup: Path, controllers: list[str], driver: str) -> list[Path]:
    """Make ``cgroup`` (``root/pish/<id>``, or an OCI cgroupsPath) with ``controllers`` enabled on the way
    down, as runc does. ``pish/`` is made if missing; a release of the last container may remove it at any
    moment (it has no lock), so a step that finds it gone starts again. Returns the parents it made."""
    ancestors = [root, *reversed([p for p in cgroup.parents if root in p.parents])]
    made: list[Path] = []
    for attempt in range(10):
        try:
            for parent in ancestors:  # root -> pish/ -> pish/<id>: each hands the controllers down
                if parent != root and ensure_dir(parent, f"cgroup {parent.relative_to(root)} in {root}"
                                                 + (" (shared by all containers)" if parent.name == "pish" else "")):
                    made.append(parent)
                enable(parent, controllers, driver)
            log.info("creating cgroup %s", label(cgroup))
            cgroup.mkdir()
            return made
        except (FileNotFoundError, DriverError):
            if cgroup.parent.is_dir() or attempt == 9:
                raise
    raise DriverError(f"{driver}: cannot make cgroup {cgroup}")  # not reached: the last attempt raises


def allow_devices(cgroup: Path, rules: tuple[str, ...]) -> None:
    """The device allowlist (``pish_core/security/devices.py``'s ``rules_for``) as a BPF program on
    ``cgroup``, before any process is in it; it goes when the cgroup is removed."""
    from pish_drivers.limits import bpfdevices

    bpfdevices.attach(cgroup, rules)


def remove_parent_if_empty(parent: Path) -> None:
    """rmdir ``pish/`` once no container's cgroup is left in it (EBUSY while one is: leave it)."""
    try:
        os.rmdir(parent)
    except OSError:
        return
    log.info("removed cgroup %s (no container left in it)", parent)


def enable(parent: Path, controllers: list[str], driver: str) -> None:
    """Let ``parent``'s children use ``controllers`` (those not enabled yet)."""
    enabled = read(parent / "cgroup.subtree_control").split()
    missing = [c for c in controllers if c not in enabled]
    if missing:
        log.info("enabling controllers %s below %s", " ".join(missing), parent)
        write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing), driver)


def _swap_accounted(root: Path) -> bool:
    """Whether cgroup v2 can limit swap: the kernel then has memory.swap.* files in every memory cgroup
    (CONFIG_MEMCG_SWAP and swap accounting on). The root cgroup has none; one below it tells."""
    return any(root.glob("*/memory.swap.max"))


def set_limits(cgroup: Path, res: Resources, driver: str) -> None:
    """Write ``res`` into the files of a cgroup v2 ``cgroup`` (the systemd driver's scopes too)."""
    if res.memory is not None:
        log.info("setting memory limit %s", human_size(res.memory))
        write(cgroup / "memory.max", res.memory, driver)
    if res.memory_swap is not None:
        swap = "max" if res.memory_swap == -1 or res.memory is None else res.memory_swap - res.memory
        log.info("setting swap limit %s", swap if swap == "max" else human_size(int(swap)))
        write(cgroup / "memory.swap.max", swap, driver)
    if res.memory_reservation is not None:
        log.info("setting memory reservation %s", human_size(res.memory_reservation))
        write(cgroup / "memory.low", res.memory_reservation, driver)
    if res.cpus is not None:
        quota = int(res.cpus * CPU_PERIOD_US)
        log.info("setting cpu limit %g CPUs (%d us every %d us)", res.cpus, quota, CPU_PERIOD_US)
        write(cgroup / "cpu.max", f"{quota} {CPU_PERIOD_US}", driver)
    if res.cpu_shares is not None:
        log.info("setting cpu weight %d (--cpu-shares %d)", cpu_weight(res.cpu_shares), res.cpu_shares)
        write(cgroup / "cpu.weight", cpu_weight(res.cpu_shares), driver)
    if res.cpuset_cpus is not None:
        log.info("setting cpuset to CPUs %s", res.cpuset_cpus)
        write(cgroup / "cpuset.cpus", res.cpuset_cpus, driver)
    if res.cpuset_mems is not None:
        log.info("setting cpuset to memory nodes %s", res.cpuset_mems)
        write(cgroup / "cpuset.mems", res.cpuset_mems, driver)
    if res.pids_limit is not None:
        log.info("setting pids limit %d", res.pids_limit)
        write(cgroup / "pids.max", res.pids_limit, driver)
    if res.blkio_weight is not None:
        log.info("setting io weight %d (--blkio-weight %d)", io_weight(res.blkio_weight), res.blkio_weight)
        write(cgroup / "io.weight", f"default {io_weight(res.blkio_weight)}", driver)
    for d in res.device_limits:
        log.info("setting io limit %d:%d %s=%d", d.major, d.minor, d.what, d.rate)
        write(cgroup / "io.max", f"{d.major}:{d.minor} {d.what}={d.rate}", driver)
    for _, key, value in res.extra:
        log.info("setting %s to %s", key, value)
        write(cgroup / key, value, driver)


def wait_until_empty(cgroup: Path, deadline: float, driver: str) -> None:
    """Wait for ``populated 0`` in cgroup.events: every process of the subtree has exited."""
    while True:
        try:
            if not read_keyed(cgroup / "cgroup.events").get("populated", 0):
                return
        except FileNotFoundError:
            return
        if time.monotonic() > deadline:
            raise DriverError(
                f"{driver}: {label(cgroup)} still has processes after SIGKILL; try `pish gc` later"
            )
        time.sleep(0.01)
