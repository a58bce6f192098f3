"""The links of a bridge network, made and unmade in-process over pish's netlink socket (``netlink.py``:
pyroute2 encodes the messages; no ``ip`` commands, no ``IPRoute``).

The socket layer imports pyroute2's message classes on first use, so importing this module is free and
only a ``--net bridge`` run pays for them (~35 ms, not the 130-200 ms of ``import pyroute2``).
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any

from pish_core import log as pish_log
from pish_drivers.network import inside_netns
from pish_drivers.network.netlink import (
    IFF_UP,
    RTM_DELADDR,
    RTM_NEWADDR,
    Netlink,
    NetlinkError,
    address_request,
    default_route_request,
    set_up_request,
)

log = pish_log.get("network")

#: The name of the container's end of the veth pair, inside its network namespace.
CONTAINER_IFNAME = "eth0"
#: ``lo`` is link 1 in every network namespace (the kernel's LOOPBACK_IFINDEX).
LOOPBACK_INDEX = 1
#: <linux/if_addr.h>: an IPv6 address usable at once, without the second of duplicate address detection
#: (IPAM made it unique on the bridge; a tentative address cannot be bound to or answer pings).
IFA_F_NODAD = 0x02


def route_localnet_path(bridge: str) -> str:
    return f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"


def host_addresses() -> set[str]:
    """The IPv4 addresses of the host's interfaces, 127.0.0.1 included: what ``-p IP:...`` may name."""
    with Netlink() as nl:
        return {a.get("IFA_LOCAL") or a.get("IFA_ADDRESS") for a in nl.addresses(0, socket.AF_INET)}


def is_bridge(msg: Any) -> bool:
    return bool(msg.get(("linkinfo", "kind")) == "bridge")


def has_address(nl: Netlink, ifindex: int, iface: ipaddress.IPv4Interface) -> bool:
    return any(a.get("IFA_ADDRESS") == str(iface.ip) and a["prefixlen"] == iface.network.prefixlen
               for a in nl.addresses(ifindex, socket.AF_INET))


def add_address6(nl: Netlink, ifindex: int, iface: ipaddress.IPv6Interface, what: str) -> bool:
    """Give link ``ifindex`` the IPv6 address ``iface``, usable at once (no DAD); False if it had it."""
    if any(a.get("IFA_ADDRESS") == str(iface.ip) for a in nl.addresses(ifindex, socket.AF_INET6)):
        return False
    log.debug("adding %s to %s", iface, what)
    nl.address(RTM_NEWADDR, ifindex, socket.AF_INET6, str(iface.ip), iface.network.prefixlen,
               f"add {iface} to {what}", flags=IFA_F_NODAD)
    return True


def remove_address6(name: str, iface: ipaddress.IPv6Interface) -> None:
    """Take the IPv6 gateway ``add_address6`` gave a bridge pish did not make off it again (if still there)."""
    with Netlink() as nl:
        msg = nl.link(name)
        if msg is not None and any(a.get("IFA_ADDRESS") == str(iface.ip)
                                   for a in nl.addresses(msg["index"], socket.AF_INET6)):
            log.info("removing gateway %s from bridge %s", iface, name)
            nl.address(RTM_DELADDR, msg["index"], socket.AF_INET6, str(iface.ip), iface.network.prefixlen,
                       f"remove {iface} from {name}")


def create_bridge(nl: Netlink, name: str, gateway: ipaddress.IPv4Interface) -> int:
    """Make bridge ``name`` holding the gateway address, up, with route_localnet on; return its index."""
    log.info("creating bridge %s with gateway %s (route_localnet=1, for published ports on 127.0.0.1)",
             name, gateway)
    # A MAC of its own (02:42 + the gateway's address, as a container's is made): a bridge without one takes
    # the lowest of its ports', so it changed as containers came and went, and every neighbour's ARP entry
    # for the gateway went stale with it (docker sets one too).
    nl.add_link(name, "bridge", f"create bridge {name}", up=True, mac=mac_for(gateway.ip))
    ifindex = socket.if_nametoindex(name)  # nl's namespace is ours: one ioctl, no link message to decode
    nl.address(RTM_NEWADDR, ifindex, socket.AF_INET, str(gateway.ip), gateway.network.prefixlen,
               f"add {gateway} to bridge {name}")
    set_route_localnet(name, True)
    return ifindex


def adopt_bridge(nl: Netlink, msg: Any, gateway: ipaddress.IPv4Interface) -> bool:
    """Use an existing bridge: up, with the gateway address; return True if the address was added."""
    name = msg.get_attr("IFLA_IFNAME")
    if not msg["flags"] & IFF_UP:
        nl.set_up(msg["index"], f"set bridge {name} up")
    if has_address(nl, msg["index"], gateway):
        return False
    log.info("adding gateway %s to existing bridge %s", gateway, name)
    nl.address(RTM_NEWADDR, msg["index"], socket.AF_INET, str(gateway.ip), gateway.network.prefixlen,
               f"add {gateway} to bridge {name}")
    return True


def set_route_localnet(bridge: str, on: bool) -> None:
    with open(route_localnet_path(bridge), "w") as f:
        f.write("1\n" if on else "0\n")


def delete_bridge(name: str) -> None:
    with Netlink() as nl:
        msg = nl.link(name)
        if msg is not None and is_bridge(msg):
            log.info("removing bridge %s", name)
            nl.del_link(f"remove bridge {name}", index=msg["index"])


def remove_gateway(name: str, gateway: ipaddress.IPv4Interface) -> None:
    """Take the gateway address off a bridge pish did not make (it stays, as it was found)."""
    with Netlink() as nl:
        msg = nl.link(name)
        if msg is not None and has_address(nl, msg["index"], gateway):
            log.info("removing gateway %s from bridge %s", gateway, name)
            nl.address(RTM_DELADDR, msg["index"], socket.AF_INET, str(gateway.ip), gateway.network.prefixlen,
                       f"remove {gateway} from bridge {name}")


def mac_for(address: ipaddress.IPv4Address) -> str:
    """The container's MAC address, derived from its IP as docker derives it (02:42 + the 4 bytes).

    An address given to a new container after an old one left then comes with the same MAC, so the
    neighbours' ARP caches stay right; a random MAC would leave them sending to the old one until
    their entries go stale (seconds of lost packets).
    """
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


def plug_veth(nl: Netlink, host_end: str, bridge: str, bridge_index: int, pid: int,
              address: ipaddress.IPv4Address, ifname: str = CONTAINER_IFNAME) -> None:
    """Create the veth pair with its peer (``ifname``) born inside ``pid``'s netns; put the host end in
    the bridge."""
    log.info("creating veth %s in bridge %s", host_end, bridge)
    netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        # One request does it all: the host end is made in the bridge and up, and its peer is made, with
        # its MAC, in the namespace that ``IFLA_NET_NS_FD`` points at, so nothing moves afterwards. (The
        # peer cannot be born up: the kernel opens it before the pair is linked, and refuses.)
        peer = {"attrs": [("IFLA_IFNAME", ifname), ("IFLA_NET_NS_FD", netns), ("IFLA_ADDRESS", mac_for(address))]}
        nl.add_link(host_end, "veth", f"create veth {host_end}", master=bridge_index, up=True,
                    info_data=[("VETH_INFO_PEER", peer)])
    finally:
        os.close(netns)


def delete_veth(host_end: str) -> None:
    """Delete the host end of a veth pair; the kernel deletes the container's end with it. Nothing to do
    if it is gone already (released before, or gone with the container's netns)."""
    with Netlink() as nl:
        if nl.link(host_end) is None:
            return
        log.info("removing veth %s", host_end)
        nl.del_link(f"remove veth {host_end}", ifname=host_end, missing_ok=True)  # the netns may take it first


def configure_container_end(pid: int, address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address | None,
                            address6: ipaddress.IPv6Interface | None = None,
                            gateway6: ipaddress.IPv6Address | None = None,
                            ifname: str = CONTAINER_IFNAME) -> None:
    """In ``pid``'s netns: ``lo`` and ``ifname`` up, ``ifname`` with its address (and IPv6
    address, usable at once), default routes via the gateways given (none for a second network: the
    first keeps the default route, as docker's). The netlink socket is opened inside the namespace and
    used from home (see inside_netns)."""
    with inside_netns(pid):  # the socket stays bound to the container's netns once we are home again
        nl = Netlink()
        try:
            dev = socket.if_nametoindex(ifname)  # one ioctl in its netns: no link message to decode
        except OSError:
            nl.close()
            raise NetlinkError(errno.ENODEV, f"find {ifname} in the container's namespace") from None
    # One write for all of it (the kernel acks each in order); a fresh namespace has no IPv6 address to
    # check for first, so add_address6's look is not needed here.
    requests = [set_up_request(LOOPBACK_INDEX, "set lo up"),
                address_request(RTM_NEWADDR, dev, socket.AF_INET, str(address.ip), address.network.prefixlen,
                                f"add {address} to {ifname}")]
    if address6 is not None:
        requests.append(address_request(RTM_NEWADDR, dev, socket.AF_INET6, str(address6.ip),
                                        address6.network.prefixlen, f"add {address6} to {ifname}", IFA_F_NODAD))
    requests.append(set_up_request(dev, f"set {ifname} up"))
    if gateway is not None:
        requests.append(default_route_request(socket.AF_INET, str(gateway), dev, f"add a default route via {gateway}"))
    if address6 is not None and gateway6 is not None:
        requests.append(default_route_request(socket.AF_INET6, str(gateway6), dev,
                                              f"add a default route via {gateway6}"))
    with nl:
        nl.request_all(requests)
    log.debug("%s of process %d is %s (%s) via %s", ifname, pid, address, address6, gateway)
