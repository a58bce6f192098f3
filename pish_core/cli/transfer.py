"""``pish export``, ``pish commit``, ``pish push`` and ``pish image save``: what leaves pish."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from pish_core import log
from pish_core.errors import PishError


def refuse_terminal(out: Path | None) -> None:
    """A tar is never written to a terminal, as docker refuses to."""
    if out is None and sys.stdout.isatty():
        raise PishError("refusing to write a tar archive to a terminal: use -o FILE or redirect stdout")


@click.command("export")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (default: stdout, unless it is a terminal).")
@click.argument("container")
def export(out: Path | None, container: str) -> None:
    """Write CONTAINER's whole root filesystem (its image with its changes) as one flat tar. The
    container must exist with its files (created, running or paused)."""
    from pish_core.image import containerfs, layertar
    from pish_core.image.save import output

    log.setup("warning")
    refuse_terminal(out)
    with containerfs.held(container) as fs, output(out) as f:
        layertar.write_merged(fs.merged(), f)


@click.command("commit")
@click.option("-m", "--message", default="", help="A comment for the new layer's history entry.")
@click.option("-a", "--author", default="", help="The image's author.")
@click.option("-c", "--change", "changes", multiple=True, metavar="INSTRUCTION",
              help="Change the config: CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL or EXPOSE, "
                   "in Dockerfile syntax (e.g. -c 'CMD [\"sh\"]'). Repeatable.")
@click.option("-p/--no-pause", "--pause", "pause", default=True, show_default=True,
              help="Pause a running container while its files are read.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(log.LEVELS, case_sensitive=False), help="How much pish says on stderr.")
@click.argument("container")
@click.argument("image", required=False)
def commit(message: str, author: str, changes: tuple[str, ...], pause: bool, log_level: str,
           container: str, image: str | None) -> None:
    """Make a new image from CONTAINER: its image's layers plus one layer of its changes; name it
    IMAGE (NAME[:TAG]). Prints the new image's id."""
    from pish_core.image import commit as do

    log.setup(log_level)
    img = do.commit(container, image, message=message, author=author, changes=changes, pause=pause)
    click.echo(f"sha256:{img.id}")


@click.command("save")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (default: stdout, unless it is a terminal).")
@click.option("--format", "fmt", default="docker-archive", show_default=True,
              type=click.Choice(["docker-archive", "oci-archive"]),
              help="docker-archive (docker save's, podman load reads it) or oci-archive (an OCI layout in a tar).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(log.LEVELS, case_sensitive=False), help="How much pish says on stderr.")
@click.argument("images", nargs=-1, required=True)
def save(out: Path | None, fmt: str, log_level: str, images: tuple[str, ...]) -> None:
    """Write IMAGES (names or ids) into one archive that `pish image load`, `podman load` and
    `docker load` read. Layers are written again from the store (see docs/images.md)."""
    from pish_core.image import save as do

    log.setup(log_level)
    refuse_terminal(out)
    do.save(images, out, fmt)


@click.command("push")
@click.option("--tls-verify", "tls_verify", default="true", show_default=True, metavar="BOOL",
              help="Verify the registry's TLS certificate; false: talk plain HTTP.")
@click.option("--format", "fmt", default="oci", show_default=True, type=click.Choice(["oci", "docker"]),
              help="The manifest's format: OCI's, or docker's schema 2 (v2s2).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the pushed manifest's digest.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(log.LEVELS, case_sensitive=False), help="How much pish says on stderr.")
@click.argument("image")
@click.argument("destination", required=False)
def push(tls_verify: str, fmt: str, quiet: bool, log_level: str, image: str, destination: str | None) -> None:
    """Push IMAGE (a name of the store, [HOST[:PORT]/]NAME[:TAG]) to its registry, or to DESTINATION.
    Blobs the registry has are not sent again. Prints the pushed manifest's digest."""
    from pish_core.cli.pull import _tls_verify
    from pish_core.image.push import push as do

    log.setup("warning" if quiet else log_level)
    result = do(image, destination, tls_verify=_tls_verify(tls_verify), docker_format=fmt == "docker")
    click.echo(f"sha256:{result.digest}")
