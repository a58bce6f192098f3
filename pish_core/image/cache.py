"""What ``pish run IMAGE`` names, resolved: an imported image, or a path imported on the way.

- A name, id or id prefix: an image of the store (``pish image import``).
- A plain rootfs directory: used in place, as the lower layer, never copied.
- Anything else at a path (a rootfs tar, an OCI layout, a ``docker save`` archive): imported into the
  store, keyed by content, so a second run, or a run of the same bytes at another path, unpacks nothing.

Hashing a 170 MB tar takes ~130 ms, too much for every run, so a fast pre-check goes in front of the content
hash: the file's identity (path, device, inode, size, mtime and ctime; ctime cannot be set by hand) is
remembered with the image it gave. Only when that identity changes is the file hashed again, and only
when the hash is new is anything unpacked.
"""
from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pish_core import paths
from pish_core.errors import ImageError
from pish_core.image import store
from pish_core.state import write_json_atomic

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec


@dataclass
class Resolved:
    image_id: str  # "" for a directory used in place
    layers: list[Path]  # bottom first
    config: dict[str, Any] = field(default_factory=dict)


def _identity(path: Path) -> str:
    """What a path is on disk now; any rewrite of it changes this."""
    probe = path
    if path.is_dir():  # an image layout: its index (rewritten whenever an image is added) stands for it
        probe = path / ("index.json" if (path / "index.json").exists() else "manifest.json")
    st = probe.stat()
    return f"{probe.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"


def _source_file(identity: str) -> Path:
    """Where what a path gave is remembered: named by a checksum of its identity, which is kept whole inside
    and compared (a crc32, not sha256: hashlib would load OpenSSL, ~4 ms of every run)."""
    return paths.image_source(f"{zlib.crc32(identity.encode()):08x}")


def _remembered(identity: str) -> store.Image | None:
    try:
        data = json.loads(_source_file(identity).read_text())
        if data["identity"] != identity:
            return None  # another path with the same checksum
        image_id = data["image"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return store.get(str(image_id))


def resolve(image: str) -> Resolved:
    path = Path(image)
    if not path.exists():
        named = store.lookup(image)
        return Resolved(named.id, named.layer_dirs(), named.config)
    if path.is_dir():
        from pish_core.image import oci  # lazy: it imports tarfile, which a remembered archive does not need

        if oci.kind_of(path) == "rootfs-dir":
            return Resolved("", [path.resolve()])
    identity = _identity(path)
    img = _remembered(identity)
    if img is not None:
        return Resolved(img.id, img.layer_dirs(), img.config)
    from pish_core.image import importer  # lazy: a remembered archive needs no importer

    imported = importer.import_path(path)
    if len(imported) != 1:
        raise ImageError(f"{path} holds {len(imported)} images: import it with `pish image import` "
                         f"and run one of them by name")
    paths.image_sources_dir().mkdir(parents=True, exist_ok=True)
    write_json_atomic(_source_file(identity), {"image": imported[0].id, "path": str(path.resolve()),
                                               "identity": identity})
    return Resolved(imported[0].id, imported[0].layer_dirs(), imported[0].config)


@contextlib.contextmanager
def layers_for(spec: ContainerSpec) -> Iterator[Resolved]:
    """The image of a container, held (no ``pish image rm`` meanwhile) while the storage driver mounts it."""
    with store.reading():
        if spec.image_id:
            img = store.get(spec.image_id)
            if img is None:
                raise ImageError(f"image {spec.image} (sha256:{spec.image_id[:12]}) was removed")
            yield Resolved(img.id, img.layer_dirs(), img.config)
        else:
            yield resolve(spec.image)
