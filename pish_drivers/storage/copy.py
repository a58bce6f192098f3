"""The ``copy`` storage driver: a plain copy of the image into a per-container directory.

For hosts without overlayfs (or a store on a filesystem overlayfs cannot use as a lower layer). Every
run copies the image, its layers applied in order with their whiteouts (``pish_core/image/flatten.py``),
so it costs the image's size in time and disk; ``overlay`` costs nothing per run.
"""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pish_core import log, paths
from pish_core.drivers import RunContext, Storage
from pish_core.image.cache import layers_for
from pish_core.image.flatten import flatten

_log = log.get("storage")


class CopyStorage(Storage):
    name = "copy"
    description = "a plain copy of the image per container: no overlayfs needed, costs the image's size per run"

    @contextlib.contextmanager
    def mount(self, ctx: RunContext) -> Iterator[Path]:
        layer = paths.layer_dir(ctx.id)
        with ctx.journal.held("storage", self.name, "copy", self.release, layer=str(layer)) as record:
            rootfs = layer / "rootfs"
            with layers_for(ctx.spec) as image:
                ctx.journal.update(record, image=image.image_id)
                _log.info("copying image %s into %s", ctx.spec.image, rootfs)
                flatten(image.layers, rootfs)
            yield rootfs

    def release(self, record: dict[str, Any]) -> None:
        layer = Path(record["layer"])
        if layer.exists():
            shutil.rmtree(layer, ignore_errors=True)
            _log.info("removed %s", layer)
