"""The strings users type, turned into spec values: ``64m``, ``0.5``, ``10.0.4.6/24``, ``8080:80/tcp``,
``/host:/data:ro``... Each parser refuses bad input with a one-line SpecError naming the flag, so the CLI
checks everything at the edge, once, before anything is created."""
from __future__ import annotations

import ipaddress
import os
import posixpath
import re
from pathlib import Path

from pish_core import names
from pish_core.errors import SpecError
from pish_core.spec import DeviceLimit, Mount, PortMapping

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_CPUSET_RE = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_LIMIT_KEY_RE = re.compile(r"([a-z_]+)\.([a-z0-9_.]+)")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: the largest size a cgroup file takes (an int64); more is a typo, not a limit
MAX_SIZE = (1 << 63) - 1
#: docker's floor for --memory: less cannot even start a process
MIN_MEMORY = 6 << 20


def parse_size(text: str, what: str = "size") -> int:
    """``64m``, ``1g``, ``512k``, ``1048576`` -> bytes, as docker's ``--memory`` reads them."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise SpecError(f"invalid {what} {text!r}: use a number with an optional unit b, k, m or g (e.g. 64m)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise SpecError(f"invalid {what} {text!r}: must be more than 0")
    if value > MAX_SIZE:
        raise SpecError(f"invalid {what} {text!r}: too large (at most {MAX_SIZE} bytes)")
    return value


def parse_memory(text: str) -> int:
    """``--memory``: a size of at least 6 MiB, docker's floor."""
    value = parse_size(text, "--memory")
    if value < MIN_MEMORY:
        raise SpecError(f"invalid --memory {text!r}: the minimum memory limit is 6m")
    return value


def parse_workdir(text: str, flag: str = "-w") -> str:
    """``-w DIR``: an absolute path in the container, as docker requires."""
    if not text.startswith("/") or "\0" in text:
        raise SpecError(f"invalid {flag} {text!r}: the working directory must be an absolute path")
    return text


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


def parse_memory_swap(text: str) -> int:
    """``--memory-swap``: memory plus swap as a size, or -1 for unlimited swap (docker's meaning)."""
    return -1 if text.strip() == "-1" else parse_size(text, "--memory-swap")


def parse_cpuset_mems(text: str) -> str:
    if not _CPUSET_RE.fullmatch(text):
        raise SpecError(f"invalid --cpuset-mems {text!r}: use a list of memory nodes such as 0 or 0-1")
    return text


#: docker's device throttling flags -> the io.max key each sets
DEVICE_LIMIT_FLAGS = {"--device-read-bps": "rbps", "--device-write-bps": "wbps",
                      "--device-read-iops": "riops", "--device-write-iops": "wiops"}


def parse_device_limit(text: str, flag: str) -> DeviceLimit:
    """``/dev/vda:1mb`` (a rate in bytes for the -bps flags, a count for the -iops ones) on a block device
    of this host, named by its path and recorded by its numbers."""
    import stat

    path, sep, rate_text = text.rpartition(":")
    if not sep or not path:
        raise SpecError(f"invalid {flag} {text!r}: use DEVICE:RATE, e.g. /dev/vda:1mb")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SpecError(f"invalid {flag} {text!r}: {path}: {(exc.strerror or '').lower()}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise SpecError(f"invalid {flag} {text!r}: {path} is not a block device")
    what = DEVICE_LIMIT_FLAGS[flag]
    rate = parse_size(rate_text, flag) if what.endswith("bps") else parse_positive_int(rate_text, flag)
    return DeviceLimit(os.major(st.st_rdev), os.minor(st.st_rdev), what, rate)


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
    """``-p [[IP:]HOSTPORT:]CPORT[/tcp|udp]`` and ``-p IP::CPORT``, as docker reads them. A missing host
    port is 0, for the driver to pick; IP 0.0.0.0 is every address, as no IP is. Whether the IP belongs
    to this host is the driver's question (it looks at the host; this function looks at the text)."""
    usage = f"invalid -p {item!r}: use [IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp], e.g. 8080:80"
    ports, _, protocol = item.partition("/")
    parts = ports.split(":")
    if protocol not in ("", "tcp", "udp") or len(parts) > 3:
        raise SpecError(usage)
    host_ip = _publish_ip(parts[0], item) if len(parts) == 3 else ""
    host = parts[-2] if len(parts) > 1 else ""
    container = parts[-1]
    if len(parts) == 2 and not host:  # `:80`: docker reads it as `80`; a typo is likelier
        raise SpecError(usage)
    mapping = PortMapping(_port_number(host, usage) if host else 0, _port_number(container, usage),
                          protocol or "tcp", host_ip)
    if (host and not 0 < mapping.host_port < 65536) or not 0 < mapping.container_port < 65536:
        raise SpecError(f"invalid -p {item!r}: ports go from 1 to 65535")
    return mapping


def _port_number(text: str, usage: str) -> int:
    """ASCII digits only: ``str.isdigit`` accepts ``²``, which ``int`` then refuses with a traceback."""
    if not text.isascii() or not text.isdigit():
        raise SpecError(usage)
    return int(text)


def _publish_ip(text: str, item: str) -> str:
    """The host address of ``-p IP:...``: an IPv4 address, "" for 0.0.0.0 (every address)."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise SpecError(f"invalid -p {item!r}: {text!r} is not an IPv4 address") from None
    return "" if address.is_unspecified else str(address)


def parse_network_alias(text: str) -> str:
    """``--network-alias NAME``: a host name (letters, digits, ``-``, dots between labels), as /etc/hosts
    can hold it."""
    try:
        return names.check_hostname(text)
    except SpecError:
        raise SpecError(f"invalid --network-alias {text!r}: use a host name, e.g. db or db.internal") from None


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
