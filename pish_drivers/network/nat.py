"""The host as a router for its containers: forwarding, outbound masquerade and published ports.

Everything pish asks of netfilter lives in one nftables table of its own, ``table ip pish``, so it
never touches anyone else's rules and ``nft list table ip pish`` shows all of it. The rules never
change; what changes is the content of four named sets and maps:

- ``subnets`` and ``bridges``: one element each per network in use;
- ``tcp_ports`` and ``udp_ports``: host port -> container address . container port, one per ``-p``
  published on every host address;
- ``tcp_addr_ports`` and ``udp_addr_ports``: host address . host port -> the same, one per
  ``-p IP:...``; their rules come first, so a port published on one address is found before the
  every-address maps are looked at (and a packet to another address finds nothing in either).

so a network or a port comes and goes with ``add element``/``delete element`` (no rule handles to
track), and the kernel's maps are themselves the host-wide registry of published ports: ``publish``
reads them, under the lock, to refuse a port already taken on the same address or on every address.
The table is made by the first user and deleted when every set and map is empty again, under a
host-wide lock (``paths.host_lock``).

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
import dataclasses
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
    set isolated { type ifname . ifname; }
    map tcp_ports { type inet_service : ipv4_addr . inet_service; }
    map udp_ports { type inet_service : ipv4_addr . inet_service; }
    map tcp_addr_ports { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
    map udp_addr_ports { type ipv4_addr . inet_service : ipv4_addr . inet_service; }

    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local dnat ip to ip daddr . tcp dport map @tcp_addr_ports
        fib daddr type local dnat ip to ip daddr . udp dport map @udp_addr_ports
        fib daddr type local dnat ip to tcp dport map @tcp_ports
        fib daddr type local dnat ip to udp dport map @udp_ports
    }
    chain output {
        type nat hook output priority -100; policy accept;
        fib daddr type local dnat ip to ip daddr . tcp dport map @tcp_addr_ports
        fib daddr type local dnat ip to ip daddr . udp dport map @udp_addr_ports
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
        iifname . oifname @isolated drop
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
def host_locked() -> Iterator[None]:
    with state.flocked(paths.host_lock("nftables")):
        yield


def _exists(table: str = TABLE) -> bool:
    try:
        libnft.run(f"list table {table}")
    except libnft.NftError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _ensure_table() -> None:
    if not _exists():
        log.info("creating nftables table %s (forwarding, masquerade, published ports)", TABLE)
        libnft.run(_RULESET)


def _add_address_maps() -> None:
    """Bring a table made by a pish older than ``-p IP:...`` up to date, as containers may hold it for
    a long time: the two maps, and their rules in front of the every-address ones."""
    log.info("adding the per-address port maps to nftables table %s", TABLE)
    commands = []
    for proto in ("udp", "tcp"):  # each rule is inserted at the head: tcp ends up first
        commands.append(f"add map {TABLE} {proto}_addr_ports "
                        "{ type ipv4_addr . inet_service : ipv4_addr . inet_service; }")
        commands += [f"insert rule {TABLE} {chain} fib daddr type local "
                     f"dnat ip to ip daddr . {proto} dport map @{proto}_addr_ports"
                     for chain in ("prerouting", "output")]
    libnft.run("\n".join(commands))


def contents(table: str = TABLE) -> dict[str, list[Any]]:
    """The elements of every set and map of the table ({} if there is no table): for ``maybe_drop``
    and for tests. Map elements are [key, [address, port]], the key [address, port] in the
    ``*_addr_ports`` maps; ``isolated`` holds [bridge, bridge] pairs."""
    try:
        objects = libnft.list_json(f"table {table}")
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
    if isinstance(elem, dict) and "concat" in elem:  # a set of concatenations: [bridge, bridge]
        return list(elem["concat"])
    if isinstance(elem, list):  # a map element: [key or {"concat": [...]}, {"concat": [addr, port]}]
        return [value.get("concat", value) if isinstance(value, dict) else value for value in elem]
    return elem


def maybe_drop(table: str = TABLE) -> None:
    """Delete the table once no set or map holds anything: pish's last user is gone."""
    found = contents(table)
    if found and not any(found.values()):
        log.info("removing nftables table %s", table)
        libnft.run(f"delete table {table}")


def delete_element_commands(*pairs: tuple[str, str], table: str = TABLE) -> list[str]:
    """Deleting set elements that may or may not be there: adding first makes the delete always valid,
    and both happen in one transaction (nft 1.0.6 has no ``destroy element`` yet)."""
    return [f"add element {table} {name} {{ {elem} }}; delete element {table} {name} {{ {elem} }}"
            for name, elem in pairs]


def isolation_pairs(bridge: str, others: list[str]) -> list[str]:
    """The ``isolated`` elements that keep ``bridge`` and each of ``others`` apart, both ways, in nft
    syntax: forwarding between two of pish's bridges is dropped (docker's DOCKER-ISOLATION chains)."""
    pairs = []
    for other in others:
        if other != bridge:
            pairs += [f'"{bridge}" . "{other}"', f'"{other}" . "{bridge}"']
    return pairs


def isolate_commands(bridge: str, found: dict[str, list[Any]], table: str = TABLE) -> list[str]:
    """Keeping ``bridge`` apart from every other bridge of ``table`` (whose contents are ``found``); a
    table made by a pish older than network isolation gets the ``isolated`` set and its drop rule at the
    head of ``forward`` first."""
    commands = []
    if "isolated" not in found:
        log.info("adding network isolation to nftables table %s", table)
        commands += [f"add set {table} isolated {{ type ifname . ifname; }}",
                     f"insert rule {table} forward iifname . oifname @isolated drop"]
    pairs = isolation_pairs(bridge, [str(b) for b in found.get("bridges", [])])
    if pairs:
        log.info("isolating bridge %s from %d other network(s) of pish", bridge, len(pairs) // 2)
        commands.append(f"add element {table} isolated {{ {', '.join(pairs)} }}")
    return commands


def network_commands(subnet: str, bridge: str, found: dict[str, list[Any]], table: str, ruleset: str) -> list[str]:
    """Adding a network (``subnet`` behind ``bridge``) to ``table``, whose contents are ``found`` ({}: no
    table yet, so ``ruleset`` makes it first), as one transaction: the table, the network's isolation
    from the other bridges, its ``subnets`` and ``bridges`` elements."""
    commands = []
    if not found:
        log.info("creating nftables table %s (forwarding, masquerade, published ports)", table)
        commands.append(ruleset)
    else:
        commands += isolate_commands(bridge, found, table)
    log.info("masquerading %s leaving through other interfaces than %s", subnet, bridge)
    commands.append(f'add element {table} subnets {{ {subnet} }}; add element {table} bridges {{ "{bridge}" }}')
    return commands


def network_removal_commands(subnet: str, bridge: str, found: dict[str, list[Any]], table: str) -> list[str]:
    """Undoing ``network_commands`` in one transaction: the table itself if this network is all it still
    holds (which deletes everything in it), else the isolation pairs naming ``bridge`` and its two elements."""
    pairs = [(a, b) for a, b in found.get("isolated", [])]
    others = [b for b in found.get("bridges", []) if b != bridge]
    mapped = any(found.get(name) for name in found if name.endswith("_ports"))
    if not others and not mapped and all(bridge in pair for pair in pairs):
        log.info("removing nftables table %s", table)
        return [f"delete table {table}"]
    commands = []
    mine = [f'"{a}" . "{b}"' for a, b in pairs if bridge in (a, b)]
    if mine:
        commands.append(f"delete element {table} isolated {{ {', '.join(mine)} }}")
    return commands + delete_element_commands(("subnets", subnet), ("bridges", f'"{bridge}"'), table=table)


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
    """Forward and masquerade for ``subnet`` behind ``bridge``: one look at the table, one transaction
    (four libnftables calls had each parsed or listed the table: ~5 ms of a cold bridge run)."""
    with host_locked():
        libnft.run("\n".join(network_commands(str(subnet), bridge, contents(), TABLE, _RULESET)))
    enable_forwarding()


def remove_network(subnet: str, bridge: str) -> None:
    """Undo ``add_network``; idempotent. The table goes with its last network (and port). One look at the
    table, one transaction."""
    with host_locked():
        found = contents()
        if found:
            libnft.run("\n".join(network_removal_commands(subnet, bridge, found, TABLE)))


def clashes(one: PortMapping, other: PortMapping) -> bool:
    """True if two mappings would take the same host port: same protocol and port, and the same
    address or either one on every address (a host socket would clash the same way)."""
    return (one.protocol == other.protocol and one.host_port == other.host_port
            and (not one.host_ip or not other.host_ip or one.host_ip == other.host_ip))


def _published(found: dict[str, list[Any]], protocol: str) -> list[tuple[PortMapping, str]]:
    """What the maps in ``found`` publish for ``protocol``: each mapping, with its container's address."""
    every = [(PortMapping(key, value[1], protocol), value[0]) for key, value in found.get(f"{protocol}_ports", [])]
    return every + [(PortMapping(key[1], value[1], protocol, key[0]), value[0])
                    for key, value in found.get(f"{protocol}_addr_ports", [])]


def _where(port: PortMapping) -> str:
    """``8080/tcp``, or ``127.0.0.1:8080/tcp``: the host side, for messages."""
    return f"{port.host_ip + ':' if port.host_ip else ''}{port.host_port}/{port.protocol}"


def _socket_kind(port: PortMapping) -> int:
    return socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM


def _check_host_port_free(port: PortMapping) -> None:
    """Refuse a host port a program on the host listens on: DNAT would silently hide it."""
    with socket.socket(socket.AF_INET, _socket_kind(port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((port.host_ip or "0.0.0.0", port.host_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SpecError(f"host port {_where(port)} is in use on the host") from None
            raise


def _pick_host_port(port: PortMapping, taken: list[PortMapping]) -> PortMapping:
    """``port`` with a host port the kernel hands out to a bind to port 0: from its ephemeral range
    (``ip_local_port_range``, where docker picks too) and free on the host, so only pish's own maps,
    which no socket shows, are left to check."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, _socket_kind(port)) as sock:
            sock.bind((port.host_ip or "0.0.0.0", 0))
            picked = dataclasses.replace(port, host_port=sock.getsockname()[1])
        if not any(clashes(picked, other) for other in taken):
            return picked
    raise SpecError(f"no free host port for -p {port.container_port}/{port.protocol}: "
                    "the ephemeral range is published")


def _element(port: PortMapping) -> tuple[str, str]:
    """The map that holds ``port`` and its key there, in nft syntax."""
    if port.host_ip:
        return f"{port.protocol}_addr_ports", f"{port.host_ip} . {port.host_port}"
    return f"{port.protocol}_ports", str(port.host_port)


def publish(port: PortMapping, address: str) -> PortMapping:
    """DNAT the host's ``port.host_port`` (on ``port.host_ip``, or every address) to
    ``address:port.container_port``; refuse a port taken; pick one for host port 0. Return the
    mapping as published, so the caller can journal the port picked."""
    with host_locked():
        found = contents()
        taken = [mapping for mapping, _ in _published(found, port.protocol)]
        if port.host_port == 0:
            port = _pick_host_port(port, taken)
        elif any(clashes(port, other) for other in taken):
            raise SpecError(f"host port {_where(port)} is already published")
        else:
            _check_host_port_free(port)
        if not found:
            _ensure_table()
        elif f"{port.protocol}_addr_ports" not in found:
            _add_address_maps()
        name, key = _element(port)
        try:
            libnft.run(f"add element {TABLE} {name} {{ {key} : {address} . {port.container_port} }}")
        except libnft.NftError as exc:
            if exc.errno == errno.EEXIST:
                maybe_drop()
                raise SpecError(f"host port {_where(port)} is already published") from None
            raise
        log.info("publishing host port %s on %s:%d", _where(port), address, port.container_port)
        return port


def unpublish(port: PortMapping, address: str) -> None:
    """Undo ``publish``, only if the host port still maps to this address; idempotent. Host port 0
    (killed before the port picked was journaled): whichever host port maps to this address."""
    with host_locked():
        found = contents()
        if not found:
            return
        for mine, to in _published(found, port.protocol):
            if (to == address and mine.container_port == port.container_port and mine.host_ip == port.host_ip
                    and port.host_port in (0, mine.host_port)):
                log.info("unpublishing host port %s", _where(mine))
                name, key = _element(mine)
                libnft.run(f"delete element {TABLE} {name} {{ {key} }}")
        maybe_drop()
