"""``pish network create|ls|inspect|rm|connect|disconnect``: named networks for ``--net bridge``, as docker's.

Thin, like every command: the bridge driver (``bridge``, ``networks``) does the work. ``create`` makes the
network's bridge at once and ``rm`` removes it, as docker does; ``ls`` and ``inspect`` read files only.
"""
from __future__ import annotations

import json
from typing import Any

import click

from pish_core import log
from pish_core.cli.output import json_or_table

#: create and rm change the host (the bridge, its NAT): their lines, as a run's, with --log-level info
_log_level = click.option("--log-level", default="warning", type=click.Choice(log.LEVELS), show_default=True)


@click.group()
def network() -> None:
    """Manage networks (joined with run --network NAME)."""


def _describe(net: Any) -> dict[str, Any]:
    from pish_core import paths

    def member(address: str, o: dict[str, Any]) -> dict[str, Any]:
        out = {"name": o["name"], "address": f"{address}/{net.subnet.prefixlen}", "aliases": o.get("aliases", [])}
        if o.get("address6"):
            out["address6"] = f"{o['address6']}/{net.subnet6.prefixlen}"
        return out

    return {"name": net.name, "driver": "bridge", "bridge": net.bridge, "subnet": str(net.subnet),
            "gateway": str(net.gateway), "ipv6": net.subnet6 is not None,
            "subnet6": str(net.subnet6) if net.subnet6 else None,
            "gateway6": str(net.gateway6) if net.gateway6 else None,
            "created": net.created, "implicit": net.implicit,
            "hosts_file": str(paths.hosts_file(net.name)),
            "containers": {o["container"]: member(a, o) for a, o in net.allocations.items()}}


@network.command()
@click.option("--subnet", help="Subnet in CIDR form, e.g. 10.0.6.0/24 (default: a free /24 of 10.89.0.0/16).")
@click.option("--gateway", help="The bridge's address (default: the subnet's first).")
@click.option("--ipv6", is_flag=True, help="Give the network an IPv6 /64 too (default: a random ULA, fdXX::/64).")
@click.option("--subnet-v6", help="The IPv6 subnet, e.g. fd12:3456:789a::/64 (implies --ipv6).")
@_log_level
@click.argument("name")
def create(subnet: str | None, gateway: str | None, ipv6: bool, subnet_v6: str | None, log_level: str,
           name: str) -> None:
    """Create a network NAME and its bridge (kept until `network rm`)."""
    from pish_drivers.network import bridge, ipam

    log.setup(log_level)
    net = ipam.parse_subnet(subnet) if subnet else None
    gw = ipam.parse_address(gateway, "--gateway") if gateway else None
    if gw is not None and net is None:
        raise click.UsageError("--gateway needs --subnet")
    net6 = ipam.parse_subnet6(subnet_v6) if subnet_v6 else None
    click.echo(bridge.create_network(name, net, gw, ipv6=ipv6, subnet6=net6).name)


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print names.")
@json_or_table
def ls(quiet: bool, as_json: bool) -> None:
    """List networks."""
    from pish_drivers.network import networks

    nets = networks.list_all()
    if quiet:
        for n in nets:
            click.echo(n.name)
        return
    if as_json:
        click.echo(json.dumps([_describe(n) for n in nets], indent=2))
        return
    table = [("NAME", "SUBNET", "GATEWAY", "CONTAINERS")]
    table += [(n.name, str(n.subnet), str(n.gateway), str(len(n.allocations))) for n in nets]
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@network.command()
@click.argument("names", nargs=-1, required=True)
def inspect(names: tuple[str, ...]) -> None:
    """Print networks as JSON: subnet, gateway and the containers on each."""
    from pish_drivers.network import networks

    click.echo(json.dumps([_describe(networks.require(n)) for n in names], indent=2))


@network.command()
@_log_level
@click.argument("names", nargs=-1, required=True)
def rm(log_level: str, names: tuple[str, ...]) -> None:
    """Remove networks and their bridges; refused while a container uses one."""
    from pish_drivers.network import bridge

    log.setup(log_level)
    for name in names:
        bridge.remove_network(name)
        click.echo(name)


@network.command()
@click.option("--alias", "aliases", multiple=True, help="Another name the container answers to on NETWORK.")
@click.option("--ip", help="Its IPv4 address on NETWORK (default: the next free one).")
@click.argument("network_name", metavar="NETWORK")
@click.argument("container")
def connect(aliases: tuple[str, ...], ip: str | None, network_name: str, container: str) -> None:
    """Connect a running CONTAINER to NETWORK: a new interface (eth1, ...) with an address on it."""
    from pish_core.flags import parse_network_alias
    from pish_drivers.network import bridge, ipam

    checked = tuple(parse_network_alias(a) for a in aliases)
    bridge.connect(network_name, container, checked, ipam.parse_address(ip, "--ip") if ip else None)


@network.command()
@click.argument("network_name", metavar="NETWORK")
@click.argument("container")
def disconnect(network_name: str, container: str) -> None:
    """Disconnect a running CONTAINER from a NETWORK it was connected to with `network connect`."""
    from pish_drivers.network import bridge

    bridge.disconnect(network_name, container)
