"""``pish pull``: an image from a registry into the store, through the same checked path as an import.

The manifest (or, from an index, the one for the platform asked) and the config are read whole, bounded
and verified; then each layer the store lacks (by ``diff_id``: a layer any image brought is never fetched
again) is streamed straight into ``importer.ensure_layer``, which hashes the blob as it arrives, unpacks
the tar that comes out of it into a temporary directory, and renames it into place only when both digests
match. Nothing of a failed pull is left in the store. With several layers to fetch, up to
``Limits.parallel`` download at once into temporary files (hashed as they arrive) and are unpacked in order
through the same ``ensure_layer`` as each is whole (``_fetch_parallel``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform as _platform
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pish_core import log, paths
from pish_core.errors import ImageError
from pish_core.image import auth, digest, importer, oci
from pish_core.image.progress import Progress, human
from pish_core.image.reference import Reference, candidates
from pish_core.image.registry import INDEX_TYPES, Registry
from pish_core.image.store import Image
from pish_core.state import flocked

_log = log.get("image")
_LAYER_TYPES = ("tar", "tar+gzip", "tar+zstd", "rootfs.diff.tar", "rootfs.diff.tar.gzip", "rootfs.diff.tar.zstd")


def host_platform() -> str:
    machine = _platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)
    return f"linux/{arch}"


def _parse_platform(text: str) -> tuple[str, str, str | None]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {text!r}: use OS/ARCH[/VARIANT], e.g. linux/arm64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def pull(text: str, *, platform: str | None = None, tls_verify: bool = True, quiet: bool = False) -> Image:
    """Pull the image ``text`` names (a short name from the first search registry that has it); return it,
    tagged with its full name in the store."""
    refs = candidates(text)
    if len(refs) == 1:
        return _pull(refs[0], platform=platform, tls_verify=tls_verify, quiet=quiet)
    failures = []
    for ref in refs:
        try:
            return _pull(ref, platform=platform, tls_verify=tls_verify, quiet=quiet)
        except ImageError as exc:
            _log.info("%s: %s; trying the next search registry", ref, exc)
            failures.append(f"{ref.registry}: {exc}")
    raise ImageError(f"{text} is in none of the search registries ({'; '.join(failures)})")


def _pull(ref: Reference, *, platform: str | None, tls_verify: bool, quiet: bool) -> Image:
    registry = Registry(ref.api_host, ref.repository, tls_verify=tls_verify,
                        credentials=auth.credentials(ref.registry))
    _log.info("pulling %s from %s", ref, registry.base)
    manifest, manifest_digest = _manifest(registry, ref, platform or host_platform())
    config_desc = manifest.get("config")
    chex = digest.parse(config_desc.get("digest") if isinstance(config_desc, dict) else None, "the image config")
    raw_config = registry.blob_bytes(chex, "the image config", registry.limits.config)
    config = oci.parse_config(raw_config, str(ref))
    diff_ids = [digest.parse(d, f"a layer of {ref}") for d in config["rootfs"]["diff_ids"]]
    layers = manifest["layers"]
    if len(diff_ids) != len(layers):
        raise ImageError(f"{ref}: the manifest lists {len(layers)} layers but the config {len(diff_ids)} diff_ids")
    for d in (paths.layers_dir(), paths.images_dir()):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    with flocked(paths.store_lock(), shared=True):
        missing = [(desc, d) for desc, d in zip(layers, diff_ids, strict=True) if not paths.store_layer(d).is_dir()]
        sizes = [_size(desc) for desc, _ in missing]
        if sum(sizes) > registry.limits.image:
            raise ImageError(f"{ref}: its layers are {sum(sizes)} bytes, more than the limit of "
                             f"{registry.limits.image} (PISH_PULL_MAX_IMAGE)")
        progress = Progress(0 if quiet else sum(sizes), "pulling")
        jobs = [(digest.parse(desc.get("digest"), f"a layer of {ref}"), diff_id, size)
                for (desc, diff_id), size in zip(missing, sizes, strict=True)]
        if registry.limits.parallel > 1 and len(jobs) > 1:
            _fetch_parallel(registry, jobs, progress)
        else:
            for i, (lhex, diff_id, size) in enumerate(jobs, 1):
                what = f"layer sha256:{lhex[:12]}"
                _log.info("pulling layer %d/%d sha256:%s (%s)", i, len(jobs), lhex[:12], human(size))
                progress.set_label(f"layer {i}/{len(jobs)}")
                importer.ensure_layer(diff_id, lhex, _opener(registry, lhex, what, size), what, progress,
                                      max_tar=registry.limits.layer_uncompressed)
        progress.done()
        if len(missing) < len(layers):
            _log.info("%d of %d layers already in the store", len(layers) - len(missing), len(layers))
        names = [ref.store_name] if ref.store_name else []
        # The source names the digest the tag pointed to (an index's, for a multi-platform image), as
        # docker's RepoDigests and `skopeo inspect` do.
        name = f"{ref.registry}/{ref.repository}" + (f":{ref.tag}" if ref.tag else "")
        return importer.commit(raw_config, config, diff_ids, names, f"{name}@sha256:{manifest_digest}")


def _fetch_parallel(registry: Registry, jobs: list[tuple[str, str, int]], progress: Progress) -> None:
    """Download up to ``limits.parallel`` layers at once, each into a temporary file of the store, hashed
    as it arrives; unpack them in order (through the same ``ensure_layer``) as each is whole. On any error
    the other downloads stop at their next chunk and every temporary file goes."""
    stop = threading.Event()
    quiet = Progress(0, "unpacking")  # the bar counts bytes downloaded, not read again from disk
    with ThreadPoolExecutor(max_workers=registry.limits.parallel, thread_name_prefix="pull") as pool:
        futures = [pool.submit(_download, registry, lhex, size, f"{i}/{len(jobs)}", progress, stop)
                   for i, (lhex, _, size) in enumerate(jobs, 1)]
        try:
            for (lhex, diff_id, _), future in zip(jobs, futures, strict=True):
                path = future.result()
                what = f"layer sha256:{lhex[:12]}"
                importer.ensure_layer(diff_id, lhex, lambda path=path: open(path, "rb"), what, quiet,  # noqa: SIM115
                                      max_tar=registry.limits.layer_uncompressed)
                path.unlink(missing_ok=True)
        finally:
            stop.set()
            for future in futures:
                future.cancel()
    for lhex, _, _ in jobs:  # what a failed pull downloaded and never unpacked
        _blob_tmp(lhex).unlink(missing_ok=True)


def _blob_tmp(hexd: str) -> Path:
    """Where a layer blob is downloaded to (``importer`` cleans those of dead pids as ``.tmp-*.tar``)."""
    return paths.layers_dir() / f".tmp-{hexd}-{os.getpid()}.tar"


def _download(registry: Registry, hexd: str, size: int, count: str, progress: Progress,
              stop: threading.Event) -> Path:
    what = f"layer sha256:{hexd[:12]}"
    _log.info("pulling layer %s sha256:%s (%s)", count, hexd[:12], human(size))
    path = _blob_tmp(hexd)
    h = hashlib.sha256()
    try:
        with registry.blob(hexd, what, min(size, registry.limits.layer)) as body, open(path, "wb") as f:
            while chunk := body.read(digest.CHUNK):
                if stop.is_set():
                    raise ImageError(f"{what}: download stopped")
                h.update(chunk)
                f.write(chunk)
                progress.advance(len(chunk))
        if h.hexdigest() != hexd:
            raise ImageError(f"{what} is corrupt: its sha256 is {h.hexdigest()}, the manifest says {hexd}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _opener(registry: Registry, hexd: str, what: str, size: int) -> Any:
    @contextlib.contextmanager
    def opener() -> Iterator[Any]:
        with registry.blob(hexd, what, min(size, registry.limits.layer)) as body:
            yield body
    return opener


def _size(desc: dict[str, Any]) -> int:
    size = desc.get("size")
    if not isinstance(size, int) or size < 0:
        raise ImageError(f"layer {desc.get('digest')!r}: the manifest gives it no size")
    return size


def _manifest(registry: Registry, ref: Reference, platform: str) -> tuple[dict[str, Any], str]:
    """The image manifest for ``platform`` (descending from an index) and the hex digest of what
    ``ref`` named (the index, if it is one)."""
    raw, media, hexd = registry.manifest(ref.wanted, f"manifest {ref}")
    top = hexd
    doc = json.loads(raw)
    if media in INDEX_TYPES:
        child = _choose(doc, platform, ref)
        raw, media, _ = registry.manifest(f"sha256:{child}", f"manifest sha256:{child[:12]} of {ref}")
        doc = json.loads(raw)
        if media in INDEX_TYPES:
            raise ImageError(f"{ref}: an index inside an index, which pish does not follow")
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise ImageError(f"{ref}: the manifest has no layer list")
    if len(doc["layers"]) > registry.limits.layers:
        raise ImageError(f"{ref}: the manifest lists {len(doc['layers'])} layers, more than the limit of "
                         f"{registry.limits.layers} (PISH_PULL_MAX_LAYERS)")
    for d in doc["layers"]:
        media_type = str(d.get("mediaType", "")) if isinstance(d, dict) else ""
        if not isinstance(d, dict) or "nondistributable" in media_type or "foreign" in media_type or d.get("urls"):
            raise ImageError(f"{ref}: layer {d.get('digest') if isinstance(d, dict) else d!r} is a foreign "
                             f"layer, which pish does not fetch")
        if media_type and not media_type.endswith(_LAYER_TYPES):
            raise ImageError(f"{ref}: layer {d.get('digest')} has media type {media_type!r}, no image layer")
    return doc, top


def _choose(index: Any, platform: str, ref: Reference) -> str:
    """The digest of the manifest of ``index`` for ``platform`` (os/arch[/variant])."""
    want_os, want_arch, want_variant = _parse_platform(platform)
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise ImageError(f"{ref}: the index lists no manifests")
    found = []
    for m in manifests:
        plat = m.get("platform") if isinstance(m, dict) else None
        if not isinstance(plat, dict) or plat.get("os") != want_os or plat.get("architecture") != want_arch:
            continue
        if want_variant and plat.get("variant") not in (want_variant, None):
            continue
        found.append(m)
    if not found:
        have = sorted({f"{p.get('os')}/{p.get('architecture')}" for m in manifests if isinstance(m, dict)
                       and isinstance(p := m.get("platform"), dict)})
        raise ImageError(f"{ref} has no image for {platform} (it has: {', '.join(have) or 'none'})")
    return digest.parse(found[0].get("digest"), f"the {platform} manifest of {ref}")
