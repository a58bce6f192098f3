"""ContainerSpec: everything a run needs, validated once, here, before anything is created.

Field names follow the OCI runtime spec where one exists (``process.args``, ``process.env``,
``process.cwd``, ``hostname``, ``root``, ``linux.resources``), so an OCI bundle maps onto it later.
The CLI turns strings into a spec with the ``parse_*`` helpers; Python callers build one directly.
"""
from __future__ import annotations

import ipaddress
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pish_core import names
from pish_core.errors import SpecError
from pish_core.security import capabilities as caps
from pish_core.security import masks

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_CPUSET_RE = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_LIMIT_KEY_RE = re.compile(r"([a-z_]+)\.([a-z0-9_.]+)")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class DriverChoice:
    """Which implementation fills a slot, and its options (validated by the driver itself)."""

    name: str
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class User:
    """OCI's process.user: who the command runs as, resolved to numbers (``pish_core/user.py``)."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()

    def __post_init__(self) -> None:  # from JSON (``from_dict``) the list arrives as a list
        object.__setattr__(self, "additional_gids", tuple(self.additional_gids))


@dataclass(frozen=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    terminal: bool = False
    interactive: bool = False
    user: User | None = None  # None: root, as the init itself runs

    def __post_init__(self) -> None:  # from JSON (``from_dict``) the user arrives as a dict
        if isinstance(self.user, dict):
            object.__setattr__(self, "user", User(**self.user))


@dataclass(frozen=True)
class Resources:
    """linux.resources: None means "no limit". ``extra`` holds ``--limit controller.key=value``."""

    memory: int | None = None
    cpus: float | None = None
    cpuset_cpus: str | None = None
    pids_limit: int | None = None
    extra: tuple[tuple[str, str, str], ...] = ()

    def empty(self) -> bool:
        return self == Resources()


@dataclass(frozen=True)
class Mount:
    """An OCI-style mount: ``bind`` a host path, or a fresh ``tmpfs``, at ``destination`` in the container."""

    destination: str
    source: str = ""
    type: str = "bind"
    options: tuple[str, ...] = ()

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


@dataclass(frozen=True)
class PortMapping:
    """``-p HOSTPORT:CPORT/PROTO``: traffic to the host's port goes to the container's."""

    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_port}:{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class NetworkSpec:
    """Which network the container joins and with which address (None: the driver decides), the ports
    it publishes and the nameservers it is given (empty: the host's)."""

    network: str = "pish0"
    ip: ipaddress.IPv4Interface | None = None
    ports: tuple[PortMapping, ...] = ()
    dns: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # from JSON (``from_dict``) ports arrive as dicts, lists as lists
        ports = tuple(p if isinstance(p, PortMapping) else PortMapping(**p) for p in self.ports)
        object.__setattr__(self, "ports", ports)
        object.__setattr__(self, "dns", tuple(self.dns))


@dataclass(frozen=True)
class Security:
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

    def __post_init__(self) -> None:  # from JSON (``from_dict``) the lists arrive as lists
        for key in ("capabilities", "masked_paths", "readonly_paths"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        unknown = [c for c in self.capabilities if c not in caps.NUMBERS]
        if unknown:
            raise SpecError(f"unknown capability {unknown[0]!r}")
        for path in (*self.masked_paths, *self.readonly_paths):
            if not path.startswith("/"):
                raise SpecError(f"masked or read-only path {path!r} must be absolute")


@dataclass(frozen=True)
class IDMapping:
    """One line of a user namespace's uid_map or gid_map: ``size`` ids from ``container_id`` in the
    container are ``host_id``... on the host."""

    container_id: int
    host_id: int
    size: int

    def __str__(self) -> str:
        return f"{self.container_id}:{self.host_id}:{self.size}"


@dataclass(frozen=True)
class UserNamespace:
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


@dataclass(frozen=True)
class ContainerSpec:
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

    def __post_init__(self) -> None:
        names.check_name(self.name)
        names.check_hostname(self.hostname)
        if not re.fullmatch(r"[0-9a-f]{64}", self.id):
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
        data["network"]["ip"] = str(self.network.ip) if self.network.ip else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContainerSpec:
        d = dict(data)
        proc = dict(d.pop("process"))
        for key in ("args", "env"):
            proc[key] = tuple(proc[key])
        res = dict(d.pop("resources"))
        res["extra"] = tuple(tuple(x) for x in res["extra"])
        net = dict(d.pop("network"))
        net["ip"] = ipaddress.IPv4Interface(net["ip"]) if net["ip"] else None
        drivers = {k: DriverChoice(d[k]["name"], d[k]["options"]) for k in ("storage", "limits", "net", "isolation")}
        d.update(drivers)
        d["mounts"] = tuple(Mount(m["destination"], m["source"], m["type"], tuple(m["options"]))
                            for m in d.get("mounts", ()))
        d["security"] = Security(**d.get("security", {}))
        d["userns"] = UserNamespace(**d.get("userns", {}))
        return cls(process=Process(**proc), resources=Resources(**res), network=NetworkSpec(**net), **d)


# -- parsing strings from the edge (CLI, options) ---------------------------------------------------


def parse_size(text: str, what: str = "size") -> int:
    """``64m``, ``1g``, ``512k``, ``1048576`` -> bytes, as docker's ``--memory`` reads them."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise SpecError(f"invalid {what} {text!r}: use a number with an optional unit b, k, m or g (e.g. 64m)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise SpecError(f"invalid {what} {text!r}: must be more than 0")
    return value


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"invalid --cpus {text!r}: use a number of CPUs such as 0.5") from None
    if not 0.01 <= value <= 1024:
        raise SpecError(f"invalid --cpus {text!r}: must be between 0.01 and 1024")
    return value


def parse_cpuset(text: str) -> str:
    if not _CPUSET_RE.fullmatch(text):
        raise SpecError(f"invalid --cpuset-cpus {text!r}: use a list such as 0-1 or 0,2")
    return text


def parse_positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SpecError(f"invalid {what} {text!r}: use a whole number") from None
    if value <= 0:
        raise SpecError(f"invalid {what} {text!r}: must be more than 0")
    return value


def parse_limit(text: str) -> tuple[str, str, str]:
    """``memory.swappiness=0`` -> ("memory", "memory.swappiness", "0"); the driver checks the key exists."""
    key, sep, value = text.partition("=")
    m = _LIMIT_KEY_RE.fullmatch(key)
    if not sep or not m or "\n" in value:
        raise SpecError(f"invalid --limit {text!r}: use controller.key=value, e.g. memory.swappiness=0")
    return m.group(1), key, value


def parse_ip(text: str) -> ipaddress.IPv4Interface:
    """An address in CIDR form, ``10.0.4.6/24``; a bare address is refused (which network would it be?)."""
    if "/" not in text:
        raise SpecError(f"invalid --ip {text!r}: use CIDR form, e.g. 10.0.4.6/24")
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise SpecError(f"invalid --ip {text!r}: not an IPv4 address in CIDR form") from None
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise SpecError(f"invalid --ip {text!r}: that is the network's own or broadcast address")
    return iface


def parse_publish(item: str) -> PortMapping:
    """``-p HOSTPORT:CPORT[/tcp|udp]``, as docker reads it (without docker's optional host address)."""
    ports, _, protocol = item.partition("/")
    host, sep, container = ports.partition(":")
    if not sep or protocol not in ("", "tcp", "udp") or not (host + container).isascii() \
            or not host.isdigit() or not container.isdigit():
        raise SpecError(f"invalid -p {item!r}: use HOSTPORT:CONTAINERPORT[/tcp|udp], e.g. 8080:80")
    mapping = PortMapping(int(host), int(container), protocol or "tcp")
    if not (0 < mapping.host_port < 65536 and 0 < mapping.container_port < 65536):
        raise SpecError(f"invalid -p {item!r}: ports go from 1 to 65535")
    return mapping


def parse_dns(text: str) -> str:
    """``--dns ADDRESS``: a nameserver's IPv4 address."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise SpecError(f"invalid --dns {text!r}: use a nameserver's IPv4 address, e.g. 192.0.2.53") from None


def _container_path(path: str, flag: str, item: str) -> str:
    norm = posixpath.normpath(path)
    if not path.startswith("/") or norm == "/" or ".." in path.split("/"):
        raise SpecError(f"invalid {flag} {item!r}: the container path must be absolute, not /, without ..")
    return norm


def parse_volume(item: str) -> Mount:
    """``-v HOSTPATH:CPATH[:ro|rw]``: bind an existing host path into the container, as docker does."""
    parts = item.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise SpecError(f"invalid -v {item!r}: use HOSTPATH:CONTAINERPATH[:ro]")
    host = parts[0]
    if not host.startswith("/"):
        raise SpecError(f"invalid -v {item!r}: the host path must be absolute (named volumes are not supported)")
    if not os.path.exists(host):
        raise SpecError(f"invalid -v {item!r}: host path {host} does not exist")
    options = ("rbind", "ro") if len(parts) == 3 and parts[2] == "ro" else ("rbind",)
    return Mount(_container_path(parts[1], "-v", item), os.path.realpath(host), "bind", options)


def parse_tmpfs(item: str) -> Mount:
    """``--tmpfs CPATH[:size=N]``: a fresh tmpfs, nosuid and nodev as docker makes it."""
    path, _, opts = item.partition(":")
    options = ["nosuid", "nodev", "mode=1777"]
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        if key == "size":
            options.append(f"size={parse_size(value, '--tmpfs size')}")
        elif key == "mode" and re.fullmatch(r"[0-7]{3,4}", value):
            options[2] = f"mode={value}"
        elif opt == "exec":  # the default: take back an earlier noexec (the kernel knows no "exec")
            options = [o for o in options if o != "noexec"]
        elif opt in ("ro", "noexec"):
            options.append(opt)
        else:
            raise SpecError(f"invalid --tmpfs {item!r}: options are size=N, mode=OCTAL, ro, noexec")
    return Mount(_container_path(path, "--tmpfs", item), "tmpfs", "tmpfs", tuple(options))


def parse_env(items: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for item in items:
        key, sep, _ = item.partition("=")
        if not _ENV_KEY_RE.fullmatch(key) or "\0" in item:
            raise SpecError(f"invalid environment variable {item!r}: use KEY=VALUE")
        out.append(item if sep else f"{key}=")
    return tuple(out)


def parse_options(items: tuple[str, ...], flag: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"invalid {flag} {item!r}: use key=value")
        opts[key] = value
    return opts


def container_env(spec: ContainerSpec) -> dict[str, str]:
    """The environment the command starts with: a clean one, as docker gives, plus ``-e``."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": spec.hostname, "HOME": "/root"}
    if spec.process.terminal:
        env["TERM"] = "xterm"
    for item in spec.process.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def check_image(image: str) -> Path:
    path = Path(image)
    if not path.exists():
        from pish_core.image import store  # lazy: only a run by image name needs the store

        if store.find(image) is None:
            raise SpecError(f"image {image!r} not found: give an image name (pish image ls), "
                            f"an image archive, or a rootfs tar or directory")
        return path
    if not (path.is_dir() or path.is_file()):
        raise SpecError(f"image {image!r} is neither a file nor a directory")
    return path
