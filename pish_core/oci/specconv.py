"""specconv: an OCI bundle's config.json, converted once into pish's ContainerSpec (as runc's specconv).

Everything the runtime-spec defines for Linux is either mapped onto a ContainerSpec field or refused with
one line naming the field (``config.json: linux.intelRdt is not supported``), so a config never half
works. What the core does with each field is in the field's comment in ``pish_core/spec.py``.

Drivers reach the OCI face through annotations, as crun's ``run.oci.handler`` does: ``org.pish.limits``
and ``org.pish.isolation`` name the driver, ``org.pish.<kind>.opt.<key>`` give its options. Storage and
network drivers are not used here: the engine mounts the rootfs and hands a network namespace.
"""
from __future__ import annotations

import hashlib
import json
import resource
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pish_core.errors import SpecError
from pish_core.security import capabilities, devices
from pish_core.spec import (
    HOOK_KINDS,
    NAMESPACE_TYPES,
    ContainerSpec,
    Device,
    DeviceLimit,
    DriverChoice,
    Hook,
    IDMapping,
    Mount,
    Namespace,
    Process,
    Resources,
    Rlimit,
    Security,
    User,
    UserNamespace,
)

ANNOTATION_PREFIX = "org.pish."
#: sysctls that belong to a namespace (runc's list): anything else would change the host
NAMESPACED_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                      "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced", "kernel.domainname",
                      "kernel.hostname")
_PROPAGATIONS = ("", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable")


def internal_id(oci_id: str) -> str:
    """pish's 64-hex id for an engine's container id: names pish's own host paths (its state directory)."""
    return hashlib.sha256(oci_id.encode()).hexdigest()


def load(bundle: Path) -> dict[str, Any]:
    path = bundle / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"cannot read {path}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} is not a JSON object")
    return data


class _Fields:
    """One JSON object of the config, read field by field; what is left unread at the end is unknown."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise SpecError(f"config.json: {where} must be an object")
        self.data, self.where, self.seen = data, where, set[str]()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.seen.add(key)
        value = self.data.get(key, default)
        if value is not None and value is not default and not isinstance(value, kind):
            raise SpecError(f"config.json: {self.at(key)} has the wrong type")
        if isinstance(value, bool) and kind in (int, (int,)) and not isinstance(default, bool):
            raise SpecError(f"config.json: {self.at(key)} has the wrong type")
        return value

    def sub(self, key: str) -> _Fields | None:
        value = self.get(key, dict)
        return None if value is None else _Fields(value, self.at(key))

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def done(self, ignored: tuple[str, ...] = ()) -> None:
        unknown = sorted(set(self.data) - self.seen - set(ignored))
        if unknown:
            raise SpecError(f"config.json: {self.at(unknown[0])} is not supported")


def convert(config: Mapping[str, Any], bundle: Path, oci_id: str, *, systemd_cgroup: bool = False,
            rootless: bool = False, warn: Callable[[str], None] = lambda message: None) -> ContainerSpec:
    """The ContainerSpec for ``config`` (a bundle's config.json, already parsed)."""
    top = _Fields(dict(config), "")
    version = top.get("ociVersion", str)
    if not version or not version.startswith("1."):
        raise SpecError(f"config.json: ociVersion {version!r} is not a 1.x version")
    annotations = {str(k): str(v) for k, v in (top.get("annotations", dict) or {}).items()}
    root = top.sub("root")
    if root is None:
        raise SpecError("config.json: root is missing")
    root_path = Path(root.get("path", str) or "")
    if not str(root_path):
        raise SpecError("config.json: root.path is missing")
    rootfs = root_path if root_path.is_absolute() else bundle / root_path
    readonly = bool(root.get("readonly", bool, False))
    root.done()
    if not rootfs.is_dir():
        raise SpecError(f"rootfs {rootfs}: no such file or directory")
    proc_fields = top.sub("process")
    if proc_fields is None:
        raise SpecError("config.json: process is missing")
    process, security, no_new_privs = _process(proc_fields, warn)
    mounts = tuple(_mount(m, i) for i, m in enumerate(top.get("mounts", list) or []))
    hooks = _hooks(top.sub("hooks"))
    hostname = top.get("hostname", str) or ""
    domainname = top.get("domainname", str) or ""
    linux = top.sub("linux") or _Fields({}, "linux")
    top.done()

    namespaces = tuple(_namespace(n, i) for i, n in enumerate(linux.get("namespaces", list) or []))
    types = [n.type for n in namespaces]
    if len(set(types)) != len(types):
        raise SpecError("config.json: linux.namespaces names a type twice")
    if hostname and "uts" not in types:
        raise SpecError("config.json: hostname needs a uts namespace of the container's own")
    userns = _user_namespace(linux, namespaces)
    resources_fields = linux.sub("resources")
    limits_name = annotations.get("org.pish.limits") or _default_limits(systemd_cgroup, rootless)
    from pish_core.drivers import load_class

    limits_class: Any = load_class("limits", limits_name)
    resources, device_rules = _resources(resources_fields, limits_class.unified)
    devices_list = tuple(_device(d, i) for i, d in enumerate(linux.get("devices", list) or []))
    device_rules = (*device_rules, *(f"{d.type} {d.major}:{d.minor} rwm" for d in devices_list))
    cgroups_path = linux.get("cgroupsPath", str) or ""
    sysctl = tuple((str(k), str(v)) for k, v in (linux.get("sysctl", dict) or {}).items())
    for key, _ in sysctl:
        _check_sysctl(key, namespaces)
    seccomp = linux.get("seccomp", dict)
    masked = tuple(linux.get("maskedPaths", list) or ())
    readonly_paths = tuple(linux.get("readonlyPaths", list) or ())
    propagation = linux.get("rootfsPropagation", str) or ""
    if propagation not in _PROPAGATIONS:
        raise SpecError(f"config.json: linux.rootfsPropagation {propagation!r} is not a propagation")
    personality = linux.sub("personality")
    if personality is not None:
        domain = personality.get("domain", str)
        if domain not in ("LINUX", None):
            raise SpecError(f"config.json: linux.personality domain {domain!r} is not supported (LINUX is)")
        personality.get("flags", list)
        personality.done()
    if linux.get("mountLabel", str):
        warn("SELinux labels are not applied by pish (linux.mountLabel ignored)")
    linux.done(ignored=("uidMappings", "gidMappings"))

    security = Security(
        capabilities=security.capabilities, effective=security.effective, permitted=security.permitted,
        inheritable=security.inheritable, ambient=security.ambient, no_new_privileges=no_new_privs,
        seccomp=seccomp is not None, seccomp_profile=json.dumps(seccomp) if seccomp is not None else "",
        masked_paths=masked, readonly_paths=readonly_paths, device_rules=device_rules,
    )
    if security.seccomp_profile:
        from pish_core.security import profiles

        profiles.check_profile(security.seccomp_profile)
    isolation = annotations.get("org.pish.isolation") or "unshare"
    cgroup_ns = next((n for n in namespaces if n.type == "cgroup"), None)
    return ContainerSpec(
        id=internal_id(oci_id),
        name=oci_id,
        image=str(rootfs),
        process=process,
        hostname=hostname,
        storage=DriverChoice("none"),
        limits=DriverChoice(limits_name, _driver_options(annotations, "limits")),
        net=DriverChoice("none"),
        isolation=DriverChoice(isolation, _driver_options(annotations, "isolation")),
        resources=resources,
        mounts=mounts,
        readonly_rootfs=readonly,
        security=security,
        userns=userns,
        cgroupns="private" if cgroup_ns is not None and not cgroup_ns.path else "host",
        namespaces=namespaces,
        from_oci_config=True,
        sysctl=sysctl,
        hooks=hooks,
        annotations=tuple(annotations.items()),
        cgroups_path=_cgroups_path(cgroups_path, systemd_cgroup),
        domainname=domainname,
        devices=devices_list,
        rootfs_propagation=propagation,
        bundle=str(bundle),
    )


def _default_limits(systemd_cgroup: bool, rootless: bool) -> str:
    from pish_drivers.limits import auto

    if systemd_cgroup:
        return "systemd"
    if rootless:
        return "none"
    return "cgroupv2" if auto.unified() else "cgroupv1"


def _cgroups_path(path: str, systemd_cgroup: bool) -> str:
    """cgroupsPath as the limits driver takes it: a path below the hierarchy's root (cgroupfs), or
    ``slice:prefix:name`` (systemd, as runc's --systemd-cgroup reads it)."""
    if systemd_cgroup:
        if path and path.count(":") != 2:
            raise SpecError(f"config.json: linux.cgroupsPath {path!r}: with --systemd-cgroup it is slice:prefix:name")
        return path
    if ":" in path:
        raise SpecError(f"config.json: linux.cgroupsPath {path!r} is a systemd path: give --systemd-cgroup")
    parts = [p for p in path.split("/") if p]
    if ".." in parts or "." in parts:
        raise SpecError(f"config.json: linux.cgroupsPath {path!r} must not hold . or ..")
    return "/".join(parts)


def _driver_options(annotations: Mapping[str, str], kind: str) -> dict[str, str]:
    prefix = f"{ANNOTATION_PREFIX}{kind}.opt."
    return {k[len(prefix):]: v for k, v in annotations.items() if k.startswith(prefix)}


def _process(f: _Fields, warn: Callable[[str], None]) -> tuple[Process, Security, bool]:
    args = f.get("args", list) or []
    if not args or not all(isinstance(a, str) for a in args):
        raise SpecError("config.json: process.args must be a non-empty list of strings")
    env = f.get("env", list) or []
    if not all(isinstance(e, str) and "=" in e for e in env):
        raise SpecError("config.json: process.env must hold KEY=VALUE strings")
    cwd = f.get("cwd", str) or ""
    if not cwd.startswith("/"):
        raise SpecError(f"config.json: process.cwd {cwd!r} must be an absolute path")
    user, umask = _user(f.sub("user"))
    rlimits = tuple(_rlimit(r, i) for i, r in enumerate(f.get("rlimits", list) or []))
    caps = f.sub("capabilities")
    sets: dict[str, tuple[str, ...] | None] = {}
    for name in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        value = caps.get(name, list) if caps else None
        sets[name] = None if value is None else tuple(_cap(c, f"process.capabilities.{name}") for c in value)
    if caps:
        caps.done()
    no_new_privs = bool(f.get("noNewPrivileges", bool, False))
    oom = f.get("oomScoreAdj", int)
    if oom is not None and not -1000 <= oom <= 1000:
        raise SpecError("config.json: process.oomScoreAdj must be between -1000 and 1000")
    terminal = bool(f.get("terminal", bool, False))
    size = f.sub("consoleSize")
    console_size = None
    if size is not None:
        console_size = (int(size.get("height", int, 0)), int(size.get("width", int, 0)))
        size.done()
    for label in ("apparmorProfile", "selinuxLabel"):
        if f.get(label, str):
            warn(f"{label} is not applied by pish (process.{label} ignored)")
    for unsupported in ("ioPriority", "scheduler", "execCPUAffinity"):
        if f.get(unsupported, dict) is not None:
            raise SpecError(f"config.json: process.{unsupported} is not supported")
    f.done()
    process = Process(args=tuple(args), env=tuple(env), cwd=cwd, terminal=terminal, user=user, umask=umask,
                      rlimits=rlimits, oom_score_adj=oom, console_size=console_size)
    security = Security(capabilities=sets["bounding"] or (), effective=sets["effective"] or (),
                        permitted=sets["permitted"] or (), inheritable=sets["inheritable"] or (),
                        ambient=sets["ambient"] or (), seccomp=False, masked_paths=(), readonly_paths=())
    return process, security, no_new_privs


def _user(f: _Fields | None) -> tuple[User, int | None]:
    """process.user: who the program runs as, and its umask (None: the init's own)."""
    if f is None:
        return User(), None
    uid, gid = f.get("uid", int, 0), f.get("gid", int, 0)
    extra = f.get("additionalGids", list) or []
    umask = f.data.get("umask")
    f.seen.add("umask")
    if umask is not None and (not isinstance(umask, int) or isinstance(umask, bool) or not 0 <= umask <= 0o777):
        raise SpecError("config.json: process.user.umask must be a mode such as 18 (0022)")
    if f.get("username", str):
        raise SpecError("config.json: process.user.username is for Windows")
    f.done()
    if not all(isinstance(g, int) and g >= 0 for g in extra) or uid < 0 or gid < 0:
        raise SpecError("config.json: process.user ids must be numbers from 0")
    return User(uid=uid, gid=gid, additional_gids=tuple(extra)), umask


def _cap(name: Any, where: str) -> str:
    if not isinstance(name, str) or name not in capabilities.NUMBERS:
        raise SpecError(f"config.json: {where}: unknown capability {name!r}")
    return name


def _rlimit(data: Any, i: int) -> Rlimit:
    f = _Fields(data, f"process.rlimits[{i}]")
    kind, soft, hard = f.get("type", str), f.get("soft", int), f.get("hard", int)
    f.done()
    if not kind or not kind.startswith("RLIMIT_") or not hasattr(resource, kind):
        raise SpecError(f"config.json: process.rlimits[{i}]: unknown type {kind!r}")
    if soft is None or hard is None or soft > hard:
        raise SpecError(f"config.json: process.rlimits[{i}]: soft and hard must be given, soft <= hard")
    return Rlimit(kind, soft, hard)


def _mount(data: Any, i: int) -> Mount:
    f = _Fields(data, f"mounts[{i}]")
    destination = f.get("destination", str) or ""
    kind = f.get("type", str) or ""
    source = f.get("source", str) or ""
    options = tuple(f.get("options", list) or ())
    f.get("uidMappings", list)
    f.get("gidMappings", list)
    if f.data.get("uidMappings") or f.data.get("gidMappings"):
        raise SpecError(f"config.json: mounts[{i}]: id-mapped mounts are not supported")
    f.done()
    if not destination.startswith("/"):
        raise SpecError(f"config.json: mounts[{i}].destination {destination!r} must be an absolute path")
    if not all(isinstance(o, str) for o in options):
        raise SpecError(f"config.json: mounts[{i}].options must be strings")
    if kind in ("", "none") and ({"bind", "rbind"} & set(options)):
        kind = "bind"
    if kind == "bind" and not source:
        raise SpecError(f"config.json: mounts[{i}]: a bind mount needs a source")
    if kind == "bind" and not ({"bind", "rbind"} & set(options)):
        options = ("rbind", *options)  # runc: a bind mount without bind/rbind is recursive
    if kind in ("", "none"):
        raise SpecError(f"config.json: mounts[{i}] has no type")
    return Mount(destination=destination, source=source, type=kind, options=options)


def _hooks(f: _Fields | None) -> tuple[tuple[str, Hook], ...]:
    if f is None:
        return ()
    out = []
    for kind in HOOK_KINDS:
        for i, data in enumerate(f.get(kind, list) or []):
            h = _Fields(data, f"hooks.{kind}[{i}]")
            path = h.get("path", str) or ""
            args = h.get("args", list) or []
            env = h.get("env", list) or []
            timeout = h.get("timeout", int)
            h.done()
            if not path.startswith("/"):
                raise SpecError(f"config.json: hooks.{kind}[{i}].path must be an absolute path")
            if timeout is not None and timeout <= 0:
                raise SpecError(f"config.json: hooks.{kind}[{i}].timeout must be more than 0")
            out.append((kind, Hook(path, tuple(args), tuple(env), timeout)))
    f.done()
    return tuple(out)


def _namespace(data: Any, i: int) -> Namespace:
    f = _Fields(data, f"linux.namespaces[{i}]")
    kind, path = f.get("type", str) or "", f.get("path", str) or ""
    f.done()
    if kind not in NAMESPACE_TYPES:
        raise SpecError(f"config.json: linux.namespaces[{i}]: namespace type {kind!r} is not supported")
    if path and not path.startswith("/"):
        raise SpecError(f"config.json: linux.namespaces[{i}].path must be absolute")
    return Namespace(kind, path)


def _user_namespace(linux: _Fields, namespaces: tuple[Namespace, ...]) -> UserNamespace:
    uid_maps = [_id_mapping(m, f"linux.uidMappings[{i}]") for i, m in enumerate(linux.get("uidMappings", list) or [])]
    gid_maps = [_id_mapping(m, f"linux.gidMappings[{i}]") for i, m in enumerate(linux.get("gidMappings", list) or [])]
    user = next((n for n in namespaces if n.type == "user"), None)
    if user is None or user.path:
        if (uid_maps or gid_maps) and user is None:
            raise SpecError("config.json: linux.uidMappings need a user namespace in linux.namespaces")
        return UserNamespace()
    if not uid_maps or not gid_maps:
        raise SpecError("config.json: a new user namespace needs linux.uidMappings and linux.gidMappings")
    return UserNamespace("map", tuple(uid_maps), tuple(gid_maps))


def _id_mapping(data: Any, where: str) -> IDMapping:
    f = _Fields(data, where)
    inside, outside, size = f.get("containerID", int), f.get("hostID", int), f.get("size", int)
    f.done()
    if inside is None or outside is None or not size or size < 0:
        raise SpecError(f"config.json: {where} needs containerID, hostID and size")
    return IDMapping(inside, outside, size)


def _device(data: Any, i: int) -> Device:
    f = _Fields(data, f"linux.devices[{i}]")
    path, kind = f.get("path", str) or "", f.get("type", str) or ""
    major, minor = f.get("major", int), f.get("minor", int)
    mode = f.get("fileMode", int, 0o666)
    uid, gid = f.get("uid", int, 0), f.get("gid", int, 0)
    f.done()
    if not path.startswith("/dev/") or ".." in path.split("/"):
        raise SpecError(f"config.json: linux.devices[{i}].path {path!r} must be below /dev")
    if kind not in ("c", "b", "u", "p"):
        raise SpecError(f"config.json: linux.devices[{i}].type {kind!r} must be c, b, u or p")
    if kind != "p" and (major is None or minor is None):
        raise SpecError(f"config.json: linux.devices[{i}] needs major and minor")
    return Device(path, "c" if kind == "u" else kind, major or 0, minor or 0, mode, uid, gid)


def _resources(f: _Fields | None, unified: bool) -> tuple[Resources, tuple[str, ...]]:
    """linux.resources -> Resources and the device allowlist: the config's rules, then the default nodes'
    (runc appends its AllowedDevices after the config's rules, so a leading deny-all keeps them)."""
    rules: list[str] = []
    if f is None:
        return Resources(), devices.ALLOWLIST
    extra: list[tuple[str, str, str]] = []
    kw: dict[str, Any] = {}
    for i, d in enumerate(f.get("devices", list) or []):
        rules = _device_rule(d, i, rules)
    if (mem := f.sub("memory")) is not None:
        limit, reservation, swap = mem.get("limit", int), mem.get("reservation", int), mem.get("swap", int)
        if limit is not None and limit > 0:
            kw["memory"] = limit
        if reservation is not None and reservation > 0:
            kw["memory_reservation"] = reservation
        if swap is not None and swap != 0:
            kw["memory_swap"] = -1 if swap < 0 else swap
        swappiness = mem.get("swappiness", int)
        if swappiness is not None and not unified and 0 <= swappiness <= 100:
            extra.append(("memory", "memory.swappiness", str(swappiness)))
        if mem.get("disableOOMKiller", bool, False) and not unified:
            extra.append(("memory", "memory.oom_control", "1"))
        for deprecated in ("kernel", "kernelTCP"):  # the runtime-spec deprecates them; kernels ignore them
            mem.get(deprecated, int)
        mem.get("useHierarchy", bool)
        mem.get("checkBeforeUpdate", bool)
        mem.done()
    if (cpu := f.sub("cpu")) is not None:
        shares, quota, period = cpu.get("shares", int), cpu.get("quota", int), cpu.get("period", int)
        if shares:
            kw["cpu_shares"] = max(2, min(shares, 262144))
        if quota is not None and quota > 0:
            kw["cpus"] = quota / (period or 100_000)
        if cpus := cpu.get("cpus", str):
            kw["cpuset_cpus"] = cpus
        if mems := cpu.get("mems", str):
            kw["cpuset_mems"] = mems
        for rt in ("realtimeRuntime", "realtimePeriod"):
            if cpu.get(rt, int):
                raise SpecError(f"config.json: linux.resources.cpu.{rt} is not supported")
        if cpu.get("idle", int):
            raise SpecError("config.json: linux.resources.cpu.idle is not supported")
        cpu.get("burst", int)
        cpu.done()
    if (pids := f.sub("pids")) is not None:
        limit = pids.get("limit", int)
        if limit is not None and limit > 0:
            kw["pids_limit"] = limit
        pids.done()
    if (blkio := f.sub("blockIO")) is not None:
        if weight := blkio.get("weight", int):
            kw["blkio_weight"] = weight
        blkio.get("leafWeight", int)
        if blkio.get("weightDevice", list):
            raise SpecError("config.json: linux.resources.blockIO.weightDevice is not supported")
        limits: list[DeviceLimit] = []
        for key, what in (("throttleReadBpsDevice", "rbps"), ("throttleWriteBpsDevice", "wbps"),
                          ("throttleReadIOPSDevice", "riops"), ("throttleWriteIOPSDevice", "wiops")):
            for i, d in enumerate(blkio.get(key, list) or []):
                t = _Fields(d, f"linux.resources.blockIO.{key}[{i}]")
                major, minor, rate = t.get("major", int), t.get("minor", int), t.get("rate", int)
                t.done()
                if major is None or minor is None or not rate:
                    raise SpecError(f"config.json: linux.resources.blockIO.{key}[{i}] needs major, minor and rate")
                limits.append(DeviceLimit(major, minor, what, rate))
        kw["device_limits"] = tuple(limits)
        blkio.done()
    for i, h in enumerate(f.get("hugepageLimits", list) or []):
        t = _Fields(h, f"linux.resources.hugepageLimits[{i}]")
        size, limit = t.get("pageSize", str), t.get("limit", int)
        t.done()
        if not size or limit is None:
            raise SpecError(f"config.json: linux.resources.hugepageLimits[{i}] needs pageSize and limit")
        extra.append(("hugetlb", f"hugetlb.{size}.{'max' if unified else 'limit_in_bytes'}", str(limit)))
    for key, value in (f.get("unified", dict) or {}).items():
        if not unified:
            raise SpecError("config.json: linux.resources.unified needs a cgroup v2 limits driver")
        if "/" in key or key.startswith(".") or "." not in key:
            raise SpecError(f"config.json: linux.resources.unified key {key!r} is not a cgroup file")
        extra.append((key.split(".")[0], key, str(value)))
    network = f.get("network", dict)
    if network and (network.get("classID") or network.get("priorities")):
        raise SpecError("config.json: linux.resources.network is not supported")
    if f.get("rdma", dict):
        raise SpecError("config.json: linux.resources.rdma is not supported")
    f.done()
    return Resources(extra=tuple(extra), **kw), tuple(dict.fromkeys([*rules, *devices.ALLOWLIST]))


def _device_rule(data: Any, i: int, rules: list[str]) -> list[str]:
    f = _Fields(data, f"linux.resources.devices[{i}]")
    allow = f.get("allow", bool)
    kind = f.get("type", str) or "a"
    major, minor = f.get("major", int), f.get("minor", int)
    access = f.get("access", str) or "rwm"
    f.done()
    if allow is None:
        raise SpecError(f"config.json: linux.resources.devices[{i}].allow is missing")
    if kind not in ("a", "b", "c") or not set(access) <= set("rwm"):
        raise SpecError(f"config.json: linux.resources.devices[{i}]: type a/b/c and access of r, w, m")
    everything = kind == "a" and major is None and minor is None
    rule = "a" if everything else f"{kind} {'*' if major is None or major < 0 else major}:" \
                                  f"{'*' if minor is None or minor < 0 else minor} {access}"
    if allow:
        return [devices.ALLOW_ALL] if everything else [*rules, rule]
    if everything:
        return []  # deny everything: what comes after allows again
    if rule in rules:
        return [r for r in rules if r != rule]
    raise SpecError(f"config.json: linux.resources.devices[{i}]: a deny rule for one device is not supported "
                    "(deny all, then allow)")


def _check_sysctl(key: str, namespaces: tuple[Namespace, ...]) -> None:
    own = {n.type for n in namespaces}
    if not key.replace(".", "").replace("_", "").replace("-", "").isalnum() or ".." in key:
        raise SpecError(f"config.json: linux.sysctl {key!r} is not a sysctl name")
    if key in NAMESPACED_SYSCTLS or key.startswith("fs.mqueue."):
        if key.startswith(("kernel.domainname", "kernel.hostname")):
            ok = "uts" in own
        else:
            ok = "ipc" in own
    elif key.startswith("net."):
        ok = "network" in own
    else:
        ok = False
    if not ok:
        raise SpecError(f"config.json: linux.sysctl {key} is not in a namespace of the container's own: it would "
                        "change the host")
