"""Named networks: their definitions under ``PISH_LIB/networks``, their address allocations under
``PISH_ROOT/networks``.

One JSON file per network (``paths.network_file``) holds its subnet and gateway: it outlives a reboot.
The addresses given out, each with the container holding it, are in a file of their own in the runtime
state (``paths.network_allocations``, on /run's tmpfs on a systemd host): they live as long as the
containers do, and a join's write there is cheap (renaming over a file on ext4 flushes it: ~1 ms of a
~6 ms attach when they shared the definition's file). Every read-modify-write happens under one flock
(``paths.networks_lock``), so two ``pish run`` at once can never get the same address, and
``pish network create`` sees every other network when it checks for overlaps.

Three ways a network comes to be:

- ``pish network create NAME``: it stays until ``pish network rm NAME``, and so does its bridge, made
  at once (``bridge.create_network``), as docker makes it.
- The default network ``pish0`` (10.88.0.0/16) is made by the first container that uses it; its bridge
  comes and goes with its containers.
- ``--net bridge --network NAME --ip ADDR/PREFIX`` with no such network: made on the fly from the
  address's subnet, as pish did before it had networks, and removed with its last container
  (``implicit``).

An allocation whose container has no state directory any more (the host rebooted, the record was
removed by hand) is stale and freed the next time the network is written. Importing this module is
cheap: no pyroute2 (``validate`` uses it in the CLI process).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pish_core import log as pish_log
from pish_core import names, paths, state
from pish_core.errors import SpecError, StateError
from pish_core.spec import Mount
from pish_drivers.network import hosts, ipam

log = pish_log.get("network")

DEFAULT = "pish0"
DEFAULT_SUBNET = ipam.Net("10.88.0.0/16")
#: Where ``pish network create`` without ``--subnet`` takes a /24 from.
AUTO_POOL = ipam.Net("10.89.0.0/16")


@dataclasses.dataclass
class NetworkDef:
    name: str
    subnet: ipam.Net
    gateway: ipam.Addr
    created: float = dataclasses.field(default_factory=time.time)
    implicit: bool = False
    #: address -> {"container": id, "name": container name, "hostname": its hostname, "aliases": [names],
    #: "address6": its IPv6 address on an --ipv6 network}
    allocations: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: the IPv6 /64 and the bridge's address in it (``--ipv6``), or None
    subnet6: ipam.Net6 | None = None
    gateway6: ipam.Addr6 | None = None

    @property
    def bridge(self) -> str:
        """The Linux bridge of the network: it has the network's name."""
        return self.name

    def taken(self) -> set[int]:
        """The addresses given out, as integers: inet_aton's, not an ``ipaddress`` object per member per
        join (those made the 100th container's join cost ~0.4 ms more than the 2nd's)."""
        return {int.from_bytes(socket.inet_aton(a), "big") for a in self.allocations}

    def taken6(self) -> set[ipam.Addr6]:
        return {ipam.Addr6(o["address6"]) for o in self.allocations.values() if o.get("address6")}

    def containers(self) -> list[str]:
        return [a["container"] for a in self.allocations.values()]

    def to_json(self) -> dict[str, Any]:
        """The definition (the allocations are stored apart: ``_write_allocations``)."""
        data = {"name": self.name, "subnet": str(self.subnet), "gateway": str(self.gateway),
                "created": self.created, "implicit": self.implicit}
        if self.subnet6 is not None:
            data.update(subnet6=str(self.subnet6), gateway6=str(self.gateway6))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkDef:
        subnet6, gateway6 = data.get("subnet6"), data.get("gateway6")
        return cls(name=data["name"], subnet=ipam.Net(data["subnet"]), gateway=ipam.Addr(data["gateway"]),
                   created=data.get("created", 0.0), implicit=data.get("implicit", False),
                   allocations=dict(data.get("allocations", {})),
                   subnet6=ipam.Net6(subnet6) if subnet6 else None,
                   gateway6=ipam.Addr6(gateway6) if gateway6 else None)


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the lock on every network's definition and allocations."""
    with state.flocked(paths.networks_lock()):
        yield


def get(name: str) -> NetworkDef | None:
    """The network named ``name`` as stored now, with its allocations (no lock: a snapshot), or None."""
    path = paths.network_file(name)
    try:
        data = json.loads(path.read_text())
        with contextlib.suppress(FileNotFoundError):  # none yet (or a reboot took them: no container is left)
            path = paths.network_allocations(name)
            # (a definition written before the allocations moved out holds them itself: read as a fallback)
            data["allocations"] = json.loads(path.read_text())
        return NetworkDef.from_json(data)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as exc:
        raise StateError(f"{path} is corrupt ({exc}): fix or remove it") from None


def require(name: str) -> NetworkDef:
    names.check_ifname(name, "network name")  # `pish network rm ../x` would unlink files outside
    net = get(name)
    if net is None:
        raise SpecError(f"network {name} not found: create it with `pish network create {name}`")
    return net


def list_all() -> list[NetworkDef]:
    try:
        files = sorted(os.listdir(paths.network_defs_dir()))
    except FileNotFoundError:
        return []
    nets = [get(f.removesuffix(".json")) for f in files if f.endswith(".json")]
    return sorted((n for n in nets if n is not None), key=lambda n: n.created)


def _write(net: NetworkDef) -> None:
    """Store a new network: its definition and its (empty) allocations."""
    paths.network_defs_dir().mkdir(parents=True, exist_ok=True)
    state.write_json_atomic(paths.network_file(net.name), net.to_json())
    _write_allocations(net)


def _write_allocations(net: NetworkDef) -> None:
    path = paths.network_allocations(net.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    state.write_json_atomic(path, net.allocations)


def _remove(name: str) -> None:
    """Forget a network: its definition, allocations and hosts file."""
    for path in (paths.network_file(name), paths.network_allocations(name), paths.hosts_file(name)):
        path.unlink(missing_ok=True)


def host_routes() -> list[tuple[str, ipam.Net]]:
    """The host's IPv4 routes other than default ones, as (device, destination), from /proc/net/route."""
    out = []
    with contextlib.suppress(FileNotFoundError), open("/proc/net/route") as f:
        next(f, None)
        for line in f:
            fields = line.split()
            dest, mask = (ipam.Addr(int(x, 16).to_bytes(4, "little")) for x in (fields[1], fields[7]))
            with contextlib.suppress(ValueError):
                net = ipam.Net(f"{dest}/{mask}")
                if net.prefixlen:
                    out.append((fields[0], net))
    return out


def host_routes6() -> list[tuple[str, ipam.Net6]]:
    """The host's IPv6 routes other than default and link-local ones, as (device, destination), from
    /proc/net/ipv6_route."""
    out = []
    with contextlib.suppress(FileNotFoundError), open("/proc/net/ipv6_route") as f:
        for line in f:
            fields = line.split()
            with contextlib.suppress(ValueError, IndexError):
                net = ipam.Net6((int(fields[0], 16), int(fields[1], 16)))
                if net.prefixlen and not net.is_link_local and not net.is_multicast and net.prefixlen < 128:
                    out.append((fields[-1], net))
    return out


def _check_free(name: str, subnet: ipam.Net | ipam.Net6) -> None:
    """Refuse ``subnet`` (IPv4 or IPv6) if another network or a route of the host overlaps it."""
    v6 = isinstance(subnet, ipam.Net6)
    nets = ((n.name, n.subnet6 if v6 else n.subnet) for n in list_all() if n.name != name)
    others: list[tuple[str, ipam.Net | ipam.Net6]] = [(other, net) for other, net in nets if net is not None]
    clash = ipam.overlapping(subnet, others)
    if clash:
        raise SpecError(f"subnet {subnet} overlaps network {clash} ({dict(others)[clash]})")
    routes = host_routes6() if v6 else host_routes()
    clash = ipam.overlapping(subnet, ((dev, net) for dev, net in routes if dev != name))
    if clash:
        raise SpecError(f"subnet {subnet} overlaps a route of the host on {clash}: pick another "
                        f"{'--subnet-v6' if v6 else '--subnet'}")


def _create(name: str, subnet: ipam.Net | None, gateway: ipam.Addr | None, implicit: bool = False,
            ipv6: bool = False, subnet6: ipam.Net6 | None = None) -> NetworkDef:
    """Define a network (the lock held). Refuse a name in use, an overlap, a gateway outside the subnet."""
    names.check_ifname(name, "network name")
    if get(name) is not None:
        raise SpecError(f"network {name} already exists")
    if subnet is None:
        taken = [n.subnet for n in list_all()] + [net for _, net in host_routes()]
        subnet = ipam.pick_subnet(AUTO_POOL, 24, taken)
    if gateway is None:
        gateway = ipam.default_gateway(subnet)
    ipam.check_gateway(subnet, gateway)
    _check_free(name, subnet)
    net = NetworkDef(name=name, subnet=subnet, gateway=gateway, implicit=implicit)
    if ipv6 or subnet6 is not None:
        if subnet6 is None:
            taken6 = [n.subnet6 for n in list_all() if n.subnet6 is not None] + [r for _, r in host_routes6()]
            subnet6 = ipam.random_ula(taken6)
        _check_free(name, subnet6)
        net.subnet6, net.gateway6 = subnet6, ipam.gateway6(subnet6)
    if name == DEFAULT or implicit:  # `pish network create` prints the name itself
        log.info("creating network %s (%s, gateway %s)", name, subnet, gateway)
    _write(net)
    return net


def create(name: str, subnet: ipam.Net | None = None, gateway: ipam.Addr | None = None,
           ipv6: bool = False, subnet6: ipam.Net6 | None = None,
           bring_up: Callable[[NetworkDef], None] | None = None,
           bring_down: Callable[[NetworkDef], None] | None = None) -> NetworkDef:
    """``pish network create``; ``ipv6`` (or a ``subnet6``) gives it an IPv6 /64 as well. ``bring_up``
    (the bridge driver's) makes its bridge once it is defined; if that fails, ``bring_down`` undoes what
    it got to and the definition goes too."""
    with locked():
        net = _create(name, subnet, gateway, ipv6=ipv6, subnet6=subnet6)
        if bring_up is not None:
            try:
                bring_up(net)
            except BaseException:
                with contextlib.suppress(Exception):
                    if bring_down is not None:
                        bring_down(net)
                _remove(name)
                raise
        return net


def live_containers() -> set[str]:
    """The ids of the containers that have a state directory: one directory read, however many there are
    (a stat per container made the 100th attach of a network pay for the 99 before it)."""
    try:
        return set(os.listdir(paths.containers_dir()))
    except FileNotFoundError:
        return set()


def _live(net: NetworkDef) -> bool:
    """Drop allocations whose container is gone for good; True if any was dropped."""
    live = live_containers()
    stale = [a for a, owner in net.allocations.items() if owner["container"] not in live]
    for address in stale:
        del net.allocations[address]
    return bool(stale)


def remove(name: str, bring_down: Callable[[NetworkDef], None] | None = None) -> NetworkDef:
    """``pish network rm``: refused while a container holds an address on it; ``bring_down`` (the bridge
    driver's) takes its bridge away first."""
    with locked():
        net = require(name)
        if _live(net):
            _write_allocations(net)
        if net.allocations:
            users = ", ".join(sorted(o["name"] for o in net.allocations.values()))
            raise SpecError(f"network {name} is in use by container(s) {users}: remove them first")
        if bring_down is not None:
            bring_down(net)
        _remove(name)
        return net


def usable_by(name: str, ip: ipam.Addr | None) -> NetworkDef | None:
    """The network a container would join, or None if it would be made on first use (``validate``).
    Refuses an unknown network that cannot be made, and an ``--ip`` outside the pool or taken."""
    net = get(name)
    if net is None:
        if name == DEFAULT or ip is not None:
            return None
        require(name)
    assert net is not None
    if ip is not None:
        _live(net)
        ipam.check_request(net.subnet, net.gateway, net.taken(), ip, name)
    return net


def allocate(name: str, cid: str, cname: str, hostname: str,
             ip: ipam.Addr | None = None, ip_subnet: ipam.Net | None = None,
             aliases: Sequence[str] = (), own_hosts: bool = False) -> tuple[NetworkDef, ipam.Addr]:
    """Give container ``cid`` an address on network ``name`` (``ip`` if given, else the lowest free; on
    an IPv6 network an IPv6 one too, in the allocation's ``address6``), making the network first if it
    is the default or ``ip_subnet`` says which one to make. ``aliases`` are more names for its hosts line;
    ``own_hosts``: the container has a hosts file of its own (``own_hosts_file``; a second network)."""
    with locked():
        net = get(name)
        if net is None:
            if name == DEFAULT:
                net = _create(name, DEFAULT_SUBNET, None)
            elif ip is not None and ip_subnet is not None:
                gateway = ipam.default_gateway(ip_subnet)
                if gateway == ip:  # the address asked for is the usual gateway: take the last one instead
                    gateway = ipam.Addr(ipam.usable(ip_subnet)[-1])
                net = _create(name, ip_subnet, gateway, implicit=True)
            else:
                net = require(name)
        dropped = _live(net)
        mine = [ipam.Addr(a) for a, o in net.allocations.items() if o["container"] == cid]
        if mine and (ip is None or ip in mine):  # asked again (a retried attach): the same answer
            return net, mine[0]
        if ip is not None:
            ipam.check_request(net.subnet, net.gateway, net.taken(), ip, name)
            address = ip
        else:
            address = ipam.next_free(net.subnet, net.gateway, net.taken(), name)
        log.debug("address %s of network %s for %s", address, name, cname)
        net.allocations[str(address)] = {"container": cid, "name": cname, "hostname": hostname,
                                         "aliases": list(aliases), **({"own_hosts": True} if own_hosts else {})}
        if net.subnet6 is not None:
            net.allocations[str(address)]["address6"] = str(ipam.next_free6(net.subnet6, net.taken6(), name))
        _write_allocations(net)
        _rewrite_hosts(net, joined=None if dropped else str(address))
        return net, address


def release(name: str, cid: str) -> list[str]:
    """Free every address ``cid`` holds on network ``name``; idempotent. An implicit network goes
    with its last address. Returns the addresses freed."""
    with locked():
        net = get(name)
        if net is None:
            return []
        freed = [a for a, o in net.allocations.items() if o["container"] == cid]
        for address in freed:
            del net.allocations[address]
        if not (freed or _live(net)):
            return []
        if net.implicit and not net.allocations:
            log.info("removing network %s (made on the fly for --ip; its last container is gone)", name)
            _remove(name)
        else:
            _write_allocations(net)
        _rewrite_hosts(net, also=cid)
        return freed


def _entries(net: NetworkDef, only: str | None = None) -> list[tuple[str, list[str]]]:
    """The hosts lines of ``net``'s containers (or of the one at address ``only``): (address, names),
    IPv4 then IPv6, by address."""
    entries = []
    members = [(only, net.allocations[only])] if only is not None else \
        sorted(net.allocations.items(), key=lambda item: socket.inet_aton(item[0]))  # inet_aton: no ipaddress
    for address, o in members:
        names_of = [o["name"], o["hostname"], *o.get("aliases", [])]
        entries.append((address, names_of))
        if o.get("address6"):
            entries.append((o["address6"], names_of))
    return entries


def _rewrite_hosts(net: NetworkDef, also: str | None = None, joined: str | None = None) -> None:
    """The network's shared hosts file, rewritten in place (removed when nobody is left on it), and the
    hosts files of its containers that have one of their own (a second network: ``own_hosts_file``),
    and of ``also``, which just left it.

    The other containers' /etc/hosts *is* the shared file (``container_hosts_mount`` links it), so a
    join or leave writes one file, however many containers the network has. A join (``joined``: the
    address it got) appends its lines to that file rather than writing every member's again: the
    100th container's join writes as much as the 2nd's.
    """
    path = paths.hosts_file(net.name)
    if not net.allocations:
        path.unlink(missing_ok=True)
    elif joined is None or not hosts.append_hosts(path, _entries(net, only=joined)):
        hosts.write_hosts(path, _entries(net))
    own = {o["container"] for o in net.allocations.values() if o.get("own_hosts")}
    if also and has_own_hosts_file(also):
        own.add(also)
    if own:
        everyone = [n for n in list_all() if n.name != net.name] + [net]
        for cid in own:
            _write_container_hosts(cid, everyone)


def own_hosts_path(cid: str) -> Path:
    """Where container ``cid``'s hosts file of its own is, once it has one (``own_hosts_file``)."""
    return paths.etc_hosts(cid).with_name("hosts.own")


def has_own_hosts_file(cid: str) -> bool:
    """True if container ``cid``'s /etc/hosts is a file of its own, not its network's."""
    return own_hosts_path(cid).exists()


def _write_container_hosts(cid: str, everyone: list[NetworkDef]) -> None:
    """Rewrite, in place, the own /etc/hosts of container ``cid``: the lines of every network it is on,
    oldest network first."""
    path = own_hosts_path(cid)
    if path.exists():  # else it has none (or its container is gone)
        hosts.write_hosts(path, _container_entries(cid, everyone))


def _container_entries(cid: str, everyone: list[NetworkDef]) -> list[tuple[str, list[str]]]:
    """The hosts lines of every network of ``everyone`` that ``cid`` is on, oldest network first."""
    entries: list[tuple[str, list[str]]] = []
    for net in sorted((n for n in everyone if cid in n.containers()), key=lambda n: n.created):
        entries += [e for e in _entries(net) if e not in entries]
    return entries


def container_hosts_mount(cid: str, network: str) -> Mount:
    """Container ``cid``'s /etc/hosts on ``network``: a hard link to the network's shared hosts file, so
    the in-place rewrite of that one file when a container joins or leaves reaches every member (a bind
    mount pins the inode, and the link *is* that inode). Its read-only mount."""
    path = paths.etc_hosts(cid)
    with locked():
        path.unlink(missing_ok=True)  # a container started again: its last run's link ...
        own_hosts_path(cid).unlink(missing_ok=True)  # ... and own file (its connections were released)
        os.link(paths.hosts_file(network), path)
    return Mount("/etc/hosts", str(path), "bind", hosts.FILE_MOUNT_OPTIONS)


def own_hosts_file(cid: str, mount_over: Callable[[Path], None]) -> None:
    """Give container ``cid`` a hosts file of its own (for ``pish network connect``: the names of every
    network it is on), marked in its allocations so every later change of those networks rewrites it.

    Its /etc/hosts is a mount of the link to its network's file, and that mount pins the inode, so
    ``mount_over(file)`` mounts the new file over it inside the container. The link stays where it is:
    the kernel unmounts whatever is mounted on a file that is unlinked or renamed over.
    """
    with locked():
        everyone = list_all()
        for net in everyone:
            mine = allocation_of(net, cid)
            if mine is not None and not mine[1].get("own_hosts"):
                mine[1]["own_hosts"] = True
                _write_allocations(net)
        own = own_hosts_path(cid)
        hosts.write_hosts(own, _container_entries(cid, everyone))
        try:
            mount_over(own)
        except BaseException:
            own.unlink(missing_ok=True)
            raise


def allocation_of(net: NetworkDef, cid: str) -> tuple[str, dict[str, Any]] | None:
    """The (address, allocation) container ``cid`` holds on ``net``, or None."""
    return next(((a, o) for a, o in net.allocations.items() if o["container"] == cid), None)
