"""``pish image import|ls|inspect|rm``: the image store; and ``pish demo-image``, the README's busybox tar."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from pish_core import log
from pish_core.cli.output import json_or_table


@click.command("demo-image")
@click.argument("out", required=False, type=click.Path(dir_okay=False, path_type=Path))
def demo_image(out: Path | None) -> None:
    """Build a busybox rootfs tar from the host's busybox-static (default /var/lib/pish/busybox.tar)."""
    from pish_core import paths
    from pish_core.image import busybox

    click.echo(busybox.build(out or paths.demo_image()))


@click.group()
def image() -> None:
    """Import, load, save, list, inspect, tag and remove images."""


def _pull_command() -> click.Command:
    from pish_core.cli.pull import pull

    return pull


image.add_command(_pull_command(), "pull")


def _save_command() -> click.Command:
    from pish_core.cli.transfer import save

    return save


image.add_command(_save_command(), "save")


@image.command("import")
@click.option("--name", help="NAME[:TAG] for the image (default: the names the archive gives, if any).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; print only the image ids.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(log.LEVELS, case_sensitive=False), help="How much pish says on stderr.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def import_(name: str | None, quiet: bool, log_level: str, path: Path) -> None:
    """Import PATH: an OCI image layout (directory or tar), a `docker save` archive, or a rootfs tar or
    directory. Layers already in the store are not unpacked again."""
    from pish_core.image import importer

    log.setup("warning" if quiet else log_level)
    for img in importer.import_path(path, name, quiet=quiet):
        click.echo(img.id if quiet else f"{img.short_id} {' '.join(img.names) or '<untagged>'}")


@image.command("load")
@click.option("-i", "--input", "path", required=True, type=click.Path(exists=True, path_type=Path),
              help="The archive: docker-archive (docker/podman/pish image save) or oci-archive.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image ids.")
def load(path: Path, quiet: bool) -> None:
    """Load the images of an archive `image save` wrote (as `image import`, under the archive's names)."""
    from pish_core.image import importer

    log.setup("warning" if quiet else "info")
    for img in importer.import_path(path, None, quiet=quiet):
        click.echo(img.id if quiet else f"Loaded image: {' '.join(img.names) or img.short_id}")


def _created(img: Any) -> str:
    created = img.config.get("created")
    if isinstance(created, str) and len(created) >= 16:
        return created[:16].replace("T", " ")
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(img.imported)) + " (imported)"


@image.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only image ids.")
@json_or_table
def list_images(quiet: bool, as_json: bool) -> None:
    """List the images in the store."""
    from pish_core.image import store
    from pish_core.image.progress import human

    images = store.list_images()
    if quiet:
        for img in images:
            click.echo(img.short_id)
        return
    if as_json:
        click.echo(json.dumps([_summary(img) for img in images], indent=2))
        return
    rows = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "LAYERS")]
    for img in images:
        for n in img.names or ["<none>:<none>"]:
            repo, tag = n.rsplit(":", 1)
            rows.append((repo, tag, img.short_id, _created(img), human(img.size), str(len(img.layers))))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[5])


def _summary(img: Any) -> dict[str, Any]:
    # A pulled image's source is REGISTRY/REPO:TAG@sha256:MANIFEST: its repo digest is REGISTRY/REPO@sha256:...
    repo_digests = []
    if "@sha256:" in img.source:
        name, _, manifest = img.source.partition("@")
        if ":" in name.rsplit("/", 1)[-1]:
            name = name.rsplit(":", 1)[0]
        repo_digests.append(f"{name}@{manifest}")
    from pish_core.image.pushrecord import pushed

    for entry in pushed(img.id):  # what `pish push` sent: the digest of the manifest pish made
        if isinstance(entry.get("repo_digest"), str) and entry["repo_digest"] not in repo_digests:
            repo_digests.append(entry["repo_digest"])
    return {"id": f"sha256:{img.id}", "names": img.names, "size": img.size, "layers": len(img.layers),
            "source": img.source, "imported": img.imported, "repo_digests": repo_digests}


@image.command("inspect")
@click.argument("refs", nargs=-1, required=True)
def inspect(refs: tuple[str, ...]) -> None:
    """Show images: names, config, layers (digests, sizes, where they are unpacked), source."""
    from pish_core import paths
    from pish_core.image import store

    out = []
    for ref in refs:
        img = store.lookup(ref)
        layers = []
        for diff_id in img.layers:
            try:
                meta = json.loads((paths.store_layer(diff_id) / "layer.json").read_text())
            except (OSError, ValueError):
                meta = {"diff_id": f"sha256:{diff_id}", "missing": True}
            layers.append({**meta, "path": str(paths.store_layer(diff_id) / "fs")})
        out.append({**_summary(img), "config": img.config, "layers": layers, "used_by": store.users(img)})
    click.echo(json.dumps(out, indent=2))


@image.command("tag")
@click.argument("source")
@click.argument("target")
def tag(source: str, target: str) -> None:
    """Give the image SOURCE (name or id) the name TARGET ([HOST[:PORT]/]NAME[:TAG])."""
    from pish_core.image import store

    log.setup("warning")
    with store.reading():
        img = store.lookup(source)
        store.tag(img.id, [store.parse_name(target)])


@image.command("rm")
@click.argument("refs", nargs=-1, required=True)
def rm(refs: tuple[str, ...]) -> None:
    """Remove images (a name of an image with several names is only untagged). Refused while a
    container uses the image; layers no other image uses are deleted."""
    from pish_core.image import store

    log.setup("warning")
    for ref in refs:
        for line in store.remove(ref):
            click.echo(line)
