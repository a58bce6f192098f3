"""Importing into the store: an archive's images, a rootfs tar or directory; each layer unpacked once.

``import_path`` tells the kind of what it is given (``oci.py``), checks the JSON, and for each layer not yet
in the store reads it once: the blob's sha256 and the uncompressed tar's sha256 are taken in the same pass
that unpacks it (``digest.py``, ``unpack.py``) into ``layers/.tmp-<diff_id>-<pid>``, which is renamed into
place only when both match what the manifest and the config say. Then the image record and its names.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from pish_core import log, paths
from pish_core.errors import ImageError
from pish_core.image import digest, oci
from pish_core.image.progress import Progress, human
from pish_core.image.store import Image, get, parse_name, tag
from pish_core.image.unpack import unpack_stream
from pish_core.state import flocked, write_json_atomic

_log = log.get("image")

def import_path(path: Path, name: str | None = None, *, quiet: bool = False) -> list[Image]:
    """Import the image(s) at ``path`` (see oci.py for the kinds); return them. Layers already in the
    store are not read again."""
    if not path.exists():
        raise ImageError(f"{path} does not exist")
    for d in (paths.layers_dir(), paths.images_dir()):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)  # layers hold setuid files: keep users out
    with flocked(paths.store_lock(), shared=True):
        kind = oci.kind_of(path)
        if kind == "rootfs-dir":
            return [_import_dir(path, name, quiet)]
        if kind == "rootfs-tar":
            return [_import_rootfs_tar(path, path, name, quiet)]
        with oci.open_source(path) as src:
            entries = _select(oci.images(src, kind), name, path)
            return [_import_entry(src, entry, names, str(path), quiet) for entry, names in entries]


def _select(entries: list[oci.ImageEntry], name: str | None, path: Path) -> list[tuple[oci.ImageEntry, list[str]]]:
    """Which images to import, under which names (see docs/images.md, "Names")."""
    stem = re.sub(r"[^a-z0-9._-]", "", path.name.split(".")[0].lower()) or "image"

    def archive_names(entry: oci.ImageEntry) -> list[str]:
        out = []
        for n in entry.names:
            full = n if ("/" in n or ":" in n) else f"{stem}:{n}"
            with contextlib.suppress(ImageError):
                out.append(parse_name(full))
        return out

    if name is None:
        return [(e, archive_names(e)) for e in entries]
    wanted = parse_name(name)
    if len(entries) == 1:
        return [(entries[0], [wanted])]
    if ":" not in name.rsplit("/", 1)[-1]:  # NAME alone: every image, NAME:<the archive's tag>
        base = wanted.rsplit(":", 1)[0]
        picked = [(e, [f"{base}:{n.rsplit(':', 1)[1]}" for n in archive_names(e)]) for e in entries]
        return picked
    tag = wanted.rsplit(":", 1)[1]
    chosen = [e for e in entries if any(n.rsplit(":", 1)[1] == tag for n in archive_names(e))]
    if not chosen:
        raise ImageError(f"{path} holds {len(entries)} images and none is tagged {tag!r}")
    return [(chosen[0], [wanted])]


def _import_entry(src: oci.Source, entry: oci.ImageEntry, names: list[str], source: str, quiet: bool) -> Image:
    what = f"the image in {source}"
    if entry.config_digest and digest.sha256_bytes(entry.config) != entry.config_digest:
        raise ImageError(f"the config of {what} does not match its digest sha256:{entry.config_digest}")
    config = oci.parse_config(entry.config, what)
    diff_ids = [digest.parse(d, f"a layer of {what}") for d in config["rootfs"]["diff_ids"]]
    if len(diff_ids) != len(entry.layers):
        raise ImageError(f"{what} lists {len(entry.layers)} layers but its config {len(diff_ids)} diff_ids")
    missing = [(ref, d) for ref, d in zip(entry.layers, diff_ids, strict=True) if not paths.store_layer(d).is_dir()]
    total = sum(ref.size or _size(src, ref.path) for ref, _ in missing)
    progress = Progress(total if not quiet else 0, "importing")
    for i, (ref, diff_id) in enumerate(missing, 1):
        progress.set_label(f"layer {i}/{len(missing)}")
        ensure_layer(diff_id, ref.digest, lambda ref=ref: src.open(ref.path), f"layer {ref.path}", progress)
    progress.done()
    return commit(entry.config, config, diff_ids, names, source)


def _size(src: oci.Source, path: str) -> int:
    with contextlib.suppress(ImageError, OSError), src.open(path) as f:
        return f.seek(0, os.SEEK_END)
    return 0


def _import_rootfs_tar(tar: Path, source: Path, name: str | None, quiet: bool) -> Image:
    """A plain rootfs tar is one layer; its diff_id is the sha256 of its (uncompressed) content."""
    size = tar.stat().st_size
    progress = Progress(size if not quiet else 0, "hashing")
    with open(tar, "rb") as f:
        stream = digest.LayerStream(f, str(tar), progress.advance)
        stream.finish()
    diff_id = stream.diff_id
    if not paths.store_layer(diff_id).is_dir():
        progress.set_label("unpacking")
        progress.seen = 0
        ensure_layer(diff_id, None, lambda: open(tar, "rb"), str(tar), progress)  # noqa: SIM115
    progress.done()
    raw = oci.rootfs_config(diff_id)
    return commit(raw, json.loads(raw), [diff_id], [parse_name(name)] if name else [], str(source))


def _import_dir(path: Path, name: str | None, quiet: bool) -> Image:
    """A rootfs directory is tarred (into the store, then unpacked by the same safe path) and imported."""
    import tarfile

    tmp = paths.layers_dir() / f".tmp-dir-{os.getpid()}.tar"
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(path, arcname=".")
        return _import_rootfs_tar(tmp, path, name, quiet)
    except OSError as exc:
        raise ImageError(f"cannot import directory {path}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def ensure_layer(diff_id: str, blob_digest: str | None, opener: Any, what: str, progress: Progress,
                 max_tar: int | None = None) -> None:
    """Unpack a layer into the store unless it is there; verify both digests before it goes in place.
    ``max_tar``: refuse the layer as soon as more than that many uncompressed bytes come out of it."""
    final = paths.store_layer(diff_id)
    if final.is_dir():
        return
    with flocked(paths.unpack_lock()):
        if final.is_dir():  # another import unpacked it while we waited
            return
        _clean_stale_tmp()
        tmp = paths.layers_dir() / f".tmp-{diff_id}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "fs").mkdir(parents=True)
        short = f"sha256:{diff_id[:12]}"
        _log.info("unpacking layer %s into %s", short, final)
        try:
            with opener() as raw:
                stream = digest.LayerStream(raw, what, progress.advance, max_tar)
                try:
                    stats = unpack_stream(stream.tar, tmp / "fs", what=what)  # type: ignore[arg-type]
                except ImageError as exc:
                    raise ImageError(f"{what}: {exc}") from None
                stream.finish()
            if blob_digest and stream.blob_digest != blob_digest:
                raise ImageError(f"{what} is corrupt: its sha256 is {stream.blob_digest}, "
                                 f"the manifest says {blob_digest}")
            if stream.diff_id != diff_id:
                raise ImageError(f"{what} is corrupt: its uncompressed sha256 is {stream.diff_id}, "
                                 f"the image config says {diff_id}")
            write_json_atomic(tmp / "layer.json", {
                "diff_id": f"sha256:{diff_id}", "blob": f"sha256:{stream.blob_digest}",
                "compression": stream.compression, "blob_size": stream.blob.size, "size": stats.file_bytes,
                "entries": stats.entries, "whiteouts": stats.whiteouts, "unpacked": time.time()})
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _log.debug("layer %s: %s in %d entries", short, human(stats.file_bytes), stats.entries)


def clean_partial() -> int:
    """``pish gc``: remove what imports and pulls that were killed left half-way (their pid is gone)."""
    if not paths.layers_dir().is_dir():
        return 0
    with flocked(paths.unpack_lock()):
        before = len(os.listdir(paths.layers_dir()))
        _clean_stale_tmp()
        removed = before - len(os.listdir(paths.layers_dir()))
    if removed:
        _log.info("removed %d partial layer(s) of killed imports or pulls", removed)
    return removed


def _clean_stale_tmp() -> None:
    """Remove what an import killed mid-way left (its pid is gone). Called under unpack.lock."""
    for entry in os.listdir(paths.layers_dir()):
        m = re.fullmatch(r"\.tmp-(?:[0-9a-f]{64}|dir)-(\d+)(?:\.tar)?", entry)
        if m and not _alive(int(m.group(1))):
            target = paths.layers_dir() / entry
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _layer_size(diff_id: str) -> int:
    try:
        return int(json.loads((paths.store_layer(diff_id) / "layer.json").read_text()).get("size", 0))
    except (OSError, ValueError):
        return 0


def commit(raw: bytes, config: dict[str, Any], diff_ids: list[str], names: list[str], source: str) -> Image:
    """Write the image record (if new) and point ``names`` at it."""
    image_id = digest.sha256_bytes(raw)
    rec = paths.image_record(image_id)
    if not (rec / "image.json").exists():
        tmp = paths.images_dir() / f".tmp-{image_id}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_bytes(raw)
        write_json_atomic(tmp / "image.json", {
            "id": f"sha256:{image_id}", "layers": diff_ids, "source": source, "imported": time.time(),
            "size": sum(_layer_size(d) for d in diff_ids)})
        try:
            tmp.rename(rec)
        except OSError:  # imported at the same time by another pish: the same bytes
            shutil.rmtree(tmp, ignore_errors=True)
    if names:
        tag(image_id, names)
    img = get(image_id)
    assert img is not None
    _log.info("imported image %s%s", img.short_id, f" as {', '.join(names)}" if names else "")
    return img
