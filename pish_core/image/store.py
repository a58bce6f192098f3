"""The image store: every layer unpacked once, keyed by its digest, and shared by the images that use it.

Under ``PISH_LIB`` (``/var/lib/pish``)::

    layers/<diff_id>/fs/          one layer, unpacked, with overlayfs whiteouts: an overlay lower layer as is
    layers/<diff_id>/layer.json   its digests (stored blob and uncompressed tar) and size
    layers/.tmp-<diff_id>-<pid>/  a layer being unpacked; renamed into place only once verified
    images/<id>/config.json       the image config, byte for byte (the image id is its sha256)
    images/<id>/image.json        its layers (diff_ids, bottom first), where it came from, when
    refs.json                     NAME:TAG -> image id

A layer's key is its ``diff_id`` (the sha256 of the uncompressed tar, as the image config names it), so
the same layer shipped gzipped in an OCI layout and plain in a ``docker save`` archive is stored once.
Locks: an import holds ``store.lock`` shared, and ``unpack.lock`` while it unpacks a layer; ``pish run``
holds it shared while it mounts; ``pish image rm`` holds it exclusively, so it never deletes a layer that
an import is about to use or a run is mounting. ``refs.lock`` guards ``refs.json``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pish_core import log, paths
from pish_core.errors import ImageError
from pish_core.image import digest
from pish_core.state import flocked, write_json_atomic

_log = log.get("image")
_NAME_RE = re.compile(r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass
class Image:
    id: str  # hex sha256 of config.json
    layers: list[str]  # diff_ids (hex), bottom first
    config: dict[str, Any]
    source: str = ""
    imported: float = 0.0
    size: int = 0
    names: list[str] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def layer_dirs(self) -> list[Path]:
        """The unpacked layers, bottom first, as overlay lower layers (or to flatten for ``copy``)."""
        dirs = [paths.store_layer(h) / "fs" for h in self.layers]
        for h, d in zip(self.layers, dirs, strict=True):
            if not d.is_dir():
                raise ImageError(f"image {self.short_id} is damaged: layer sha256:{h[:12]} is missing from "
                                 f"the store; remove the image and import it again")
        return dirs


# -- names -------------------------------------------------------------------------------------------


def parse_name(text: str, default_tag: str = "latest") -> str:
    """``debian`` -> ``debian:latest``; ``docker.io/library/x:1`` -> ``x:1``; bad names are refused."""
    ref = text.strip()
    for prefix in ("docker.io/library/", "docker.io/"):
        ref = ref.removeprefix(prefix)
    name, tag = ref, default_tag
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    if not _NAME_RE.fullmatch(name) or not _TAG_RE.fullmatch(tag) or digest.is_hex64(name):
        raise ImageError(f"invalid image name {text!r}: use NAME[:TAG], e.g. debian:bookworm")
    return f"{name}:{tag}"


def _load_refs() -> dict[str, str]:
    try:
        data = json.loads(paths.image_refs().read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise ImageError(f"{paths.image_refs()} is corrupt: fix or remove it") from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save_refs(refs: dict[str, str]) -> None:
    write_json_atomic(paths.image_refs(), dict(sorted(refs.items())))


def _refs_lock() -> contextlib.AbstractContextManager[None]:
    return flocked(paths.refs_lock())


def tag(image_id: str, names: list[str]) -> None:
    """Point each of ``names`` (already parsed) at ``image_id``."""
    with _refs_lock():
        refs = _load_refs()
        refs.update({n: image_id for n in names})
        _save_refs(refs)


# -- reading the store -------------------------------------------------------------------------------


def reading() -> contextlib.AbstractContextManager[None]:
    """Hold the store shared: no image or layer disappears meanwhile."""
    return flocked(paths.store_lock(), shared=True)


def get(image_id: str, refs: dict[str, str] | None = None) -> Image | None:
    rec = paths.image_record(image_id)
    try:
        meta = json.loads((rec / "image.json").read_text())
        config = json.loads((rec / "config.json").read_bytes())
        layers = [str(d) for d in meta["layers"]]
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError):
        return None
    refs = _load_refs() if refs is None else refs
    return Image(id=image_id, layers=layers, config=config, source=meta.get("source", ""),
                 imported=meta.get("imported", 0.0), size=meta.get("size", 0),
                 names=sorted(n for n, i in refs.items() if i == image_id))


def list_images() -> list[Image]:
    refs = _load_refs()
    try:
        ids = [d for d in os.listdir(paths.images_dir()) if digest.is_hex64(d)]
    except FileNotFoundError:
        return []
    images = [img for i in ids if (img := get(i, refs)) is not None]
    return sorted(images, key=lambda img: -img.imported)


def find(ref: str) -> Image | None:
    """An image by NAME[:TAG], full id (``sha256:`` optional) or unique id prefix; None if none."""
    refs = _load_refs()
    with contextlib.suppress(ImageError):
        name = parse_name(ref)
        if name in refs:
            return get(refs[name], refs)
    hexpart = ref.removeprefix("sha256:")
    if re.fullmatch(r"[0-9a-f]{4,64}", hexpart):
        matches = [img for img in list_images() if img.id.startswith(hexpart)]
        if len(matches) > 1:
            raise ImageError(f"image id prefix {ref!r} is ambiguous ({len(matches)} match)")
        if matches:
            return matches[0]
    return None


def lookup(ref: str) -> Image:
    img = find(ref)
    if img is None:
        raise ImageError(f"no such image: {ref} (see pish image ls)")
    return img


# -- removing ----------------------------------------------------------------------------------------


def users(img: Image) -> list[str]:
    """Names of the containers (any status) that use ``img``."""
    from pish_core import state

    out = []
    for s in state.list_all():
        spec = s.spec or {}
        storage_images = [r.get("image") for r in s.resources if r.get("kind") == "storage"]
        if spec.get("image_id") == img.id or img.id in storage_images or spec.get("image") in img.names:
            out.append(s.name)
    return out


def remove(ref: str) -> list[str]:
    """Untag ``ref`` if the image has other names; else delete the image and the layers no image uses.
    Refused while a container uses the image. Returns what was done, one line each."""
    with flocked(paths.store_lock()):
        img = lookup(ref)
        name = None
        with contextlib.suppress(ImageError):
            name = parse_name(ref)
        with _refs_lock():
            refs = _load_refs()
            if name in img.names and len(img.names) > 1:
                del refs[name]
                _save_refs(refs)
                return [f"untagged {name}"]
            in_use = users(img)
            if in_use:
                raise ImageError(f"image {ref} is in use by container{'s' if len(in_use) > 1 else ''} "
                                 f"{', '.join(in_use)}: remove {'them' if len(in_use) > 1 else 'it'} first (pish rm)")
            for n in img.names:
                refs.pop(n, None)
            _save_refs(refs)
        done = [f"untagged {n}" for n in img.names]
        shutil.rmtree(paths.image_record(img.id), ignore_errors=True)
        done.append(f"deleted sha256:{img.id}")
        done += _collect_layers()
        _forget_sources(img.id)
        _log.info("removed image %s", img.short_id)
    return done


def _collect_layers() -> list[str]:
    """Delete the layers no image uses any more (and leftovers of killed imports). Under store.lock."""
    wanted = {d for img in list_images() for d in img.layers}
    done = []
    for entry in os.listdir(paths.images_dir()):
        if entry.startswith(".tmp-"):  # an image record an import killed mid-way did not finish
            shutil.rmtree(paths.images_dir() / entry, ignore_errors=True)
    for entry in sorted(os.listdir(paths.layers_dir())):
        path = paths.layers_dir() / entry
        if entry in wanted:
            continue
        if digest.is_hex64(entry):
            done.append(f"deleted layer sha256:{entry}")
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return done


def _forget_sources(image_id: str) -> None:
    """Drop what `pish run PATH` remembered about paths that gave this image."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(paths.image_sources_dir()):
            path = paths.image_sources_dir() / entry
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text()).get("image") == image_id:
                    path.unlink()
