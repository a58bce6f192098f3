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
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from pish_core.errors import SpecError

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address


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


def overlapping(subnet: Net, others: Iterable[tuple[str, Net]]) -> str | None:
    """The name of the first of ``others`` (name, subnet) whose subnet overlaps ``subnet``, or None."""
    for name, other in others:
        if subnet.overlaps(other):
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


def check_request(subnet: Net, gateway: Addr, taken: Iterable[Addr], address: Addr, network: str) -> None:
    """Refuse an address asked for with ``--ip`` that is outside the pool or taken."""
    if address not in subnet or int(address) not in usable(subnet):
        raise SpecError(f"--ip {address} is outside the pool of network {network} ({subnet})")
    if address == gateway:
        raise SpecError(f"--ip {address} is the gateway of network {network}")
    if address in set(taken):
        raise SpecError(f"--ip {address} is already in use on network {network}")


def free(subnet: Net, gateway: Addr, taken: Iterable[Addr]) -> Iterator[Addr]:
    """The free addresses of ``subnet``, lowest first."""
    used = {int(a) for a in taken}
    used.add(int(gateway))
    for value in usable(subnet):
        if value not in used:
            yield Addr(value)


def next_free(subnet: Net, gateway: Addr, taken: Iterable[Addr], network: str) -> Addr:
    """The lowest free address: what a container without ``--ip`` gets."""
    for address in free(subnet, gateway, taken):
        return address
    raise PoolExhausted(f"network {network} has no free address left in {subnet}")
