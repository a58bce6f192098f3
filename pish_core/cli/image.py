"""``pish demo-image``: build the busybox rootfs tar that the README's demo runs."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("demo-image")
@click.argument("out", required=False, type=click.Path(dir_okay=False, path_type=Path))
def demo_image(out: Path | None) -> None:
    """Build a busybox rootfs tar from the host's busybox-static (default /var/lib/pish/busybox.tar)."""
    from pish_core import paths
    from pish_core.image import busybox

    click.echo(busybox.build(out or paths.demo_image()))
