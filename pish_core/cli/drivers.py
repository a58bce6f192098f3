"""``pish drivers list``: every driver pish can find through entry points, and whether it works here."""
from __future__ import annotations

import dataclasses
import json

import click

from pish_core.cli.output import json_or_table


@click.group()
def drivers() -> None:
    """Inspect the storage, limits, network and isolation drivers."""


@drivers.command("list")
@json_or_table
def list_drivers(as_json: bool) -> None:
    """List drivers: kind, name, package, version, and available or why not."""
    from pish_core.drivers import describe_all

    infos = list(describe_all())
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    rows = [("KIND", "NAME", "PACKAGE", "VERSION", "STATUS")]
    rows += [(i.kind, i.name, i.package, i.version, "available" if i.available else f"unavailable: {i.reason}")
             for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[4])
