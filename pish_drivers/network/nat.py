"""The host as a router for its containers: forwarding, outbound masquerade and published ports.

Everything pish asks of netfilter lives in one nftables table of its own, ``table ip pish``, so it
never touches anyone else's rules and ``nft list table ip pish`` shows all of it. The rules never
change; what changes is the content of four named sets and maps:

- ``subnets`` and ``bridges``: one element each per network in use;
- ``tcp_ports`` and ``udp_ports``: host port -> container address . container port, one per ``-p``.

so a network or a port comes and goes with ``add element``/``delete element`` (no rule handles to
track), and the kernel's map is itself the host-wide registry of published ports: adding a host port
that maps elsewhere already fails with EEXIST. The table is made by the first user and deleted when
every set and map is empty again, under a host-wide lock (``paths.host_lock``).

How a published port is reached:

- from another host, through the host's address: ``prerouting`` DNATs it to the container;
- from the host itself, to any of its addresses: ``output`` does the same;
- from the host's 127.0.0.1: the DNATed packet leaves through the bridge with source 127.0.0.1, which
  the kernel allows only with ``route_localnet`` on the bridge (set when pish creates it); the
  ``postrouting`` masquerade then gives it the gateway's address so the container can answer. This is
  docker's ``--userland-proxy=false`` way: no proxy process per port, no bytes copied through Python,
  UDP as well as TCP, and remote clients keep their source address. The ``guard`` chain drops packets
  *arriving* on a pish bridge for 127.0.0.0/8, the hole route_localnet would otherwise open
  (CVE-2020-8558 in kube-proxy).
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

from pish_core import log as pish_log
from pish_core import paths, state
from pish_core.errors import SpecError
from pish_core.spec import PortMapping
from pish_drivers.network import libnft

log = pish_log.get("network")

TABLE = "ip pish"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

_RULESET = """
table ip pish {
    set subnets { type ipv4_addr; flags interval; }
    set bridges { type ifname; }
    map tcp_ports { type inet_service : ipv4_addr . inet_service; }
    map udp_ports { type inet_service : ipv4_addr . inet_service; }

    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local dnat ip to tcp dport map @tcp_ports
        fib daddr type local dnat ip to udp dport map @udp_ports
    }
    chain output {
        type nat hook output priority -100; policy accept;
        fib daddr type local dnat ip to tcp dport map @tcp_ports
        fib daddr type local dnat ip to udp dport map @udp_ports
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr @subnets oifname != @bridges masquerade
        oifname @bridges ct status dnat ip saddr 127.0.0.0/8 masquerade
        oifname @bridges ct status dnat ip saddr @subnets masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        oifname @bridges ct state established,related accept
        oifname @bridges ct status dnat accept
        oifname @bridges iifname != @bridges drop
        iifname @bridges accept
    }
    chain guard {
        type filter hook prerouting priority raw; policy accept;
        iifname @bridges ip daddr 127.0.0.0/8 drop
    }
}
"""


@contextlib.contextmanager
def _host_locked() -> Iterator[None]:
    with state.flocked(paths.host_lock("nftables")):
        yield


def _exists() -> bool:
    try:
        libnft.run(f"list table {TABLE}")
    except libnft.NftError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _ensure_table() -> None:
    if not _exists():
        log.info("creating nftables table %s (forwarding, masquerade, published ports)", TABLE)
        libnft.run(_RULESET)


def contents() -> dict[str, list[Any]]:
    """The elements of every set and map of the table ({} if there is no table): for ``_maybe_drop``
    and for tests. Map elements are [key, [address, port]]."""
    try:
        objects = libnft.list_json(f"table {TABLE}")
    except libnft.NftError as exc:
        if exc.errno == errno.ENOENT:
            return {}
        raise
    out: dict[str, list[Any]] = {}
    for obj in objects:
        body = obj.get("set") or obj.get("map")
        if body is not None:
            out[body["name"]] = [_plain(e) for e in body.get("elem", [])]
    return out


def _plain(elem: Any) -> Any:
    """nft's JSON element forms, flattened: a prefix to "a/n", a map entry to [key, [addr, port]]."""
    if isinstance(elem, dict) and "prefix" in elem:
        return f"{elem['prefix']['addr']}/{elem['prefix']['len']}"
    if isinstance(elem, list):  # a map element: [key, {"concat": [addr, port]}]
        key, value = elem
        return [key, value.get("concat", value) if isinstance(value, dict) else value]
    return elem


def _maybe_drop() -> None:
    """Delete the table once no set or map holds anything: pish's last user is gone."""
    found = contents()
    if found and not any(found.values()):
        log.info("removing nftables table %s", TABLE)
        libnft.run(f"delete table {TABLE}")


def _delete_elements(*pairs: tuple[str, str]) -> None:
    """Delete set elements that may or may not be there: adding first makes the delete always valid,
    and both happen in one transaction (nft 1.0.6 has no ``destroy element`` yet)."""
    cmds = [f"add element {TABLE} {name} {{ {elem} }}; delete element {TABLE} {name} {{ {elem} }}"
            for name, elem in pairs]
    libnft.run("\n".join(cmds))


def enable_forwarding() -> None:
    """Turn on IPv4 forwarding, without which nothing leaves a bridge. Left on afterwards, as docker
    and podman leave it: another program may rely on it by then."""
    with open(IP_FORWARD) as f:
        if f.read().strip() == "1":
            return
    log.info("enabling IPv4 forwarding (net.ipv4.ip_forward=1, left on as docker leaves it)")
    with open(IP_FORWARD, "w") as f:
        f.write("1\n")


def add_network(subnet: ipaddress.IPv4Network, bridge: str) -> None:
    """Forward and masquerade for ``subnet`` behind ``bridge``."""
    with _host_locked():
        _ensure_table()
        log.info("masquerading %s leaving through other interfaces than %s", subnet, bridge)
        libnft.run(f'add element {TABLE} subnets {{ {subnet} }}; add element {TABLE} bridges {{ "{bridge}" }}')
    enable_forwarding()


def remove_network(subnet: str, bridge: str) -> None:
    """Undo ``add_network``; idempotent. The table goes with its last element."""
    with _host_locked():
        if not _exists():
            return
        _delete_elements(("subnets", subnet), ("bridges", f'"{bridge}"'))
        _maybe_drop()


def _check_host_port_free(port: PortMapping) -> None:
    """Refuse a host port a program on the host listens on: DNAT would silently hide it."""
    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port.host_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SpecError(f"host port {port.host_port}/{port.protocol} is in use on the host") from None
            raise


def publish(port: PortMapping, address: str) -> None:
    """DNAT the host's ``port.host_port`` to ``address:port.container_port``; refuse a port taken."""
    with _host_locked():
        _check_host_port_free(port)
        _ensure_table()
        try:
            libnft.run(f"add element {TABLE} {port.protocol}_ports "
                       f"{{ {port.host_port} : {address} . {port.container_port} }}")
        except libnft.NftError as exc:
            if exc.errno == errno.EEXIST:
                _maybe_drop()
                raise SpecError(f"host port {port.host_port}/{port.protocol} is already published") from None
            raise
        log.info("publishing host port %d/%s on %s:%d", port.host_port, port.protocol, address,
                 port.container_port)


def unpublish(port: PortMapping, address: str) -> None:
    """Undo ``publish``, only if the host port still maps to this address; idempotent."""
    with _host_locked():
        found = contents()
        if not found:
            return
        mine = [port.host_port, [address, port.container_port]]
        if mine in found.get(f"{port.protocol}_ports", []):
            log.info("unpublishing host port %d/%s", port.host_port, port.protocol)
            libnft.run(f"delete element {TABLE} {port.protocol}_ports {{ {port.host_port} }}")
        _maybe_drop()
