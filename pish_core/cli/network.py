"""``pish network create|ls|inspect|rm``: named networks for ``--net bridge``, as docker's.

Thin, like every command: the bridge driver's ``networks`` module does the work (importing it does not
import pyroute2: a definition is only a file until a container uses it).
"""
from __future__ import annotations

import json
from typing import Any

import click


@click.group()
def network() -> None:
    """Manage networks (joined with run --network NAME)."""


def _describe(net: Any) -> dict[str, Any]:
    from pish_core import paths

    return {"name": net.name, "driver": "bridge", "bridge": net.bridge, "subnet": str(net.subnet),
            "gateway": str(net.gateway), "created": net.created, "implicit": net.implicit,
            "hosts_file": str(paths.hosts_file(net.name)),
            "containers": {o["container"]: {"name": o["name"], "address": f"{a}/{net.subnet.prefixlen}"}
                           for a, o in net.allocations.items()}}


@network.command()
@click.option("--subnet", help="Subnet in CIDR form, e.g. 10.0.6.0/24 (default: a free /24 of 10.89.0.0/16).")
@click.option("--gateway", help="The bridge's address (default: the subnet's first).")
@click.argument("name")
def create(subnet: str | None, gateway: str | None, name: str) -> None:
    """Create a network NAME; its bridge is made when a container first joins."""
    from pish_drivers.network import ipam, networks

    net = ipam.parse_subnet(subnet) if subnet else None
    gw = ipam.parse_address(gateway, "--gateway") if gateway else None
    if gw is not None and net is None:
        raise click.UsageError("--gateway needs --subnet")
    click.echo(networks.create(name, net, gw).name)


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print names.")
def ls(quiet: bool) -> None:
    """List networks."""
    from pish_drivers.network import networks

    nets = networks.list_all()
    if quiet:
        for n in nets:
            click.echo(n.name)
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
@click.argument("names", nargs=-1, required=True)
def rm(names: tuple[str, ...]) -> None:
    """Remove networks; refused while a container uses one."""
    from pish_drivers.network import networks

    for name in names:
        networks.remove(name)
        click.echo(name)
