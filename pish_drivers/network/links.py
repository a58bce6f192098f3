"""The links of a bridge network, made and unmade through pyroute2, in-process (no ``ip`` commands).

pyroute2 costs ~150 ms to import, so it is imported inside each function: importing this module is
free, and only a ``--net bridge`` run pays for pyroute2.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any

from pish_core import log as pish_log
from pish_drivers.network import inside_netns

log = pish_log.get("network")

#: The name of the container's end of the veth pair, inside its network namespace.
CONTAINER_IFNAME = "eth0"
IFF_UP = 0x1  # <net/if.h>
#: <linux/if_addr.h>: an IPv6 address usable at once, without the second of duplicate address detection
#: (IPAM made it unique on the bridge; a tentative address cannot be bound to or answer pings).
IFA_F_NODAD = 0x02


def route_localnet_path(bridge: str) -> str:
    return f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"


def link(ipr: Any, ifname: str) -> Any | None:
    """The link named ``ifname`` in the namespace of ``ipr``'s socket (a pyroute2 message), or None."""
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def host_addresses() -> set[str]:
    """The IPv4 addresses of the host's interfaces, 127.0.0.1 included: what ``-p IP:...`` may name."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    with IPRoute() as ipr:
        return {a.get("IFA_LOCAL") or a.get("IFA_ADDRESS") for a in ipr.addr("dump", family=socket.AF_INET)}


def index(ipr: Any, ifname: str) -> int:
    return int(ipr.link("get", ifname=ifname)[0]["index"])


def is_bridge(msg: Any) -> bool:
    return bool(msg.get(("linkinfo", "kind")) == "bridge")


def has_address(ipr: Any, ifindex: int, iface: ipaddress.IPv4Interface) -> bool:
    return any(a.get("IFA_ADDRESS") == str(iface.ip) and a["prefixlen"] == iface.network.prefixlen
               for a in ipr.addr("dump", index=ifindex))


def add_address6(ipr: Any, ifindex: int, iface: ipaddress.IPv6Interface, what: str) -> bool:
    """Give link ``ifindex`` the IPv6 address ``iface``, usable at once (no DAD); False if it had it."""
    if any(a.get("IFA_ADDRESS") == str(iface.ip) for a in ipr.addr("dump", index=ifindex, family=socket.AF_INET6)):
        return False
    log.debug("adding %s to %s", iface, what)
    ipr.addr("add", index=ifindex, address=str(iface.ip), prefixlen=iface.network.prefixlen,
             family=socket.AF_INET6, flags=IFA_F_NODAD)
    return True


def remove_address6(name: str, iface: ipaddress.IPv6Interface) -> None:
    """Take the IPv6 gateway ``add_address6`` gave a bridge pish did not make off it again (if still there)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        msg = link(ipr, name)
        if msg is not None and any(a.get("IFA_ADDRESS") == str(iface.ip)
                                   for a in ipr.addr("dump", index=msg["index"], family=socket.AF_INET6)):
            log.info("removing gateway %s from bridge %s", iface, name)
            ipr.addr("del", index=msg["index"], address=str(iface.ip), prefixlen=iface.network.prefixlen,
                     family=socket.AF_INET6)


def create_bridge(ipr: Any, name: str, gateway: ipaddress.IPv4Interface) -> int:
    """Make bridge ``name`` holding the gateway address, up, with route_localnet on; return its index."""
    log.info("creating bridge %s with gateway %s (route_localnet=1, for published ports on 127.0.0.1)",
             name, gateway)
    ipr.link("add", ifname=name, kind="bridge")
    ifindex = index(ipr, name)
    ipr.addr("add", index=ifindex, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
    ipr.link("set", index=ifindex, state="up")
    set_route_localnet(name, True)
    return ifindex


def adopt_bridge(ipr: Any, msg: Any, gateway: ipaddress.IPv4Interface) -> bool:
    """Use an existing bridge: up, with the gateway address; return True if the address was added."""
    if not msg["flags"] & IFF_UP:
        ipr.link("set", index=msg["index"], state="up")
    if has_address(ipr, msg["index"], gateway):
        return False
    log.info("adding gateway %s to existing bridge %s", gateway, msg.get_attr("IFLA_IFNAME"))
    ipr.addr("add", index=msg["index"], address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
    return True


def set_route_localnet(bridge: str, on: bool) -> None:
    with open(route_localnet_path(bridge), "w") as f:
        f.write("1\n" if on else "0\n")


def delete_bridge(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        msg = link(ipr, name)
        if msg is not None and is_bridge(msg):
            log.info("removing bridge %s", name)
            ipr.link("del", index=msg["index"])


def remove_gateway(name: str, gateway: ipaddress.IPv4Interface) -> None:
    """Take the gateway address off a bridge pish did not make (it stays, as it was found)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        msg = link(ipr, name)
        if msg is not None and has_address(ipr, msg["index"], gateway):
            log.info("removing gateway %s from bridge %s", gateway, name)
            ipr.addr("del", index=msg["index"], address=str(gateway.ip), prefixlen=gateway.network.prefixlen)


def mac_for(address: ipaddress.IPv4Address) -> str:
    """The container's MAC address, derived from its IP as docker derives it (02:42 + the 4 bytes).

    An address given to a new container after an old one left then comes with the same MAC, so the
    neighbours' ARP caches stay right; a random MAC would leave them sending to the old one until
    their entries go stale (seconds of lost packets).
    """
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


def plug_veth(ipr: Any, host_end: str, bridge: str, bridge_index: int, pid: int,
              address: ipaddress.IPv4Address, ifname: str = CONTAINER_IFNAME) -> None:
    """Create the veth pair with its peer (``ifname``) born inside ``pid``'s netns; put the host end in
    the bridge."""
    log.info("creating veth %s in bridge %s", host_end, bridge)
    netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        # One request does it all: the host end is made in the bridge and up, and its peer is made
        # in the namespace that ``net_ns_fd`` points at, so nothing has to move afterwards.
        ipr.link(
            "add", ifname=host_end, kind="veth", master=bridge_index, state="up",
            peer={"ifname": ifname, "net_ns_fd": netns, "address": mac_for(address)},
        )
    finally:
        os.close(netns)


def delete_veth(host_end: str) -> None:
    """Delete the host end of a veth pair; the kernel deletes the container's end with it."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        if link(ipr, host_end) is None:  # released before, or gone with the container's netns
            return
        log.info("removing veth %s", host_end)
        try:
            ipr.link("del", ifname=host_end)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # ENODEV: the netns took it away meanwhile
                raise


def configure_container_end(pid: int, address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address | None,
                            address6: ipaddress.IPv6Interface | None = None,
                            gateway6: ipaddress.IPv6Address | None = None,
                            ifname: str = CONTAINER_IFNAME) -> None:
    """In ``pid``'s netns: ``lo`` and ``ifname`` up, ``ifname`` with its address (and IPv6 address, usable
    at once), default routes via the gateways given (none for a second network: the first keeps the
    default route, as docker's). The netlink socket is opened inside the namespace and used from home
    (see inside_netns)."""
    from pyroute2 import IPRoute

    with inside_netns(pid):
        ipr = IPRoute()  # its netlink socket belongs to the container's netns from now on
    with ipr:
        ipr.link("set", ifname="lo", state="up")
        dev = index(ipr, ifname)
        ipr.addr("add", index=dev, address=str(address.ip), prefixlen=address.network.prefixlen)
        if address6 is not None:
            add_address6(ipr, dev, address6, ifname)
        ipr.link("set", index=dev, state="up")
        if gateway is not None:
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=dev)
        if address6 is not None and gateway6 is not None:
            ipr.route("add", dst="::/0", gateway=str(gateway6), oif=dev, family=socket.AF_INET6)
    log.debug("%s of process %d is %s (%s) via %s", ifname, pid, address, address6, gateway)
