"""ContainerSpec: everything a run needs, validated once, here, before anything is created.

Field names follow the OCI runtime spec where one exists (``process.args``, ``process.env``,
``process.cwd``, ``hostname``, ``root``, ``linux.resources``), so an OCI bundle maps onto it later.
The CLI turns strings into spec values with the ``parse_*`` helpers of ``flags.py``; Python callers build a
spec directly.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import asdict, field, replace
from typing import Any

from pish_core import names
from pish_core.errors import SpecError
from pish_core.security import capabilities as caps
from pish_core.security import masks
from pish_core.value import Value, value

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

@value
class DriverChoice(Value):
    """Which implementation fills a slot, and its options (validated by the driver itself)."""

    name: str
    options: Mapping[str, str] = field(default_factory=dict)


@value
class User(Value):
    """OCI's process.user: who the command runs as, resolved to numbers (``pish_core/user.py``)."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()

    def __post_init__(self) -> None:  # from JSON (``from_dict``) the list arrives as a list
        object.__setattr__(self, "additional_gids", tuple(self.additional_gids))


@value
class Rlimit(Value):
    """OCI's process.rlimits entry: ``RLIMIT_NOFILE`` and its soft and hard values."""

    type: str
    soft: int
    hard: int


@value
class Process(Value):
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    terminal: bool = False
    interactive: bool = False
    user: User | None = None  # None: root, as the init itself runs
    umask: int | None = None  # None: the init's own (0022)
    rlimits: tuple[Rlimit, ...] = ()
    oom_score_adj: int | None = None
    console_size: tuple[int, int] | None = None  # (height, width) of the terminal, OCI's consoleSize
    preserve_fds: int = 0  # fds 3 .. 3+N-1 the command inherits (runc's --preserve-fds, LISTEN_FDS)

    def __post_init__(self) -> None:  # from JSON (``from_dict``) the user arrives as a dict
        if isinstance(self.user, dict):
            object.__setattr__(self, "user", User(**self.user))
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "env", tuple(self.env))
        object.__setattr__(self, "rlimits", tuple(r if isinstance(r, Rlimit) else Rlimit(**r) for r in self.rlimits))
        if self.console_size is not None:
            object.__setattr__(self, "console_size", tuple(self.console_size))


@value
class DeviceLimit(Value):
    """One ``--device-read-bps /dev/sda:1mb`` (docker's spelling): a rate on one block device, found by its
    major:minor numbers when the flag is read. ``what`` is ``rbps``, ``wbps``, ``riops`` or ``wiops``, the
    keys of cgroup v2's io.max."""

    major: int
    minor: int
    what: str
    rate: int


@value
class Resources(Value):
    """linux.resources: None means "no limit". ``extra`` holds ``--limit controller.key=value``.

    Memory in bytes: ``memory`` is the hard limit (v2 memory.max), ``memory_swap`` docker's memory *plus*
    swap (-1: unlimited swap; v2 memory.swap.max gets the difference), ``memory_reservation`` the soft floor
    (docker's --memory-reservation, v2 memory.low). ``cpu_shares`` is docker's relative weight (2-262144,
    1024 the default; v2 cpu.weight), ``blkio_weight`` docker's 10-1000 (v2 io.weight)."""

    memory: int | None = None
    cpus: float | None = None
    cpuset_cpus: str | None = None
    pids_limit: int | None = None
    extra: tuple[tuple[str, str, str], ...] = ()
    memory_swap: int | None = None
    memory_reservation: int | None = None
    cpu_shares: int | None = None
    cpuset_mems: str | None = None
    blkio_weight: int | None = None
    device_limits: tuple[DeviceLimit, ...] = ()

    def __post_init__(self) -> None:  # from JSON (``from_dict``) lists arrive as lists, limits as dicts
        object.__setattr__(self, "extra", tuple(tuple(x) for x in self.extra))
        object.__setattr__(self, "device_limits", tuple(
            d if isinstance(d, DeviceLimit) else DeviceLimit(**d) for d in self.device_limits))
        if self.memory_swap is not None and self.memory_swap != -1:
            if self.memory is None:
                raise SpecError("--memory-swap needs --memory (it is memory plus swap)")
            if self.memory_swap < self.memory:
                raise SpecError("--memory-swap must be at least --memory (it is memory plus swap), or -1")
        if self.cpu_shares is not None and not 2 <= self.cpu_shares <= 262144:
            raise SpecError(f"invalid --cpu-shares {self.cpu_shares}: must be between 2 and 262144")
        if self.blkio_weight is not None and not 10 <= self.blkio_weight <= 1000:
            raise SpecError(f"invalid --blkio-weight {self.blkio_weight}: must be between 10 and 1000")
        for d in self.device_limits:
            if d.what not in ("rbps", "wbps", "riops", "wiops") or d.rate <= 0:
                raise SpecError(f"invalid device limit {d.what}={d.rate}")

    def empty(self) -> bool:
        return self == Resources()


@value
class Mount(Value):
    """An OCI-style mount: ``bind`` a host path, or a fresh ``tmpfs``, at ``destination`` in the container."""

    destination: str
    source: str = ""
    type: str = "bind"
    options: tuple[str, ...] = ()

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


@value
class PortMapping(Value):
    """``-p [IP:][HOSTPORT:]CPORT/PROTO``: traffic to the host's port goes to the container's.

    ``host_ip`` "" means every address of the host (docker's 0.0.0.0); ``host_port`` 0 means one pish
    picks from the ephemeral range when it publishes (the journal then holds the port it got).
    """

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def __str__(self) -> str:
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}:{self.container_port}/{self.protocol}"


@value
class NetworkSpec(Value):
    """Which network the container joins and with which address (None: the driver decides), the ports
    it publishes, the nameservers it is given (empty: the host's) and the other names it answers to on
    its network (``--network-alias``)."""

    network: str = "pish0"
    ip: ipaddress.IPv4Interface | None = None
    ports: tuple[PortMapping, ...] = ()
    dns: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # from JSON (``from_dict``) ports arrive as dicts, lists as lists
        ports = tuple(p if isinstance(p, PortMapping) else PortMapping(**p) for p in self.ports)
        object.__setattr__(self, "ports", ports)
        object.__setattr__(self, "dns", tuple(self.dns))
        object.__setattr__(self, "aliases", tuple(self.aliases))


@value
class Security(Value):
    """What the container's processes may do to the host (see ``pish_core/security/``). OCI's
    process.capabilities (one list: the bounding set, and permitted/effective for root), process.noNewPrivileges,
    linux.seccomp (docker's default profile, or none), linux.maskedPaths and linux.readonlyPaths. The defaults
    are docker's; ``privileged`` also lets the container use every device."""

    capabilities: tuple[str, ...] = caps.DEFAULT
    no_new_privileges: bool = True
    seccomp: bool = True
    masked_paths: tuple[str, ...] = masks.MASKED
    readonly_paths: tuple[str, ...] = masks.READONLY
    privileged: bool = False
    #: an OCI ``linux.seccomp`` object as JSON (a custom profile: ``--security-opt seccomp=FILE`` or an OCI
    #: bundle's); "" means docker's default profile when ``seccomp`` is on
    seccomp_profile: str = ""
    #: OCI's other four capability sets; None: docker's rule (permitted = effective = ``capabilities`` for
    #: root, nothing for another user; inheritable and ambient empty)
    effective: tuple[str, ...] | None = None
    permitted: tuple[str, ...] | None = None
    inheritable: tuple[str, ...] | None = None
    ambient: tuple[str, ...] | None = None
    #: the device allowlist in devices-cgroup syntax (``c 1:3 rwm``); None: ``security/devices.ALLOWLIST``
    device_rules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:  # from JSON (``from_dict``) the lists arrive as lists
        for key in ("capabilities", "masked_paths", "readonly_paths"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        for key in ("effective", "permitted", "inheritable", "ambient", "device_rules"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, tuple(getattr(self, key)))
        named = [*self.capabilities, *(c for k in ("effective", "permitted", "inheritable", "ambient")
                                        for c in getattr(self, k) or ())]
        unknown = [c for c in named if c not in caps.NUMBERS]
        if unknown:
            raise SpecError(f"unknown capability {unknown[0]!r}")
        for path in (*self.masked_paths, *self.readonly_paths):
            if not path.startswith("/"):
                raise SpecError(f"masked or read-only path {path!r} must be absolute")


@value
class IDMapping(Value):
    """One line of a user namespace's uid_map or gid_map: ``size`` ids from ``container_id`` in the
    container are ``host_id``... on the host."""

    container_id: int
    host_id: int
    size: int

    def __str__(self) -> str:
        return f"{self.container_id}:{self.host_id}:{self.size}"


@value
class UserNamespace(Value):
    """linux.uidMappings and linux.gidMappings. ``mode``: ``host`` (no user namespace: the host's users,
    docker's default), ``auto`` (a range pish owns in /etc/subuid), ``map`` (``--userns C:H:N``), or
    ``rootless`` (pish itself runs in the user namespace: see ``pish_core/userns.py``)."""

    mode: str = "host"
    uid_mappings: tuple[IDMapping, ...] = ()
    gid_mappings: tuple[IDMapping, ...] = ()

    def __post_init__(self) -> None:
        for key in ("uid_mappings", "gid_mappings"):
            maps = tuple(m if isinstance(m, IDMapping) else IDMapping(**m) for m in getattr(self, key))
            object.__setattr__(self, key, maps)
        if self.mode not in ("host", "auto", "map", "rootless"):
            raise SpecError(f"invalid user namespace mode {self.mode!r}")
        if (self.mode == "host") != (not self.uid_mappings) or bool(self.uid_mappings) != bool(self.gid_mappings):
            raise SpecError("a user namespace needs uid and gid mappings, and only a user namespace has them")

    @property
    def private(self) -> bool:
        """True when the container gets a user namespace the isolation driver must create."""
        return self.mode in ("auto", "map")


@value
class Namespace(Value):
    """One of OCI's linux.namespaces: a ``type`` (pid, network, mount, ipc, uts, user, cgroup) to create,
    or, with ``path``, to join (podman hands a ready network namespace as ``/run/netns/...``)."""

    type: str
    path: str = ""


NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup")


@value
class Hook(Value):
    """An OCI hook: a program run with the container's state on its stdin."""

    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "env", tuple(self.env))


HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


@value
class Device(Value):
    """One of OCI's linux.devices: a node made in the container's /dev (and allowed)."""

    path: str
    type: str
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0


@value
class ContainerSpec(Value):
    id: str
    name: str
    image: str
    process: Process
    hostname: str
    storage: DriverChoice = DriverChoice("overlay")
    limits: DriverChoice = DriverChoice("cgroupv1")
    net: DriverChoice = DriverChoice("none")
    isolation: DriverChoice = DriverChoice("unshare")
    resources: Resources = Resources()
    network: NetworkSpec = NetworkSpec()
    mounts: tuple[Mount, ...] = ()
    stop_timeout: float = 10.0
    image_id: str = ""  # the store's image (hex sha256 of its config); "" for a directory used in place
    readonly_rootfs: bool = False  # OCI root.readonly: --read-only
    security: Security = Security()
    userns: UserNamespace = UserNamespace()
    #: linux.namespaces "cgroup": ``private`` gives the container a cgroup namespace rooted at its own cgroup
    #: (docker's default on cgroup v2), ``host`` shows it the host's tree (docker's default on v1).
    cgroupns: str = "host"
    # -- what the OCI face (``pish-oci``, an engine's config.json) fills; the docker face leaves the defaults
    #: linux.namespaces; empty: the isolation driver's own set (mount, uts, ipc, pid, net; user with --userns)
    namespaces: tuple[Namespace, ...] = ()
    #: True: the spec is an OCI config.json's (``pish_core/oci/specconv.py``): ``mounts`` is the container's
    #: whole mount table, /proc, /dev and /sys included (the init mounts nothing of its own), process.env
    #: the whole environment, and the hostname may be empty (the uts namespace keeps the host's)
    from_oci_config: bool = False
    sysctl: tuple[tuple[str, str], ...] = ()
    hooks: tuple[tuple[str, Hook], ...] = ()  # (kind, hook) in the order given
    annotations: tuple[tuple[str, str], ...] = ()
    cgroups_path: str = ""  # linux.cgroupsPath: where the limits driver puts the container ("": its own)
    domainname: str = ""
    devices: tuple[Device, ...] = ()
    rootfs_propagation: str = ""  # linux.rootfsPropagation ("": rslave, as runc)
    bundle: str = ""  # the OCI bundle directory (hooks get it in the state on their stdin)
    #: runc's --no-pivot: move the root onto / and chroot instead of pivot_root (a root on a ramdisk, where
    #: pivot_root fails); weaker: a process with CAP_SYS_CHROOT can leave a chroot
    no_pivot: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "namespaces", tuple(
            n if isinstance(n, Namespace) else Namespace(**n) for n in self.namespaces))
        object.__setattr__(self, "hooks", tuple(
            (k, h if isinstance(h, Hook) else Hook(**h)) for k, h in self.hooks))
        object.__setattr__(self, "devices", tuple(d if isinstance(d, Device) else Device(**d) for d in self.devices))
        object.__setattr__(self, "sysctl", tuple(tuple(x) for x in self.sysctl))
        object.__setattr__(self, "annotations", tuple(tuple(x) for x in self.annotations))
        for ns in self.namespaces:
            if ns.type not in NAMESPACE_TYPES:
                raise SpecError(f"unknown namespace type {ns.type!r}")
        for kind, _ in self.hooks:
            if kind not in HOOK_KINDS:
                raise SpecError(f"unknown hook kind {kind!r}")
        if self.cgroupns not in ("private", "host"):
            raise SpecError(f"invalid --cgroupns {self.cgroupns!r}: use private or host")
        names.check_name(self.name)
        if self.hostname or not self.from_oci_config:  # an OCI config may leave the hostname out
            names.check_hostname(self.hostname)
        if not names.is_id(self.id):
            raise SpecError(f"invalid container id {self.id!r}")
        if not self.process.args:
            raise SpecError("no command given and the image has none")
        if not self.process.cwd.startswith("/"):
            raise SpecError(f"working directory {self.process.cwd!r} must be absolute")
        for kind in ("storage", "limits", "net", "isolation"):
            names.check_name(getattr(self, kind).name, f"{kind} driver name")
        names.check_ifname(self.network.network, "network name")

    def with_changes(self, **changes: object) -> ContainerSpec:
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, kept in the state record (``pish inspect`` shows it, ``pish exec`` reads it)."""
        data = asdict(self)
        data["network"].update(ip=str(self.network.ip) if self.network.ip else None)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContainerSpec:
        d = dict(data)
        proc = dict(d.pop("process"))
        res = dict(d.pop("resources"))
        net = dict(d.pop("network"))
        address = net.pop("ip")
        net.update(ip=ipaddress.IPv4Interface(address) if address else None)
        drivers = {k: DriverChoice(d[k]["name"], d[k]["options"]) for k in ("storage", "limits", "net", "isolation")}
        d.update(drivers)
        d["mounts"] = tuple(Mount(m["destination"], m["source"], m["type"], tuple(m["options"]))
                            for m in d.get("mounts", ()))
        d["hooks"] = tuple((k, Hook(**h)) for k, h in d.get("hooks", ()))
        d["security"] = Security(**d.get("security", {}))
        d["userns"] = UserNamespace(**d.get("userns", {}))
        return cls(process=Process(**proc), resources=Resources(**res), network=NetworkSpec(**net), **d)


def container_env(spec: ContainerSpec) -> dict[str, str]:
    """The environment the command starts with: a clean one, as docker gives, plus ``-e``. An OCI config's
    process.env is the whole environment (with HOME added when missing, as runc adds it)."""
    if spec.from_oci_config:
        user = spec.process.user
        env = {"HOME": "/root" if user is None or user.uid == 0 else "/"}
    else:
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": spec.hostname, "HOME": "/root"}
    if spec.process.terminal and not spec.from_oci_config:
        env["TERM"] = "xterm"
    for item in spec.process.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env
