"""Images out of the store as blobs: ``pish image save`` (archives) and ``pish push`` share ``make_image``.

The store keeps no blob (``store.py``): each layer is written again from its directory by ``layertar``,
deterministically, so saving or pushing the same image twice gives the same digests. A layer pish made
itself (``commit``) comes out byte for byte as it went in; a layer imported or pulled from elsewhere was
written by another tar writer and usually does not (order, padding, compression), so its ``diff_id``
changes and the config is rewritten with the new ones: the saved image's id (the config's digest) is then
not the store's. podman does the same for the same reason (its storage keeps layers unpacked too).

Two archive formats, as ``docker save`` and ``podman save`` write them:

- ``docker-archive``: ``manifest.json`` (Config, RepoTags, Layers), ``repositories``, the config as
  ``<id>.json`` and each layer as an uncompressed ``<diff_id>.tar``;
- ``oci-archive``: an OCI image layout in a tar: ``oci-layout``, ``index.json`` (one manifest per image,
  named by ``org.opencontainers.image.ref.name``), ``blobs/sha256/...`` with gzip'd layers.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pish_core import log, paths
from pish_core.errors import ImageError
from pish_core.image import layertar, store

_log = log.get("image")
FORMATS = ("docker-archive", "oci-archive")
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass(frozen=True)
class MadeLayer:
    path: Path  # the blob, in the caller's temporary directory
    digest: str  # hex sha256 of the blob as written
    size: int
    diff_id: str  # hex sha256 of the uncompressed tar


@dataclass(frozen=True)
class MadeImage:
    config: bytes  # the config as saved or pushed (diff_ids those of the layers made)
    config_digest: str  # hex
    layers: list[MadeLayer]
    names: list[str]

    def manifest(self, docker: bool = False) -> bytes:
        """The image manifest of this image: OCI's, or docker schema 2's (``docker``)."""
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                       "digest": f"sha256:{self.config_digest}", "size": len(self.config)},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP,
                        "digest": f"sha256:{layer.digest}", "size": layer.size} for layer in self.layers],
        }
        return json.dumps(doc, separators=(",", ":")).encode()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A directory for the blobs being made, in the layer store (on its filesystem, with its space):
    ``.tmp-dir-PID``, which ``pish gc`` removes if this process is killed."""
    paths.layers_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = paths.layers_dir() / f".tmp-dir-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_layer(diff_id: str, workdir: Path, compressed: bool) -> MadeLayer:
    """Write the stored layer ``diff_id`` as a blob into ``workdir`` (gzip'd, or a plain tar)."""
    root = paths.store_layer(diff_id) / "fs"
    if not root.is_dir():
        raise ImageError(f"layer sha256:{diff_id[:12]} is missing from the store: remove the image and import it again")
    from pish_core.image.containerfs import store_map

    idmap = store_map()  # rootless: the store holds the user's ids, the image's are recorded
    path = workdir / f"{diff_id}.{'tar.gz' if compressed else 'tar'}"
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
        if compressed:
            made = layertar.write_layer(root, f, idmap)
            return MadeLayer(path, made.digest, made.size, made.diff_id)
        counted = layertar.HashingWriter(f)
        layertar.write_layer_tar(root, counted, idmap)  # type: ignore[arg-type]
        return MadeLayer(path, counted.hexdigest(), counted.size, counted.hexdigest())


def make_image(img: store.Image, workdir: Path, compressed: bool,
               cache: dict[str, MadeLayer] | None = None) -> MadeImage:
    """The blobs of ``img``: its layers made again, its config with their diff_ids."""
    cache = {} if cache is None else cache
    layers = []
    for diff_id in img.layers:
        if diff_id not in cache:
            cache[diff_id] = make_layer(diff_id, workdir, compressed)
        layers.append(cache[diff_id])
    raw = (paths.image_record(img.id) / "config.json").read_bytes()  # byte for byte: its digest is the id
    if [layer.diff_id for layer in layers] != img.layers:
        config: dict[str, Any] = json.loads(raw)
        config["rootfs"] = {"type": "layers", "diff_ids": [f"sha256:{layer.diff_id}" for layer in layers]}
        raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        _log.debug("image %s: layers made again differ from the stored ones; config rewritten", img.short_id)
    from pish_core.image.digest import sha256_bytes

    return MadeImage(raw, sha256_bytes(raw), layers, img.names)


# -- archives ----------------------------------------------------------------------------------------


class _Archive:
    """The output tar: members from bytes or from files, fixed metadata (the same images, the same tar)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.dirs: set[str] = set()

    def _info(self, name: str, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o644, 0, "", ""
        return info

    def directory(self, name: str) -> None:
        if name not in self.dirs:
            info = self._info(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            self.tar.addfile(info)
            self.dirs.add(name)

    def data(self, name: str, data: bytes) -> None:
        import io

        self.tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def file(self, name: str, path: Path) -> None:
        with open(path, "rb") as f:
            self.tar.addfile(self._info(name, os.fstat(f.fileno()).st_size), f)

    def close(self) -> None:
        self.tar.close()


def _docker_archive(images: Sequence[MadeImage], archive: _Archive) -> None:
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    done: set[str] = set()
    for made in images:
        for layer in made.layers:
            if layer.diff_id not in done:
                archive.file(f"{layer.diff_id}.tar", layer.path)
                done.add(layer.diff_id)
        if made.config_digest not in done:
            archive.data(f"{made.config_digest}.json", made.config)
            done.add(made.config_digest)
        manifest.append({"Config": f"{made.config_digest}.json", "RepoTags": made.names,
                         "Layers": [f"{layer.diff_id}.tar" for layer in made.layers]})
        for name in made.names:
            repo, tag = name.rsplit(":", 1)
            repositories.setdefault(repo, {})[tag] = made.layers[-1].diff_id if made.layers else made.config_digest
    archive.data("manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
    archive.data("repositories", json.dumps(repositories, separators=(",", ":")).encode())


def _oci_archive(images: Sequence[MadeImage], archive: _Archive) -> None:
    archive.data("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    for d in ("blobs/", "blobs/sha256/"):
        archive.directory(d)
    done: set[str] = set()
    index = []

    def blob(hexd: str, data: bytes | None = None, path: Path | None = None) -> None:
        if hexd in done:
            return
        done.add(hexd)
        if path is not None:
            archive.file(f"blobs/sha256/{hexd}", path)
        else:
            archive.data(f"blobs/sha256/{hexd}", data or b"")

    from pish_core.image.digest import sha256_bytes

    for made in images:
        for layer in made.layers:
            blob(layer.digest, path=layer.path)
        blob(made.config_digest, made.config)
        manifest = made.manifest()
        blob(sha256_bytes(manifest), manifest)
        desc = {"mediaType": OCI_MANIFEST, "digest": f"sha256:{sha256_bytes(manifest)}", "size": len(manifest)}
        for name in made.names or [""]:
            ann = {"org.opencontainers.image.ref.name": name, "io.containerd.image.name": name} if name else {}
            index.append({**desc, **({"annotations": ann} if ann else {})})
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index}
    archive.data("index.json", json.dumps(doc, separators=(",", ":")).encode())


def _names_for(refs: Sequence[str]) -> list[tuple[store.Image, list[str]]]:
    """Each image asked for once, with the names it is saved under: the one asked by, else all it has."""
    out: dict[str, tuple[store.Image, list[str]]] = {}
    for ref in refs:
        img = store.lookup(ref)
        asked: list[str] = []
        with contextlib.suppress(ImageError):
            parsed = store.parse_name(ref)
            if parsed in img.names:
                asked = [parsed]
        _, names = out.setdefault(img.id, (img, []))
        for n in asked or img.names:
            if n not in names:
                names.append(n)
    return list(out.values())


@contextlib.contextmanager
def output(path: Path | None) -> Iterator[IO[bytes]]:
    """A tar's file, opened to write (removed again if writing fails, when it is a regular file), or stdout."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ImageError(f"cannot write {path}: {exc.strerror}") from None
    regular = stat.S_ISREG(os.fstat(fd).st_mode)  # not /dev/null or a fifo: those are never removed
    ok = False
    try:
        with open(fd, "wb") as f:
            yield f
        ok = True
    finally:
        if not ok and regular:
            path.unlink(missing_ok=True)


def save(refs: Sequence[str], out: Path | None, fmt: str = "docker-archive") -> list[MadeImage]:
    """Write the images ``refs`` name as one archive of format ``fmt`` to ``out`` (None: stdout)."""
    if fmt not in FORMATS:
        raise ImageError(f"unknown format {fmt!r}: use {' or '.join(FORMATS)}")
    with store.reading():
        chosen = _names_for(refs)
        with workdir() as tmp:
            cache: dict[str, MadeLayer] = {}
            made = [MadeImage(m.config, m.config_digest, m.layers, names)
                    for img, names in chosen
                    for m in [make_image(img, tmp, fmt == "oci-archive", cache)]]
            with output(out) as f:
                archive = _Archive(f)
                (_oci_archive if fmt == "oci-archive" else _docker_archive)(made, archive)
                archive.close()
    for m in made:
        _log.info("saved image sha256:%s%s", m.config_digest[:12], f" as {', '.join(m.names)}" if m.names else "")
    return made
