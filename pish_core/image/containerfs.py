"""Where a container's files are, for ``pish export`` and ``pish commit``.

A container's root filesystem is its storage driver's: with ``overlay``, the image's layers in the store
(lower) and the container's own ``upper`` directory under ``paths.layer_dir(id)``; with ``copy``, one
plain directory (``rootfs``). The storage record of the container's journal says which and where, and
which image it mounted. Both exist from ``pish create`` until ``pish rm`` (an exited container keeps its
files, as docker's does); they are read here as directories, so it does not matter whether the overlay is
mounted.

Under ``--userns`` the upper directory holds host ids (the container's root is a host id of its range);
``owner_map`` maps them back to the container's, as the tar must record them. Rootless, every directory
pish wrote holds the user's ids (the user is root of pish's namespace): the store's layers too, which
``store_map`` maps back.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pish_core import log, state
from pish_core.errors import ImageError, PishError
from pish_core.image import layertar, store

_log = log.get("image")


@dataclass
class ContainerFS:
    name: str
    image: store.Image | None  # the image it was made from (None: a directory used in place)
    lowers: list[Path]  # bottom first; empty with ``copy``
    upper: Path  # the container's changes (overlay), or its whole root (copy)
    flat: bool  # True for ``copy``: ``upper`` is the whole root filesystem, not a layer of changes
    idmap: layertar.IdMap | None
    lower_idmap: layertar.IdMap | None = None  # the store's layers' (``store_map``)

    def merged(self) -> list[layertar.Source]:
        """The sources of the merged view, top first."""
        return [layertar.Source(self.upper, self.idmap),
                *(layertar.Source(p, self.lower_idmap) for p in reversed(self.lowers))]


def owner_map(spec: dict[str, Any]) -> layertar.IdMap | None:
    """Host (uid, gid) -> the container's, from the spec's user namespace; None without one."""
    ns = spec.get("userns") or {}
    if ns.get("mode") not in ("auto", "map", "rootless"):
        return None

    def ranges(key: str) -> list[tuple[int, int, int]]:
        return [(int(m["container_id"]), int(m["host_id"]), int(m["size"])) for m in ns.get(key) or []]

    return _back_map(ranges("uid_mappings"), ranges("gid_mappings"))


def store_map() -> layertar.IdMap | None:
    """Rootless: the owners of what pish wrote (the store's layers, a copy root) back to the image's, the
    user being root; None with root (they are the image's as they are)."""
    from pish_core import paths, userns

    if not paths.rootless():
        return None
    ns = userns.rootless_mapping()
    return _back_map([(m.container_id, m.host_id, m.size) for m in ns.uid_mappings],
                     [(m.container_id, m.host_id, m.size) for m in ns.gid_mappings])


def _back_map(uids: list[tuple[int, int, int]], gids: list[tuple[int, int, int]]) -> layertar.IdMap:
    """Host (uid, gid) -> inside, through (inside, host, size) ranges."""

    def back(value: int, maps: list[tuple[int, int, int]]) -> int:
        for inside, host, size in maps:
            if host <= value < host + size:
                return inside + value - host
        return 65534  # outside the range: what the container itself sees (the overflow id)

    return lambda uid, gid: (back(uid, uids), back(gid, gids))


def _storage_record(s: state.ContainerState) -> dict[str, Any]:
    record = next((r for r in s.resources if r.get("kind") == "storage"), None)
    if record is None:
        raise ImageError(f"container {s.name} holds no root filesystem (it is {s.status}): nothing to read")
    return record


def find(ref: str) -> ContainerFS:
    """The files of container ``ref`` (name, id or id prefix), as its storage driver recorded them."""
    s = state.resolve(ref)
    record = _storage_record(s)
    layer = Path(record["layer"])
    driver = record.get("driver")
    image_id = str(record.get("image") or s.spec.get("image_id") or "")
    img = store.get(image_id) if image_id else None
    if image_id and img is None:
        raise ImageError(f"the image of container {s.name} (sha256:{image_id[:12]}) is gone from the store")
    if driver == "copy":
        root = layer / "rootfs"
        if not root.is_dir():
            raise ImageError(f"container {s.name} has no root filesystem yet ({root} is missing)")
        return ContainerFS(s.name, img, [], root, True, store_map())
    if driver != "overlay":
        raise ImageError(f"container {s.name} uses the storage driver {driver!r}: pish reads only the "
                         f"files of overlay and copy containers")
    upper = layer / "upper"
    if not upper.is_dir():
        raise ImageError(f"container {s.name} has no root filesystem yet ({upper} is missing)")
    if img is not None:
        lowers = img.layer_dirs()
    else:  # a rootfs directory used in place as the only lower layer
        image_path = Path(str(s.spec.get("image", "")))
        if not image_path.is_dir():
            raise ImageError(f"container {s.name} ran the directory {image_path}, which is gone")
        lowers = [image_path.resolve()]
    return ContainerFS(s.name, img, lowers, upper, False, owner_map(s.spec), store_map())


@contextlib.contextmanager
def held(ref: str, pause: bool = True) -> Iterator[ContainerFS]:
    """The container's files, with the image store held shared (no ``pish image rm`` meanwhile) and a
    running container paused (``pause``, as ``docker commit`` does) so its files hold still."""
    from pish_core import lifecycle

    with store.reading():
        fs = find(ref)
        s = state.resolve(ref)
        frozen = False
        if pause and s.command_running() and not lifecycle.paused(s):
            with contextlib.suppress(PishError, OSError):  # no cgroup (--limits none): read it running
                lifecycle.pause(s.id)
                frozen = True
        try:
            yield fs
        finally:
            if frozen:
                with contextlib.suppress(PishError, OSError):
                    lifecycle.pause(s.id, frozen=False)
