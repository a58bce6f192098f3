"""The ``overlay`` storage driver: the image read-only below, the container's changes in a layer above.

overlayfs merges a read-only ``lowerdir`` (the unpacked image, shared by every container) with a
per-container ``upperdir`` that takes every write, so starting a container copies nothing.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pish_core import log, mounts, native, paths, probe, userns
from pish_core.drivers import RunContext, Storage
from pish_core.image.cache import layers_for

_log = log.get("storage")


class OverlayStorage(Storage):
    name = "overlay"
    description = "overlayfs: the image as a shared read-only lower layer, writes in a per-container layer"
    rootfs_is_a_mount = True

    @classmethod
    def check(cls) -> str | None:
        with contextlib.suppress(OSError):
            if "\toverlay\n" in Path("/proc/filesystems").read_text():
                return None  # the kernel has it (built in, or its module loaded): nothing to try
        # Not listed: its module may just not be loaded yet, and a mount loads it. Try one.
        why = probe.in_child(_mount_an_overlay)
        if why is None:
            return None
        return f"overlayfs cannot be mounted here ({why}); use --storage copy"

    @contextlib.contextmanager
    def mount(self, ctx: RunContext) -> Iterator[Path]:
        layer = paths.layer_dir(ctx.id)
        merged = layer / "merged"
        with contextlib.ExitStack() as store:
            image = store.enter_context(layers_for(ctx.spec))  # the store is held: no `pish image rm` meanwhile
            with ctx.journal.held("storage", self.name, "overlay", self.release, layer=str(layer),
                                  image=image.image_id, rootfs=str(merged)):
                for sub in ("upper", "work", "merged"):
                    (layer / sub).mkdir(parents=True, exist_ok=True)
                _log.info("mounting overlay on %s", merged)
                lowers = userns.mapped_lowers(ctx.spec.userns, image.layers, layer)  # id-mapped: --userns
                mount_overlay(merged, lowers, layer / "upper", layer / "work", volatile=ctx.ephemeral)
                store.close()  # mounted: the store is free again
                yield merged

    def release(self, record: dict[str, Any]) -> None:
        layer = Path(record["layer"])
        mounts.detach(layer / "merged", _log)
        userns.release_lowers(layer)  # id-mapped image views (--userns), before the layer is removed
        if layer.exists():
            shutil.rmtree(layer, ignore_errors=True)
            _log.info("removed %s", layer)


def _mount_an_overlay() -> None:
    """The probe: an overlay of empty directories on a private tmpfs (see pish_core/probe.py)."""
    probe.private_mounts()
    for sub in ("lower", "upper", "work", "merged"):
        os.mkdir(f"/tmp/{sub}")
    native.mount("overlay", "/tmp/merged", "overlay", 0, "lowerdir=/tmp/lower,upperdir=/tmp/upper,workdir=/tmp/work")


def _escape(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def mount_overlay(merged: Path, lowers: list[Path], upper: Path, work: Path, volatile: bool = False) -> None:
    """Mount ``lowers`` (the image's layers, bottom first) as overlay lower layers, top first.

    ``volatile`` (a layer nothing reads after this run): the overlay never syncs its upper layer, so its
    unmount does not wait for a syncfs of the whole host filesystem under it (4-90 ms measured here, more
    the busier the host). A crash may lose the layer's writes, and the layer is thrown away anyway.

    The options must fit in a page: with many layers, the store's paths are given relative to the layer
    store (the kernel resolves them against the mounting process's working directory).
    """
    def options(lower_names: list[str]) -> str:
        return f"lowerdir={':'.join(reversed(lower_names))},upperdir={_escape(upper)},workdir={_escape(work)}"

    def mount(data: str) -> None:
        if volatile:
            try:
                native.mount("overlay", str(merged), "overlay", 0, data + ",volatile")
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: a kernel before 5.10 has no volatile
                    raise
        native.mount("overlay", str(merged), "overlay", 0, data)

    data = options([_escape(p) for p in lowers])
    if len(data) < 4000:
        mount(data)
        return
    store = paths.layers_dir()
    rel = [_escape(p.relative_to(store)) if p.is_relative_to(store) else _escape(p) for p in lowers]
    old_cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(store)
        mount(options(rel))
    finally:
        os.fchdir(old_cwd)
        os.close(old_cwd)
