"""IPv6 for ``--ipv6`` networks: ``table ip6 pish``, the twin of ``table ip pish`` (``nat.py``).

The same shape as the IPv4 table, for the same reasons (fixed rules, networks and ports as set and map
elements, made by the first user and deleted with the last element, under the same host-wide lock):

- ``subnets`` / ``bridges``: the /64 and bridge of each IPv6 network in use;
- ``isolated``: pairs of bridges that may not forward to each other (as in the IPv4 table);
- ``tcp_ports`` / ``udp_ports``: host port -> container IPv6 address . container port;
- outbound NAT66: a container's ULA source is masqueraded to the host's address, as docker does with
  ``--ipv6`` and an ``ip6tables`` masquerade (a ULA is not routed on the internet).

What IPv6 cannot do as IPv4 does: a packet from ``::1`` DNATed to a container is dropped by the kernel
(IPv6 has no ``route_localnet``: a loopback source may never leave ``lo``). So the ``output`` chain
leaves ``::1`` alone and a published port answers on ``[::1]`` through a small proxy thread of the
container's supervisor instead (``proxy.py``), as docker's ``docker-proxy`` serves ``[::1]``.
"""
from __future__ import annotations

import errno
import ipaddress

from pish_core import log as pish_log
from pish_core.spec import PortMapping
from pish_drivers.network import libnft
from pish_drivers.network.nat import (
    contents,
    host_locked,
    maybe_drop,
    network_commands,
    network_removal_commands,
)

log = pish_log.get("network")

TABLE = "ip6 pish"
FORWARDING = "/proc/sys/net/ipv6/conf/all/forwarding"

_RULESET = """
table ip6 pish {
    set subnets { type ipv6_addr; flags interval; }
    set bridges { type ifname; }
    set isolated { type ifname . ifname; }
    map tcp_ports { type inet_service : ipv6_addr . inet_service; }
    map udp_ports { type inet_service : ipv6_addr . inet_service; }

    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local dnat ip6 to tcp dport map @tcp_ports
        fib daddr type local dnat ip6 to udp dport map @udp_ports
    }
    chain output {
        type nat hook output priority -100; policy accept;
        ip6 daddr != ::1 fib daddr type local dnat ip6 to tcp dport map @tcp_ports
        ip6 daddr != ::1 fib daddr type local dnat ip6 to udp dport map @udp_ports
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip6 saddr @subnets oifname != @bridges masquerade
        oifname @bridges ct status dnat ip6 saddr @subnets masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname . oifname @isolated drop
        oifname @bridges ct state established,related accept
        oifname @bridges ct status dnat accept
        oifname @bridges iifname != @bridges drop
        iifname @bridges accept
    }
}
"""


def enable_forwarding() -> None:
    """Turn on IPv6 forwarding (left on afterwards, as docker leaves it). On a host that takes its IPv6
    route from router advertisements, set ``accept_ra=2`` on that interface first: with forwarding on,
    the kernel ignores them otherwise."""
    with open(FORWARDING) as f:
        if f.read().strip() == "1":
            return
    log.info("enabling IPv6 forwarding (net.ipv6.conf.all.forwarding=1, left on as docker leaves it)")
    with open(FORWARDING, "w") as f:
        f.write("1\n")


def add_network(subnet6: ipaddress.IPv6Network, bridge: str) -> None:
    """Forward, isolate and masquerade ``subnet6`` behind ``bridge``: one look, one transaction."""
    with host_locked():
        libnft.run("\n".join(network_commands(str(subnet6), bridge, contents(TABLE), TABLE, _RULESET)))
    enable_forwarding()


def remove_network(subnet6: str, bridge: str) -> None:
    """Undo ``add_network``; idempotent. The table goes with its last network (and port)."""
    with host_locked():
        found = contents(TABLE)
        if found:
            libnft.run("\n".join(network_removal_commands(subnet6, bridge, found, TABLE)))


def publish(port: PortMapping, address6: str) -> None:
    """DNAT the host's ``port.host_port`` on its IPv6 addresses (not ``::1``: see the module's docstring)
    to ``[address6]:port.container_port``. The host port was taken, and checked, by the IPv4 publish."""
    with host_locked():
        if not contents(TABLE):
            return  # the network's own elements made the table; without them nothing can be reached
        libnft.run(f"add element {TABLE} {port.protocol}_ports "
                   f"{{ {port.host_port} : {address6} . {port.container_port} }}")
        log.info("publishing host port [::]:%d/%s on [%s]:%d", port.host_port, port.protocol, address6,
                 port.container_port)


def unpublish(port: PortMapping, address6: str) -> None:
    """Undo ``publish`` if the host port still maps to ``address6``; host port 0: whichever does."""
    with host_locked():
        found = contents(TABLE)
        for key, (to, cport) in found.get(f"{port.protocol}_ports", []):
            if to == address6 and cport == port.container_port and port.host_port in (0, key):
                log.info("unpublishing host port [::]:%d/%s", key, port.protocol)
                try:
                    libnft.run(f"delete element {TABLE} {port.protocol}_ports {{ {key} }}")
                except libnft.NftError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
        if found:
            maybe_drop(TABLE)
