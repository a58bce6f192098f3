"""systemd: a container's limits through systemd, as a transient scope unit (what podman and
``runc --systemd-cgroup`` do).

On a host whose PID 1 is systemd, systemd owns the cgroup tree: it makes a cgroup for every unit, writes
their limits, and removes what it does not know about when it sees fit. A runtime that makes cgroups on its
own (``cgroupv2``) works beside it, but the tree is then shared by two owners. This driver asks systemd
instead, over D-Bus (``systemd_dbus.py``), for one *scope* per container. A scope is the unit for processes
someone else started: we start the container's first process, then hand it to systemd with
``StartTransientUnit("pish-<id>.scope", ..., PIDs=[pid])`` and the limits as unit properties.

How the scope maps onto the cgroup tree::

    pish.slice                                   every container's slice is in it
    pish.slice/pish-<id>.slice                   the container's slice, made with its scope
    pish.slice/pish-<id>.slice/pish-<id>.scope   the container's cgroup; systemd writes its limits:
        MemoryMax=50331648                           memory.max
        CPUQuotaPerSecUSec=500000                    cpu.max "50000 100000" (CPUQuotaPeriodUSec=100ms)
        TasksMax=20                                  pids.max
        AllowedCPUs=<bitmask>                        cpuset.cpus  ...

systemd tells where the cgroup is (the scope's ``ControlGroup`` property, joined to /sys/fs/cgroup). The
scope is made with ``Delegate=yes``: systemd leaves what is *below* it to us, so a container may make
cgroups of its own. What systemd has no property for (``--limit io.latency=...``, or ``AllowedCPUs`` on a
systemd older than 244) pish writes into the scope's files itself, as runc does.

Why a slice per container: when a scope's last process exits, systemd stops the scope and removes its
cgroup at once, often before pish has reaped the process, and with it ``memory.events``, where the kernel
counts OOM kills (the race that makes cri-o and containerd miss OOM kills under systemd). The kernel also
counts them in every ancestor's ``memory.events``; the container's own slice stays until pish releases
it, so the count is read there once the scope is gone.

The rest of the life of a scope:

- A user's ``systemctl stop pish-<id>.scope`` stops the container (SIGTERM, then SIGKILL).
- ``release`` (``pish rm``, ``pish gc``): ``KillUnit`` SIGKILL on the scope, ``StopUnit`` on the slice (and
  so on the scope in it) and wait for the job, ``ResetFailedUnit``; if the cgroup is still there (systemd
  could not be reached), ``cgroup.kill`` and rmdir.
- ``pish.slice`` is made with the first container (an auxiliary unit of its ``StartTransientUnit``) with
  ``StopWhenUnneeded=yes``: systemd itself stops and forgets it once no container's slice needs it, so no
  lock is needed between two pish runs and nothing of pish's stays in ``systemctl list-units`` (podman leaves
  its ``machine.slice`` behind; that one is shared with systemd-machined, pish.slice is ours alone).

For rootless pish the manager is the user's own systemd (``systemctl --user``), and the slice is
``pish.slice`` below ``user@UID.service``. jeepney is imported only when the driver talks to systemd.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pish_core import names, paths
from pish_core.drivers import Group, Limits, RunContext
from pish_core.errors import DriverError, SpecError
from pish_core.security.devices import rules_for
from pish_core.value import Value, value
from pish_drivers.limits import (
    CPU_PERIOD_US,
    cgroup_mounts,
    check_cpus,
    log,
    parse_cpu_list,
    read,
    write,
)
from pish_drivers.limits.cgroupv2 import (
    CGROUP_MOUNT,
    CgroupV2Group,
    allow_devices,
    cpu_weight,
    io_weight,
    kill_and_remove,
    needed_controllers,
)

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec, Resources
    from pish_drivers.limits.systemd_dbus import Manager, Property

NAME = "systemd"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: systemd's "no limit" for a uint64 property (MemoryMax=infinity).
INFINITY = 2**64 - 1
#: The first systemd version that takes each property we set only where it can (older ones refuse the
#: whole unit for a property they do not know). Where a limit has a cgroup file, pish writes that instead.
SINCE = {"CollectMode": 236, "MemoryMin": 240, "CPUQuotaPeriodUSec": 242, "AllowedCPUs": 244,
         "AllowedMemoryNodes": 244, "OOMPolicy": 253}


def booted() -> bool:
    """True when systemd is PID 1: ``sd_booted()``'s test, the directory systemd makes at start."""
    return os.path.isdir("/run/systemd/system")


def unified() -> bool:
    """True when /sys/fs/cgroup is a cgroup2 hierarchy (no v1 hierarchies beside it)."""
    return any(mount == CGROUP_ROOT and fstype == "cgroup2" for mount, fstype, _ in cgroup_mounts())


# -- the unit's properties --------------------------------------------------------------------------


@value
class Setting(Value):
    """One limit: the unit property systemd sets it with, and the cgroup file it ends up in (which pish
    writes itself where this systemd lacks the property)."""

    prop: str
    signature: str
    value: Any
    file: str | None = None
    text: str = ""


def bitmask(cpu_list: str) -> bytes:
    """``0-2,5`` -> the bytes of AllowedCPUs: bit N of byte N // 8 is CPU N (systemd's CPU_SET order)."""
    cpus = parse_cpu_list(cpu_list)
    mask = bytearray(max(cpus, default=-1) // 8 + 1)
    for cpu in cpus:
        mask[cpu // 8] |= 1 << cpu % 8
    return bytes(mask)


def device_path(major: int, minor: int) -> str | None:
    """A block device's node in /dev, named as /sys/dev/block knows it (IO*Max properties take a path)."""
    try:
        node = "/dev/" + os.path.basename(os.readlink(f"/sys/dev/block/{major}:{minor}"))
        return node if os.stat(node).st_rdev == os.makedev(major, minor) else None
    except OSError:
        return None


def _amount(text: str) -> int | None:
    """A cgroup file's number, ``max`` as INFINITY; None for anything else (written as it is)."""
    if text == "max":
        return INFINITY
    return int(text) if text.isdigit() else None


#: ``--limit`` keys systemd has a property for (a value it would overwrite if written behind its back).
EXTRA_PROPERTIES = {"memory.max": "MemoryMax", "memory.high": "MemoryHigh", "memory.low": "MemoryLow",
                    "memory.min": "MemoryMin", "memory.swap.max": "MemorySwapMax", "pids.max": "TasksMax",
                    "cpu.weight": "CPUWeight", "io.weight": "IOWeight"}


def settings(res: Resources) -> list[Setting]:
    """The limits of ``res`` as unit properties, each with its cgroup file."""
    out: list[Setting] = []
    if res.memory is not None:
        out.append(Setting("MemoryMax", "t", res.memory, "memory.max", str(res.memory)))
    if res.memory_swap is not None:
        swap = INFINITY if res.memory_swap == -1 or res.memory is None else res.memory_swap - res.memory
        text = "max" if swap == INFINITY else str(swap)
        out.append(Setting("MemorySwapMax", "t", swap, "memory.swap.max", text))
    if res.memory_reservation is not None:
        low = res.memory_reservation
        out.append(Setting("MemoryLow", "t", low, "memory.low", str(low)))
    if res.cpus is not None:
        quota = int(res.cpus * CPU_PERIOD_US)  # per period as cgroupv2 writes it; systemd wants it per second
        out.append(Setting("CPUQuotaPerSecUSec", "t", quota * 1_000_000 // CPU_PERIOD_US, "cpu.max",
                           f"{quota} {CPU_PERIOD_US}"))
        out.append(Setting("CPUQuotaPeriodUSec", "t", CPU_PERIOD_US))  # also the default where it lacks it
    if res.cpu_shares is not None:
        weight = cpu_weight(res.cpu_shares)
        out.append(Setting("CPUWeight", "t", weight, "cpu.weight", str(weight)))
    if res.cpuset_cpus is not None:
        out.append(Setting("AllowedCPUs", "ay", bitmask(res.cpuset_cpus), "cpuset.cpus", res.cpuset_cpus))
    if res.cpuset_mems is not None:
        mems = res.cpuset_mems
        out.append(Setting("AllowedMemoryNodes", "ay", bitmask(mems), "cpuset.mems", mems))
    # No --pids-limit is no limit, as with cgroupv2: not systemd's DefaultTasksMax (15% of pid_max).
    pids = INFINITY if res.pids_limit is None else res.pids_limit
    out.append(Setting("TasksMax", "t", pids, "pids.max", "max" if res.pids_limit is None else str(pids)))
    if res.blkio_weight is not None:
        weight = io_weight(res.blkio_weight)
        out.append(Setting("IOWeight", "t", weight, "io.weight", f"default {weight}"))
    rates: dict[str, list[tuple[str, int]]] = {}
    for d in res.device_limits:
        prop = {"rbps": "IOReadBandwidthMax", "wbps": "IOWriteBandwidthMax",
                "riops": "IOReadIOPSMax", "wiops": "IOWriteIOPSMax"}[d.what]
        node = device_path(d.major, d.minor)
        if node is None:  # no node to name it by: the file then, which takes the numbers
            out.append(Setting("", "", None, "io.max", f"{d.major}:{d.minor} {d.what}={d.rate}"))
        else:
            rates.setdefault(prop, []).append((node, d.rate))
    out.extend(Setting(prop, "a(st)", pairs) for prop, pairs in rates.items())
    for _, key, given in res.extra:
        prop = EXTRA_PROPERTIES.get(key, "")
        amount = _amount(given.removeprefix("default ") if key == "io.weight" else given)
        out.append(Setting(prop if amount is not None else "", "t", amount, key, given))
    return out


def unit_properties(spec: ContainerSpec, pid: int, version: int,
                    slice_unit: str = names.systemd_slice()) -> tuple[list[Property], list[tuple[str, str]]]:
    """The properties of the container's scope for systemd ``version``, and the (file, value) pairs pish
    writes itself: what has no property, or none this systemd knows."""
    props: list[Property] = [
        ("Description", ("s", f"pish container {spec.name}")),
        ("Slice", ("s", slice_unit)),
        ("PIDs", ("au", [pid])),
        ("Delegate", ("b", True)),  # the tree below the scope is the container's
        ("DefaultDependencies", ("b", False)),  # no ordering against shutdown.target & co: as runc
        ("CollectMode", ("s", "inactive-or-failed")),  # forgotten once stopped, even if it failed
        ("OOMPolicy", ("s", "continue")),  # an OOM kill in the container is not a reason to stop it all
    ]
    writes: list[tuple[str, str]] = []
    for s in settings(spec.resources):
        if s.prop and version >= SINCE.get(s.prop, 0):
            props.append((s.prop, (s.signature, s.value)))
        elif s.file:
            writes.append((s.file, s.text))
    return [p for p in props if version >= SINCE.get(p[0], 0)], writes


def slice_properties() -> list[Property]:
    """pish.slice's: systemd stops (and forgets) it by itself once no container's slice needs it."""
    return [("Description", ("s", "pish containers")), ("StopWhenUnneeded", ("b", True))]


def summary(props: list[Property]) -> str:
    """The limits among ``props`` as ``MemoryMax=50331648 TasksMax=20`` for the log."""
    skip = {"Description", "Slice", "PIDs", "Delegate", "DefaultDependencies", "CollectMode", "OOMPolicy"}
    return " ".join(f"{name}={_shown(value)}" for name, (_, value) in props if name not in skip)


def _shown(value: Any) -> str:
    if isinstance(value, bytes):  # a bitmask: the CPUs or memory nodes, as a list
        return ",".join(str(bit) for bit in range(len(value) * 8) if value[bit // 8] >> bit % 8 & 1)
    return "infinity" if value == INFINITY else str(value)


#: systemd's unit name characters (unit_name_is_valid): letters, digits and ``:-_.\``, 255 at most.
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\-]{1,255}")


def scope_and_slice(spec: ContainerSpec, user: bool) -> tuple[str, str]:
    """The container's scope and the slice it goes in: ``pish-<id>.scope`` in ``pish-<id>.slice``, or what
    an OCI config's cgroupsPath ``slice:prefix:name`` says, read as runc's --systemd-cgroup reads it
    (``prefix-name.scope``; no slice: system.slice, or user.slice for a user's systemd)."""
    if not spec.cgroups_path:
        return names.systemd_scope(spec.id), names.systemd_container_slice(spec.id)
    if spec.cgroups_path.count(":") != 2:
        raise SpecError(f"{NAME}: cgroupsPath {spec.cgroups_path!r}: with systemd it is slice:prefix:name")
    parent, prefix, name = spec.cgroups_path.split(":")
    scope = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    slice_unit = parent or ("user.slice" if user else "system.slice")
    if name.endswith(".slice"):
        raise SpecError(f"{NAME}: cgroupsPath {spec.cgroups_path!r}: a slice as the container's unit is not "
                        "supported, only a scope")
    for unit, suffix in ((scope, ".scope"), (slice_unit, ".slice")):
        if not _UNIT_NAME.fullmatch(unit) or not unit.endswith(suffix):
            raise SpecError(f"{NAME}: cgroupsPath {spec.cgroups_path!r}: {unit!r} is not a {suffix[1:]} name")
    return scope, slice_unit


def slice_path(slice_unit: str) -> str:
    """Where systemd puts a slice's cgroup: each ``-`` is a level, so ``a-b.slice`` is
    ``a.slice/a-b.slice`` and the root slice ``-.slice`` is the root."""
    if slice_unit == "-.slice":
        return ""
    parts = slice_unit.removesuffix(".slice").split("-")
    return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


# -- the group --------------------------------------------------------------------------------------


def _oom_kills(memory_events: str) -> int:
    for line in memory_events.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


class SystemdGroup(CgroupV2Group):
    def __init__(self, cgroup: Path, own_slice: bool, mounts: tuple[Any, ...] = ()) -> None:
        super().__init__(cgroup, mounts)
        self.own_slice = own_slice

    def oom_killed(self) -> bool:
        """The scope's OOM kill count, or once systemd removed the scope, its own slice's: the kernel
        counts a kill in every ancestor too (the container's slice has nothing else in it)."""
        for cgroup in (self.cgroup, self.cgroup.parent) if self.own_slice else (self.cgroup,):
            try:
                return _oom_kills(read(cgroup / "memory.events")) > 0
            except OSError:
                continue
        return False


# -- the driver -------------------------------------------------------------------------------------


class SystemdLimits(Limits):
    name = NAME
    description = "systemd: a transient scope per container (pish.slice), made over D-Bus, as podman does"
    unified = True
    device_allowlist = True  # pish's BPF device filter on the scope, as cgroupv2 attaches it
    known_options: ClassVar[Mapping[str, str]] = {}

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        self.user = paths.rootless()  # rootless pish asks the user's own systemd

    @classmethod
    def check(cls) -> str | None:
        if not booted():
            return "systemd is not PID 1 here (no /run/systemd/system)"
        if not unified():
            return f"{CGROUP_ROOT} is not a cgroup2 hierarchy alone (a cgroup v1 or hybrid host)"
        try:
            with _connect(paths.rootless()) as manager:
                manager.version()
        except DriverError as exc:
            return str(exc).removeprefix("systemd: ")
        return None

    def validate(self, spec: ContainerSpec) -> None:
        scope_and_slice(spec, self.user)
        res = spec.resources
        base = _manager_cgroup(self.user)
        available = read(base / "cgroup.controllers").split()
        for controller in needed_controllers(res):
            if controller not in available:
                where = "delegated to your systemd (user@.service)" if self.user else "available on this host"
                raise SpecError(f"{NAME}: controller {controller} is not {where}")
        sample = _sample_cgroup(base)
        for controller, key, _ in res.extra:
            if sample is not None and controller in read(sample / "cgroup.controllers").split():
                if not (sample / key).is_file():
                    raise SpecError(f"{NAME}: {controller} has no setting {key} (see the files in {sample})")
                if not (sample / key).stat().st_mode & 0o200:
                    raise SpecError(f"{NAME}: {key} is read-only")
        if res.memory_swap not in (None, -1) and not any(CGROUP_ROOT.glob("*/memory.swap.max")):
            raise SpecError(f"{NAME}: --memory-swap needs swap accounting, which this kernel does not do "
                            "(no memory.swap.max)")
        if res.cpuset_cpus is not None or res.cpus is not None:
            check_cpus(NAME, res.cpus, res.cpuset_cpus, read(CGROUP_ROOT / "cpuset.cpus.effective"))
        if res.cpuset_mems is not None:
            # systemd only logs a memory node it cannot set: refuse it here, or the limit would silently go
            try:
                wanted = parse_cpu_list(res.cpuset_mems)
                host = parse_cpu_list(read(CGROUP_ROOT / "cpuset.mems.effective"))
            except ValueError:
                raise SpecError(f"{NAME}: invalid --cpuset-mems {res.cpuset_mems!r}") from None
            if not wanted or not wanted <= host:
                raise SpecError(f"{NAME}: --cpuset-mems {res.cpuset_mems} is outside this host's memory "
                                f"nodes ({read(CGROUP_ROOT / 'cpuset.mems.effective')})")

    @contextlib.contextmanager
    def apply(self, ctx: RunContext, pid: int) -> Iterator[Group]:
        unit, slice_unit = scope_and_slice(ctx.spec, self.user)
        expected = _manager_cgroup(self.user) / slice_path(slice_unit) / unit
        bus = "user" if self.user else "system"
        # An OCI config's cgroupsPath names a slice of the engine's; else the container's slice is ours
        mine = {"given": True} if ctx.spec.cgroups_path else {"slice": slice_unit}
        # Journal first: if we die half-way, `pish gc` finds the units' names and stops them.
        with ctx.journal.held("limits", NAME, "scope", self.release, unit=unit, bus=bus,
                              path=str(expected), **mine) as record:
            with _connect(self.user) as manager:
                props, writes = unit_properties(ctx.spec, pid, manager.version(), slice_unit)
                where = slice_unit if ctx.spec.cgroups_path else "its own slice"
                log.info("creating scope %s in %s%s", unit, where,
                         f": {limits}" if (limits := summary(props)) else "")
                own_slice = [("Description", ("s", f"pish container {ctx.spec.name}"))]
                _start_scope(manager, unit, props, None if ctx.spec.cgroups_path else own_slice)
                cgroup = CGROUP_ROOT / str(manager.unit_property(unit, "Scope", "ControlGroup")).lstrip("/")
            if cgroup != expected:
                ctx.journal.update(record, path=str(cgroup))
            for key, value in writes:
                log.info("setting %s to %s (no unit property for it in this systemd)", key, value)
                write(cgroup / key, value, NAME)
            if not self.user:  # rootless: no BPF for us; the kernel refuses device nodes in a userns anyway
                # The child is in the scope already but holds before its init makes /dev: no device
                # was opened yet. systemd attaches no device program of its own to a scope without
                # DevicePolicy=/DeviceAllow=, and would attach it beside ours (BPF_F_ALLOW_MULTI) if it did.
                allow_devices(cgroup, rules_for(ctx.spec.security.privileged, ctx.spec.security.device_rules))
            mounts = (CGROUP_MOUNT,) if ctx.spec.cgroupns == "private" else ()
            yield SystemdGroup(cgroup, not ctx.spec.cgroups_path, mounts)

    def join(self, record: dict[str, Any], pid: int) -> None:
        write(_live_cgroup(record) / "cgroup.procs", pid, NAME)  # as runc's exec does: the scope's now

    def clone_into(self, record: dict[str, Any]) -> str | None:
        return str(_live_cgroup(record))  # the scope's cgroup, as join writes to

    def group(self, record: dict[str, Any]) -> Group:
        return SystemdGroup(_live_cgroup(record), "slice" in record)

    def oom_killed(self, record: dict[str, Any]) -> bool:
        # Once the command ended systemd may have removed the scope already: the group's own slice counts
        # the kill too (SystemdGroup.oom_killed), so no live scope is asked for here.
        cgroup = _owned_path(record, _owned_unit(record))
        return cgroup is not None and SystemdGroup(cgroup, "slice" in record).oom_killed()

    def release(self, record: dict[str, Any]) -> None:
        unit = _owned_unit(record)
        cgroup = _owned_path(record, unit)
        try:
            manager = _connect(record.get("bus") == "user")
        except DriverError as exc:
            if cgroup is None or not cgroup.is_dir():  # nothing of the scope is left that pish could remove
                raise
            log.warning("%s; removing %s without it", exc, unit)
        else:
            with manager:
                _stop(manager, unit, _owned_slice(record))
        top = cgroup.parent if cgroup is not None and "slice" in record else cgroup  # the container's slice
        if top is not None and top.is_dir():  # systemd could not be asked, or left it
            log.info("removing cgroup %s", top)
            kill_and_remove(top, NAME)


def _connect(user: bool) -> Manager:
    try:
        from pish_drivers.limits.systemd_dbus import Manager
    except ImportError:
        raise DriverError("systemd: the Python package jeepney is missing "
                          "(pip install jeepney, or apt install python3-jeepney)") from None
    return Manager(user)


def _start_scope(manager: Manager, unit: str, props: list[Property],
                 own_slice: list[Property] | None) -> None:
    """StartTransientUnit and wait for its job. With ``own_slice`` (its properties) the container's slice is
    made with it, and the first container's also makes pish.slice; once that exists, systemd refuses to
    make it again (UnitExists), and the two are made without it. (A slice from an OCI cgroupsPath is the
    engine's: systemd makes it as it makes any slice a unit names.)"""
    from pish_drivers.limits.systemd_dbus import UNIT_EXISTS, BusError

    slice_unit = dict(props)["Slice"][1]
    aux = [] if own_slice is None else [(slice_unit, own_slice)]
    try:
        job = manager.start_transient_unit(unit, props, [(names.systemd_slice(), slice_properties()), *aux]
                                           if aux else [])
    except BusError as exc:
        if exc.name != UNIT_EXISTS or not aux:
            raise
        job = manager.start_transient_unit(unit, props, aux)
    result = manager.wait_job(job)
    if result != "done":
        raise DriverError(f"{NAME}: systemd could not start {unit} ({result}); see `journalctl -u {unit}`")


def _stop(manager: Manager, unit: str, slice_unit: str | None) -> None:
    """SIGKILL what is left in the scope, stop the container's slice (and so the scope in it) or else the
    scope, wait for that, and forget them if they failed. A unit systemd does not know (NoSuchUnit) is
    gone already: systemd stops a scope by itself when its last process exits."""
    from pish_drivers.limits.systemd_dbus import NO_SUCH_UNIT, BusError

    try:
        manager.kill_unit(unit, signal.SIGKILL)
        log.info("removing scope %s", unit)
    except BusError as exc:  # NoSuchUnit: gone already; anything else: the stop below kills too
        (log.debug if exc.name == NO_SUCH_UNIT else log.warning)("%s", exc)
    top = slice_unit or unit
    try:
        job = manager.stop_unit(top)
    except BusError as exc:
        if exc.name != NO_SUCH_UNIT:
            raise
        return
    if slice_unit:
        log.info("removing slice %s", slice_unit)
    result = manager.wait_job(job)
    if result not in ("done", "canceled"):  # canceled: a stop of its own (the scope emptied) came first
        raise DriverError(f"{NAME}: systemd could not stop {top} ({result}); try `pish gc` later")
    for name in dict.fromkeys((unit, top)):
        with contextlib.suppress(BusError):  # NoSuchUnit: collected already
            manager.reset_failed_unit(name)


def _manager_cgroup(user: bool) -> Path:
    """The cgroup the manager's units are in: the root, or the user's ``user@UID.service``."""
    if not user:
        return CGROUP_ROOT
    uid = paths.host_uid()
    return CGROUP_ROOT / f"user.slice/user-{uid}.slice/user@{uid}.service"


def _sample_cgroup(base: Path) -> Path | None:
    """A cgroup beside where the scope will be, to see which files a controller gives: pish.slice, or a
    slice systemd always has."""
    for name in (names.systemd_slice(), "system.slice", "app.slice"):
        if (base / name / "cgroup.controllers").is_file():
            return base / name
    return None


def _owned_unit(record: dict[str, Any]) -> str:
    """The record's unit if it is a container's scope, so a damaged journal cannot make `pish gc` stop some
    other unit of the host: ``pish-<id>.scope``, or any scope where an OCI config named it (``given``)."""
    unit = str(record.get("unit"))
    cid = unit.removeprefix("pish-").removesuffix(".scope")
    if names.is_id(cid) and unit == names.systemd_scope(cid):
        return unit
    if record.get("given") and unit.endswith(".scope") and _UNIT_NAME.fullmatch(unit):
        return unit
    raise DriverError(f"{NAME}: refusing to stop {unit!r}: it is not a pish container scope")


def _owned_slice(record: dict[str, Any]) -> str | None:
    """The container's own slice of a record, ``pish-<id>.slice`` beside its ``pish-<id>.scope``."""
    if "slice" not in record:
        return None
    unit = _owned_unit(record)
    if record["slice"] != unit.removesuffix(".scope") + ".slice" or record.get("given"):
        raise DriverError(f"{NAME}: refusing to stop {record['slice']!r}: it is not a pish container slice")
    return str(record["slice"])


def _owned_path(record: dict[str, Any], unit: str) -> Path | None:
    """The record's cgroup if it is the unit's, below /sys/fs/cgroup (in its own slice in pish.slice,
    unless ``given``)."""
    if record.get("path") is None:
        return None
    cgroup = Path(str(record["path"]))
    slice_ok = cgroup.parent.name.endswith(".slice") if record.get("given") else \
        cgroup.parent.name == _owned_slice(record) and cgroup.parent.parent.name == names.systemd_slice()
    if cgroup.name != unit or not slice_ok or not cgroup.is_relative_to(CGROUP_ROOT) or ".." in cgroup.parts:
        raise DriverError(f"{NAME}: refusing to remove {cgroup}: it is not a pish container scope")
    return cgroup


def _live_cgroup(record: dict[str, Any]) -> Path:
    """The cgroup of a running container's scope (``pish exec``, ``pish-oci ps``)."""
    cgroup = _owned_path(record, _owned_unit(record))
    if cgroup is None or not cgroup.is_dir():
        raise DriverError(f"{NAME}: the container's scope {record.get('unit')} is gone")
    return cgroup

