"""IPAM: which addresses of a network's subnet are free, and which one a new container gets.

Pure arithmetic on ``ipaddress`` objects, no files and no locks (``networks.py`` keeps the state and
holds the lock), so every rule here is unit-tested without root.

The rules, as docker's default IPAM has them:

- A subnet's first address names the network and its last is the broadcast address: neither is ever
  given out (except in a /31 or /32, which have no such addresses).
- The gateway is the subnet's first usable address unless ``--gateway`` says otherwise; it lives on
  the bridge, so no container gets it.
- A container without ``--ip`` gets the lowest free address. Released addresses are reused, lowest
  first, so a container started again usually gets its old address back.
- IPv6 (``--ipv6``): a /64, a unique local one (RFC 4193: ``fd`` + 40 random bits + subnet 0) unless
  ``--subnet-v6`` gives one; the gateway is ``::1`` of it and containers get ``::2`` upwards, lowest
  free first, as docker's IPAM gives them.
"""
from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable, Iterator

from pish_core.errors import SpecError

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address
Net6 = ipaddress.IPv6Network
Addr6 = ipaddress.IPv6Address
#: Unique local addresses (RFC 4193) with the L bit set: where a generated IPv6 subnet comes from.
ULA = Net6("fd00::/8")


class PoolExhausted(SpecError):
    """Every usable address of the subnet is taken."""


def parse_subnet(text: str) -> Net:
    """``10.0.6.0/24``; host bits set (``10.0.6.7/24``) are refused, as docker refuses them."""
    try:
        subnet = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise SpecError(f"invalid subnet {text!r}: {exc}; use CIDR form, e.g. 10.0.6.0/24") from None
    if subnet.prefixlen > 30:
        raise SpecError(f"invalid subnet {text!r}: too small for a gateway and a container (use /30 or larger)")
    return subnet


def parse_address(text: str, what: str) -> Addr:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise SpecError(f"invalid {what} {text!r}: not an IPv4 address") from None


def usable(subnet: Net) -> range:
    """The integer values of the addresses that may be given to something on ``subnet``."""
    first, last = int(subnet.network_address), int(subnet.broadcast_address)
    if subnet.prefixlen >= 31:
        return range(first, last + 1)
    return range(first + 1, last)


def default_gateway(subnet: Net) -> Addr:
    return Addr(usable(subnet)[0])


def check_gateway(subnet: Net, gateway: Addr) -> None:
    """The gateway must be a usable address of its subnet."""
    if int(gateway) not in usable(subnet):
        raise SpecError(f"gateway {gateway} is not a usable address of subnet {subnet}")


def overlapping(subnet: Net | Net6, others: Iterable[tuple[str, Net | Net6]]) -> str | None:
    """The name of the first of ``others`` (name, subnet) whose subnet overlaps ``subnet``, or None."""
    for name, other in others:
        if subnet.version == other.version and subnet.overlaps(other):
            return name
    return None


def pick_subnet(pool: Net, prefixlen: int, taken: Iterable[Net]) -> Net:
    """The first ``/prefixlen`` of ``pool`` overlapping none of ``taken``: a subnet for
    ``pish network create`` without ``--subnet`` (podman picks 10.89.N.0/24 the same way)."""
    taken = list(taken)
    for candidate in pool.subnets(new_prefix=prefixlen):
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise SpecError(f"no free /{prefixlen} subnet left in {pool}: give one with --subnet")


def check_request(subnet: Net, gateway: Addr, taken: Iterable[Addr | int], address: Addr, network: str) -> None:
    """Refuse an address asked for with ``--ip`` that is outside the pool or taken."""
    if address not in subnet or int(address) not in usable(subnet):
        raise SpecError(f"--ip {address} is outside the pool of network {network} ({subnet})")
    if address == gateway:
        raise SpecError(f"--ip {address} is the gateway of network {network}")
    if int(address) in {int(a) for a in taken}:
        raise SpecError(f"--ip {address} is already in use on network {network}")


def free(subnet: Net, gateway: Addr, taken: Iterable[Addr | int]) -> Iterator[Addr]:
    """The free addresses of ``subnet``, lowest first (``taken`` as addresses or their integers)."""
    used = {int(a) for a in taken}
    used.add(int(gateway))
    for value in usable(subnet):
        if value not in used:
            yield Addr(value)


def next_free(subnet: Net, gateway: Addr, taken: Iterable[Addr | int], network: str) -> Addr:
    """The lowest free address: what a container without ``--ip`` gets."""
    for address in free(subnet, gateway, taken):
        return address
    raise PoolExhausted(f"network {network} has no free address left in {subnet}")


# -- IPv6 --------------------------------------------------------------------------------------------


#: loopback, unspecified, IPv4-compatible and IPv4-mapped addresses: never a network's
_RESERVED6 = Net6("::/8")


def parse_subnet6(text: str) -> Net6:
    """``--subnet-v6 fdXX:...::/64``: an IPv6 subnet with no host bits set, /64 to /120."""
    try:
        subnet = ipaddress.IPv6Network(text, strict=True)
    except ValueError as exc:
        raise SpecError(f"invalid --subnet-v6 {text!r}: {exc}; use CIDR form, e.g. fd12:3456:789a::/64") from None
    if not 48 <= subnet.prefixlen <= 120:
        raise SpecError(f"invalid --subnet-v6 {text!r}: use a prefix from /48 to /120 (a /64 is usual)")
    if subnet.is_multicast or subnet.is_link_local or subnet.overlaps(_RESERVED6):
        raise SpecError(f"invalid --subnet-v6 {text!r}: not a unicast subnet (use a ULA, fd00::/8)")
    return subnet


def random_ula(taken: Iterable[Net6], tries: int = 16) -> Net6:
    """A /64 of a random ULA /48 (RFC 4193: a 40-bit global id, subnet id 0), overlapping none of ``taken``."""
    taken = list(taken)
    for _ in range(tries):
        global_id = secrets.randbits(40)
        candidate = Net6(((int(ULA.network_address) | (global_id << 80)), 64))
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise SpecError("no free IPv6 subnet found: give one with --subnet-v6")


def gateway6(subnet: Net6) -> Addr6:
    """The bridge's IPv6 address: ``::1`` of the subnet."""
    return subnet.network_address + 1


def next_free6(subnet: Net6, taken: Iterable[Addr6], network: str) -> Addr6:
    """The lowest free IPv6 address of ``subnet`` after the gateway (``::2`` upwards)."""
    used = set(taken)
    first, last = int(subnet.network_address) + 2, int(subnet.broadcast_address)
    for value in range(first, min(last, first + len(used) + 1) + 1):
        address = Addr6(value)
        if address not in used:
            return address
    raise PoolExhausted(f"network {network} has no free IPv6 address left in {subnet}")
