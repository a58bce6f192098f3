"""The ``overlay`` storage driver: the image read-only below, the container's changes in a layer above.

overlayfs merges a read-only ``lowerdir`` (the unpacked image, shared by every container) with a
per-container ``upperdir`` that takes every write, so starting a container copies nothing.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pish_core import log, native, paths
from pish_core.drivers import RunContext, Storage
from pish_core.image.cache import rootfs_for

_log = log.get("storage")


class OverlayStorage(Storage):
    name = "overlay"
    description = "overlayfs: the image as a shared read-only lower layer, writes in a per-container layer"

    @classmethod
    def check(cls) -> str | None:
        try:
            filesystems = Path("/proc/filesystems").read_text()
        except OSError as exc:
            return f"cannot read /proc/filesystems: {exc}"
        return None if "\toverlay\n" in filesystems else "the kernel has no overlayfs (try modprobe overlay)"

    @contextlib.contextmanager
    def mount(self, ctx: RunContext) -> Iterator[Path]:
        lower = rootfs_for(ctx.spec.image)
        layer = paths.layer_dir(ctx.id)
        record = ctx.journal.add("storage", self.name, "overlay", layer=str(layer))
        try:
            for sub in ("upper", "work", "merged"):
                (layer / sub).mkdir(parents=True, exist_ok=True)
            merged = layer / "merged"
            _log.info("mounting overlay on %s", merged)
            native.mount("overlay", str(merged), "overlay", 0,
                         f"lowerdir={lower},upperdir={layer / 'upper'},workdir={layer / 'work'}")
            yield merged
        finally:
            self.release(record)
            ctx.journal.drop(record)

    def release(self, record: dict[str, Any]) -> None:
        layer = Path(record["layer"])
        merged = layer / "merged"
        try:
            native.umount2(str(merged), native.MNT_DETACH)
            _log.info("unmounted %s", merged)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):  # not mounted, or already gone
                raise
        if layer.exists():
            shutil.rmtree(layer, ignore_errors=True)
            _log.info("removed %s", layer)
