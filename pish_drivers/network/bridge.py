"""The ``bridge`` network: containers on a Linux bridge per network, routed and NATed by the host.

How a container gets its network here, in five steps. Steps 0-3 are written to the container's journal
as one ``attachment`` record *before* any is taken (one state write, not one per step), and each later
port has a record of its own, so ``pish gc`` can undo a killed run with ``release(record)`` alone; the
release of ``attachment`` undoes 3 to 0, each harmless if it was never taken:

0. **Room for later networks.** Released last: whatever ``pish network connect`` added while the
   container ran (``connections.py``; ``connect`` below).
1. **An address.** The network (``--network``, default ``pish0``) hands out the lowest free address
   of its subnet, or the ``--ip`` asked for (``networks.py``, ``ipam.py``), and an IPv6 one too on an
   ``--ipv6`` network; the network's hosts file, which is every member's /etc/hosts, is rewritten in
   place to name the newcomer (and its ``--network-alias`` names).
2. **Join the bridge.** The bridge has the network's name and is shared by every container on it, so
   its users are counted in ``/run/pish/networks/<bridge>.json`` under a file lock: the first
   container creates it, with the gateway address, and adds the network to pish's nftables table
   (forwarding, masquerade, isolation from the other networks: ``nat.py``, and ``nat6.py`` for IPv6);
   the last one out undoes both. A network of ``pish network create`` has them from its creation until
   ``pish network rm`` (``create_network``), so its containers only count themselves in and out.
3. **Plug in a cable.** A veth pair: the host end (``pv`` + the container id) in the bridge, the
   other end created directly inside the container's namespace as ``eth0`` (creating it there is
   free; moving it there afterwards would cost 20-40 ms).
4. **Configure the container's end**, through a netlink socket opened inside its namespace: ``lo``
   and ``eth0`` up, the address, a default route via the gateway (IPv6: the address without DAD, a
   default route via the bridge's ``::1``).
5. **Publish ports** (``-p``): one DNAT map element each in the nftables table. A port pish picks
   (``-p CPORT``) is journaled as host port 0 and updated to the port it got once published; a
   killed run's 0 releases whatever host port maps to the container's address. On an IPv6 network
   also an element of ``table ip6 pish`` (``port6``) and a ``[::1]`` proxy thread (``proxy.py``).

The container then gets read-only bind mounts from the attachment: /etc/hosts (a link to its network's
shared file; a file of its own once ``network connect`` adds a second network), /etc/resolv.conf and
/etc/hostname (``hosts.py``). Undoing runs in reverse.

All netlink work happens in this process over pish's own netlink socket, with pyroute2's message
classes doing the encoding (``links.py``, ``netlink.py``), imported only when a container is attached
(~35 ms; ``pish drivers list`` must not pay it, nor the 130-200 ms a plain ``import pyroute2`` costs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import ipaddress
import json
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pish_core import names, paths, state
from pish_core.drivers import Attachment, Network, RunContext
from pish_core.errors import DriverError, SpecError
from pish_core.spec import PortMapping
from pish_drivers.network import connections, hosts, links, nat, nat6, networks, proxy
from pish_drivers.network.links import CONTAINER_IFNAME
from pish_drivers.network.netlink import Netlink

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec


class BridgeNetwork(Network):
    name = "bridge"
    description = "a Linux bridge per network: IPAM, gateway, NAT, published ports, /etc/hosts"

    @classmethod
    def check(cls) -> str | None:
        if importlib.util.find_spec("pyroute2") is None:  # finds it without importing it
            return "pyroute2 is not installed (pip install pyroute2)"
        from pish_drivers.network import libnft

        return libnft.available()

    def validate(self, spec: ContainerSpec) -> None:
        """Refuse, before anything exists: an unknown network, an --ip outside the pool or taken, a host
        port given twice, a ``-p IP:...`` whose IP is not the host's. (A port published by another
        container is found at attach, under a lock.)"""
        ports = spec.network.ports
        for i, port in enumerate(ports):
            if port.host_port and any(nat.clashes(port, other) for other in ports[:i]):
                raise SpecError(f"host port {port.host_port}/{port.protocol} is given twice with -p")
        wanted = {port.host_ip for port in ports if port.host_ip}
        if wanted:
            strangers = sorted(wanted - links.host_addresses(), key=ipaddress.IPv4Address)
            if strangers:
                raise SpecError(f"invalid -p {strangers[0]}:...: {strangers[0]} is not an IPv4 address of "
                                "this host")
        ip = spec.network.ip
        networks.usable_by(spec.network.network, ip.ip if ip else None)

    @contextlib.contextmanager
    def attach(self, ctx: RunContext, pid: int) -> Iterator[Attachment]:
        spec, cid = ctx.spec, ctx.id
        wanted = spec.network.ip
        with contextlib.ExitStack() as undo:
            # Steps 0-3 are journaled as one record, before any of them is taken: its release undoes
            # whatever a killed run got to, in reverse, each step harmless if it was never taken. (One
            # state write instead of five: on this ext4 host each costs ~1 ms of a 5 ms attach.)
            host_end = names.veth_host(cid)
            self._journal(ctx, undo, "attachment", network=spec.network.network, container=cid, veth=host_end)

            # 0. The networks `pish network connect` may add later (released after everything else).
            connections.reopen(cid)  # a container started again may be connected again

            # 1. An address (two on an IPv6 network), and a line in the network's /etc/hosts.
            net, ip = networks.allocate(spec.network.network, cid, spec.name, spec.hostname,
                                        wanted.ip if wanted else None, wanted.network if wanted else None,
                                        aliases=spec.network.aliases)
            address = ipaddress.IPv4Interface(f"{ip}/{net.subnet.prefixlen}")
            address6 = _address6(net, str(ip))

            with Netlink() as nl:  # one netlink socket in the host's namespace for steps 2 and 3
                # 2. Join the bridge, creating it if we are the first.
                bridge_index = _join_bridge(nl, net, _gateway(net), cid)

                # 3. Plug a veth pair in: host end into the bridge, the other end in the container.
                links.plug_veth(nl, host_end, net.bridge, bridge_index, pid, ip)

            # 4. Configure the container's end, from inside its namespace.
            links.configure_container_end(pid, address, net.gateway, address6, net.gateway6)

            # 5. Publish ports: IPv4 DNAT, and on an IPv6 network IPv6 DNAT and a [::1] proxy too.
            for port in spec.network.ports:
                entry = self._journal(ctx, undo, "port", address=str(ip), **dataclasses.asdict(port))
                published = nat.publish(port, str(ip))
                ctx.journal.update(entry, host_port=published.host_port)
                if address6 is not None and not port.host_ip:
                    self._journal(ctx, undo, "port6", address6=str(address6.ip), **dataclasses.asdict(published))
                    nat6.publish(published, str(address6.ip))
                    if published.protocol == "tcp":
                        undo.enter_context(proxy.loopback6(published.host_port, str(address6.ip),
                                                           published.container_port))

            resolv_conf = hosts.resolv_conf_mount(cid, spec.network.dns)
            yield Attachment(ifname=CONTAINER_IFNAME, address=str(address), network=net.name, mounts=[
                networks.container_hosts_mount(cid, net.name), resolv_conf,
                *hosts.hostname_mounts(cid, spec.hostname),
            ])

    def release(self, record: dict[str, Any]) -> None:
        what = record.get("what")
        if what == "attachment":  # steps 3 to 0 of attach
            cid, network = record["container"], record["network"]
            links.delete_veth(record["veth"])
            net = networks.get(network)
            if net is not None:  # None: the run died before it had an address, so it never joined either
                _leave_bridge(net.bridge, cid, _gateway(net), str(net.subnet6) if net.subnet6 else None)
            networks.release(network, cid)
            connections.release_all(cid, self.release)
        # Below: the records of `pish network connect` (connections.py), and those of a pish that
        # journaled the first network's steps one by one.
        elif what == "connections":
            connections.release_all(record["container"], self.release)
        elif what == "port6":
            nat6.unpublish(PortMapping(record["host_port"], record["container_port"], record["protocol"]),
                           record["address6"])
        elif what == "port":
            port = PortMapping(record["host_port"], record["container_port"], record["protocol"],
                               record.get("host_ip", ""))  # none in records of a pish before -p IP:...
            nat.unpublish(port, record["address"])
        elif what == "veth":
            links.delete_veth(record["ifname"])
        elif what == "bridge":
            gateway = record.get("gateway")
            _leave_bridge(record["bridge"], record["container"],
                          ipaddress.IPv4Interface(gateway) if gateway else None, record.get("subnet6"))
        elif what == "address":
            networks.release(record["network"], record["container"])
        else:
            raise DriverError(f"network driver 'bridge' cannot release an unknown resource {what!r}")

    def _journal(self, ctx: RunContext, undo: contextlib.ExitStack, what: str, **data: Any) -> dict[str, Any]:
        """Write the resource about to be taken into the journal, and undo it when the stack unwinds."""
        return undo.enter_context(ctx.journal.held("network", self.name, what, self.release, **data))


# -- step 2: the shared bridge, reference-counted under a lock ---------------------------------------


def _read_users(bridge: str) -> dict[str, Any] | None:
    """The bridge's bookkeeping, ``{"created_by_pish": bool, "users": [ids], ...}``, or None."""
    path = paths.bridge_users(bridge)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DriverError(f"{path} is corrupt ({exc}): remove it if no container uses bridge {bridge}") from None
    return data


def _write_users(bridge: str, data: dict[str, Any]) -> None:
    paths.networks_dir().mkdir(parents=True, exist_ok=True)
    state.write_json_atomic(paths.bridge_users(bridge), data)


def _live(users: list[str], leaving: str | None = None) -> list[str]:
    """The users still there: not ``leaving``, and with a state record (a removed container is gone)."""
    live = networks.live_containers()
    return [cid for cid in users if cid != leaving and cid in live]


def _address6(net: networks.NetworkDef, address: str) -> ipaddress.IPv6Interface | None:
    """The IPv6 address (with the network's prefix) allocated with ``address`` on ``net``, or None."""
    given = net.allocations[address].get("address6")
    return ipaddress.IPv6Interface(f"{given}/{net.subnet6.prefixlen}") if given and net.subnet6 else None


def _gateway(net: networks.NetworkDef) -> ipaddress.IPv4Interface:
    """The network's gateway with its prefix, as the bridge holds it."""
    return ipaddress.IPv4Interface(f"{net.gateway}/{net.subnet.prefixlen}")


def _gateway6_data(net: networks.NetworkDef) -> dict[str, str]:
    """What a ``bridge`` record keeps of an IPv6 network, for its release: the /64 and the gateway."""
    if net.subnet6 is None:
        return {}
    return {"subnet6": str(net.subnet6), "gateway6": f"{net.gateway6}/{net.subnet6.prefixlen}"}


def _join_bridge(nl: Netlink, net: networks.NetworkDef, gateway: ipaddress.IPv4Interface, cid: str | None) -> int:
    """Add ``cid`` to the bridge's users (``None``: ``pish network create``, which only brings it up); the
    first user sets up the bridge and its NAT (and IPv6: gateway, NAT66, isolation). Return its index.

    A bridge that stays up without users (``kept``: a network made with ``pish network create``) is set up
    once, by ``create_network``: a container joining it only counts itself in, as one on a busy bridge does.
    """
    bridge = net.bridge
    with state.flocked(paths.bridge_lock(bridge)):
        data = _read_users(bridge) or {"created_by_pish": False, "users": [], "kept": _kept(net)}
        data.setdefault("kept", False)  # (a file of a pish before kept bridges)
        others = _live(data["users"], leaving=cid)
        joined = others + ([cid] if cid is not None else [])
        if others or data.get("up"):  # set up already: its index is all we need
            with contextlib.suppress(OSError):  # (else it went away meanwhile: set it up again, below)
                index = socket.if_nametoindex(bridge)  # one ioctl here, no link message to decode
                data["users"] = joined
                _write_users(bridge, data)
                return index
        link = nl.link(bridge)
        if link is not None and not links.is_bridge(link):
            raise DriverError(f"{bridge} exists on the host but is not a bridge: use another network name")
        first = not others
        if link is None:
            data["created_by_pish"] = True
        data["users"] = joined
        _write_users(bridge, data)  # written before the bridge is created, so a crash leaves a trace
        if link is None:
            index = links.create_bridge(nl, bridge, gateway)
        else:
            index = int(link["index"])
            if first and links.adopt_bridge(nl, link, gateway) and not data["created_by_pish"]:
                data["gateway_added"] = True
                _write_users(bridge, data)
        if net.subnet6 is not None:
            gateway6 = _gateway6_data(net)["gateway6"]
            if links.add_address6(nl, index, ipaddress.IPv6Interface(gateway6), bridge) \
                    and not data["created_by_pish"]:
                data["gateway6_added"] = gateway6  # on a bridge of the host's: taken off by the last one out
                _write_users(bridge, data)
        if first:
            nat.add_network(gateway.network, bridge)
            if net.subnet6 is not None:
                nat6.add_network(net.subnet6, bridge)
        if data["kept"] and not data.get("up"):
            data["up"] = True  # all of the above done: a container may only count itself in from now on
            _write_users(bridge, data)
        return index


def _kept(net: networks.NetworkDef) -> bool:
    """Whether ``net``'s bridge stays up with no container on it: a network of ``pish network create``
    does (as docker's do); the default network and one made on the fly for ``--ip`` go with their last
    container, so a plain ``pish run --net bridge`` leaves nothing behind."""
    return not (net.name == networks.DEFAULT or net.implicit)


def _leave_bridge(bridge: str, cid: str | None, gateway: ipaddress.IPv4Interface | None,
                  subnet6: str | None = None) -> None:
    """Remove ``cid`` from the bridge's users; the last one out undoes the NAT and the bridge (or, on a
    bridge pish did not make, the gateway address pish added), unless the bridge is kept: then that is
    ``pish network rm``'s to do (``cid`` None)."""
    with state.flocked(paths.bridge_lock(bridge)):
        data = _read_users(bridge)
        if data is None:  # never joined, or already cleaned up
            return
        data["users"] = _live(data["users"], leaving=cid)
        if cid is not None and (data["users"] or data.get("kept")):
            _write_users(bridge, data)
            return
        # The last one out, or `network rm` (which found no container holding an address: any user still
        # listed is a record's leftover). Not up from here on, so a crash half-way is set up again.
        if data.get("up"):
            data["up"] = False
            _write_users(bridge, data)
        if gateway is not None:
            nat.remove_network(str(gateway.network), bridge)
        if subnet6 is not None:
            nat6.remove_network(subnet6, bridge)
        if data["created_by_pish"]:
            links.delete_bridge(bridge)
        else:
            if data.get("gateway_added") and gateway is not None:
                links.remove_gateway(bridge, gateway)
            if data.get("gateway6_added"):
                links.remove_address6(bridge, ipaddress.IPv6Interface(data["gateway6_added"]))
        paths.bridge_users(bridge).unlink(missing_ok=True)


# -- pish network create / rm: a network's bridge lives as long as the network ---------------------------


def create_network(name: str, subnet: ipaddress.IPv4Network | None = None, gateway: ipaddress.IPv4Address | None = None,
                   ipv6: bool = False, subnet6: ipaddress.IPv6Network | None = None) -> networks.NetworkDef:
    """``pish network create``: the definition, then its bridge and NAT at once, as docker makes them (a
    container joining it then only plugs in: its first container starts as fast as its hundredth). If the
    bridge cannot be made, the definition goes again."""
    def bring_up(net: networks.NetworkDef) -> None:
        if not _kept(net):  # `network create pish0`: its bridge comes and goes with its containers, as ever
            return
        with Netlink() as nl:
            _join_bridge(nl, net, _gateway(net), None)

    return networks.create(name, subnet, gateway, ipv6=ipv6, subnet6=subnet6, bring_up=bring_up,
                           bring_down=_bring_down)


def remove_network(name: str) -> networks.NetworkDef:
    """``pish network rm``: refused while a container is on it; its bridge and NAT go with it."""
    return networks.remove(name, bring_down=_bring_down)


def _bring_down(net: networks.NetworkDef) -> None:
    """Undo the bridge and NAT of ``net`` (kept or not) once no container is on it; idempotent."""
    _leave_bridge(net.bridge, None, _gateway(net), str(net.subnet6) if net.subnet6 else None)


# -- pish network connect / disconnect: a second network for a running container ----------------------


def _running_on_bridge(ref: str) -> state.ContainerState:
    """The running container ``ref``, which must have been started on the bridge driver by a pish that
    journals connections."""
    s = state.resolve(ref)
    if not s.command_running() or s.pid is None:
        raise SpecError(f"container {s.name} is not running: only a running container can be connected "
                        "or disconnected")
    if not any(r.get("kind") == "network" and r.get("what") in ("attachment", "connections") for r in s.resources):
        raise SpecError(f"container {s.name} is not on a bridge network of this pish (or was started by an "
                        "older one): start it with --network NET to connect it to others")
    return s


def _next_ifname(taken: set[str]) -> str:
    """The container's next interface: ``eth1``, ``eth2``, ... (``eth0`` is its first network's)."""
    n = 1
    while f"eth{n}" in taken:
        n += 1
    return f"eth{n}"


def connect(network: str, ref: str, aliases: tuple[str, ...] = (),
            ip: ipaddress.IPv4Address | None = None) -> state.ContainerState:
    """``pish network connect``: a veth from ``network``'s bridge into the running container, as
    ``ethN``, with an address (and an IPv6 one) from that network, each step journaled first in the
    container's connections file (``connections.py``). The first network keeps the default routes."""
    net = networks.require(network)
    s = _running_on_bridge(ref)
    cid = s.id
    if ip is not None:
        networks.usable_by(network, ip)
    driver = BridgeNetwork()
    with connections.opened(cid) as conns:
        if conns.closed or not s.command_running():
            raise SpecError(f"container {s.name} is stopping: it cannot be connected")
        if network == s.spec.get("network", {}).get("network") or network in conns.networks:
            raise SpecError(f"container {s.name} is already connected to network {network}")
        ifname = _next_ifname(conns.ifnames())
        host_end = names.veth_host(cid, int(ifname.removeprefix("eth")))
        assert s.pid is not None
        try:
            if not networks.has_own_hosts_file(cid):  # its /etc/hosts is its first network's file: no more
                pid = s.pid
                networks.own_hosts_file(cid, lambda own: hosts.bind_into(pid, own))
            record = conns.add(network, "address", network=network, container=cid, container_ifname=ifname)
            net, got = networks.allocate(network, cid, s.name, s.spec.get("hostname") or s.name, ip, None, aliases,
                                         own_hosts=True)
            address = ipaddress.IPv4Interface(f"{got}/{net.subnet.prefixlen}")
            address6 = _address6(net, str(got))
            conns.update(record, address=str(address))
            gateway = _gateway(net)
            with Netlink() as nl:
                conns.add(network, "bridge", bridge=net.bridge, container=cid, gateway=str(gateway),
                          **_gateway6_data(net))
                bridge_index = _join_bridge(nl, net, gateway, cid)
                conns.add(network, "veth", ifname=host_end, bridge=net.bridge)
                links.plug_veth(nl, host_end, net.bridge, bridge_index, s.pid, got, ifname)
            links.configure_container_end(s.pid, address, None, address6, None, ifname)
        except BaseException:
            conns.release(network, driver.release)
            raise
    return s


def disconnect(network: str, ref: str) -> state.ContainerState:
    """``pish network disconnect``: undo ``connect`` (the veth, the address, the bridge's user count)."""
    s = _running_on_bridge(ref)
    with connections.opened(s.id) as conns:
        if network not in conns.networks:
            if network == s.spec.get("network", {}).get("network"):
                raise SpecError(f"network {network} is the one container {s.name} was started on: it stays "
                                "until the container stops")
            raise SpecError(f"container {s.name} is not connected to network {network}")
        conns.release(network, BridgeNetwork().release)
    return s
