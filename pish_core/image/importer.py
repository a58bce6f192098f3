"""Importing into the store: an archive's images, a rootfs tar or directory; each layer unpacked once.

``import_path`` tells the kind of what it is given (``oci.py``), checks the JSON, and for each layer not yet
in the store reads it once: the blob's sha256 and the uncompressed tar's sha256 are taken in the same pass
that unpacks it (``digest.py``, ``unpack.py``) into ``layers/.tmp-<diff_id>-<pid>``, which is renamed into
place only when both match what the manifest and the config say. Then the image record and its names.

A plain rootfs tar names no digest: it is unpacked into ``.tmp-tar-<pid>`` (beside ``layers/``) while
another thread hashes it (``_PreHash``, ~0.2 s for 170 MB, on the other core). That thread reads the
file ahead of the unpack, so it also finds a tar that is in the store
already: once its hash names a stored layer, the unpack stops and what it made is dropped. Hashing first
and unpacking after would add that time to every first import, which is the case to make fast. An
uncompressed tar (the usual rootfs tar) that pish holds a read lease on (``lease.py``: nobody can write
it meanwhile) is hashed by that thread only, and a big one is unpacked in several processes (``untar.py``);
any other is hashed by the unpack's own pass, over the very bytes it unpacks (the pre-hash, at nice 19,
is then only a shortcut).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

from pish_core import log, paths
from pish_core.errors import ImageError
from pish_core.image import digest, lease, oci, untar
from pish_core.image.progress import Progress, human
from pish_core.image.store import Image, get, parse_name, tag
from pish_core.image.unpack import describe, unpack_stream
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
    progress = Progress(tar.stat().st_size if not quiet else 0, "importing")
    with open(tar, "rb") as f:
        plain = digest.compression(f.read(4)) == "none"
        # An uncompressed tar nobody can write meanwhile (a read lease) is hashed by the pre-hash alone, and
        # may be unpacked in several processes; any other is hashed over the very bytes its unpack reads.
        with lease.read_lease(f.fileno()) if plain else contextlib.nullcontext() as held:
            pre = _PreHash(tar, only=held is not None)
            _same_file(f, pre.stat, tar)
            try:
                diff_id = ensure_layer(None, None, lambda: _UnlessStored(open(tar, "rb"), pre), str(tar),  # noqa: SIM115
                                       progress, known=None if held is None else lambda: pre.result(held))
            except _Stored as stored:
                diff_id = stored.diff_id
                _log.debug("layer sha256:%s of %s is in the store already", diff_id[:12], tar)
            finally:
                pre.stop()
    progress.done()
    raw = oci.rootfs_config(diff_id)
    return commit(raw, json.loads(raw), [diff_id], [parse_name(name)] if name else [], str(source))


class _Stored(Exception):
    def __init__(self, diff_id: str) -> None:
        self.diff_id = diff_id


class _PreHash:
    """The sha256 of a file (as a tar: decompressed), taken by a thread of its own. ``only``: it is the
    only hash of the import (``result``), not just a shortcut."""

    def __init__(self, path: Path, only: bool = False) -> None:
        self.path = path
        self.only = only
        self.stat = os.stat(path)  # the file this thread, the unpack and the lease must all have open
        self.diff_id: str | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pish-prehash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Nice 19 when only a shortcut: it gets a core the unpack leaves idle (on 2 busy cores it took ~0.2 s
        # from each first import); it finishes late then, which costs only when the tar proves to be stored.
        if not self.only:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            with open(self.path, "rb") as f:
                _same_file(f, self.stat, self.path)
                stream = digest.LayerStream(f, str(self.path), threaded=False)  # this thread is the background
                while not self._stop.is_set():
                    if not stream.tar.read(digest.CHUNK):
                        stream.finish()
                        self.diff_id = stream.diff_id
                        return
                stream.close()
        except Exception as exc:  # noqa: BLE001 - a shortcut only: the unpack's pass reports it; else result()
            self._error = exc

    def result(self, held: Callable[[], bool]) -> str:
        """The sha256, once the whole file is read (the unpack's pass has read it all by then too). The bytes
        hashed here and those unpacked are read apart: the same only if nobody wrote the file meanwhile,
        which the read lease ``held`` tells (else a writer could store a tree under another tar's digest)."""
        self._thread.join()
        if self.diff_id is None:
            reason = describe(self._error) if self._error else "stopped"
            raise ImageError(f"cannot hash {self.path}: {reason}")
        if not held():
            raise ImageError(f"{self.path} was opened for writing while it was imported: import it again")
        return self.diff_id

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _UnlessStored:
    """A file read until the pre-hash says its layer is in the store already (then ``_Stored``)."""

    def __init__(self, raw: IO[bytes], pre: _PreHash) -> None:
        self.raw, self.pre = raw, pre
        try:
            _same_file(raw, pre.stat, pre.path)
        except BaseException:
            raw.close()
            raise

    def fileno(self) -> int:
        return self.raw.fileno()

    def read(self, n: int = -1) -> bytes:
        done = self.pre.diff_id
        if done is not None and paths.store_layer(done).is_dir():
            raise _Stored(done)
        return self.raw.read(n)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()


def _same_file(f: IO[bytes], st: os.stat_result, path: Path) -> None:
    """Refuse ``f`` unless it is the file ``st`` was taken of (``path`` was not replaced meanwhile)."""
    now = os.fstat(f.fileno())
    if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
        raise ImageError(f"{path} changed while it was imported: import it again")


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


def ensure_layer(diff_id: str | None, blob_digest: str | None, opener: Any, what: str, progress: Progress,
                 max_tar: int | None = None, known: Callable[[], str] | None = None) -> str:
    """Unpack a layer into the store unless it is there; verify both digests before it goes in place.
    ``diff_id`` None: a rootfs tar, whose diff_id is the sha256 this pass finds (or ``known`` gives, for
    an uncompressed one another thread hashes). Returns the diff_id.
    ``max_tar``: refuse the layer as soon as more than that many uncompressed bytes come out of it."""
    if diff_id is not None and paths.store_layer(diff_id).is_dir():
        return diff_id
    with flocked(paths.unpack_lock()):
        if diff_id is not None and paths.store_layer(diff_id).is_dir():  # another import unpacked it meanwhile
            return diff_id
        _clean_stale_tmp()
        # A rootfs tar may prove to be in the store already: it is unpacked beside layers/, which then
        # changes only when a layer is added. Either way on the same filesystem, for the rename.
        tmp = paths.layers_dir() / f".tmp-{diff_id}-{os.getpid()}" if diff_id else _tar_scratch(os.getpid())
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "fs").mkdir(parents=True)
        if diff_id is not None:  # a rootfs tar's is told once it is known (below)
            _log.info("unpacking layer sha256:%s into %s", diff_id[:12], paths.store_layer(diff_id))
        try:
            with opener() as raw:
                stream = digest.LayerStream(raw, what, progress.advance, max_tar, known=known)
                try:
                    if known is not None and untar.worth_it(raw):  # a big plain tar file, hashed apart
                        stats = untar.unpack_parallel(raw, tmp / "fs", what=what, on_bytes=progress.advance)
                        stream.blob.size = os.fstat(raw.fileno()).st_size
                    else:
                        stats = unpack_stream(stream.tar, tmp / "fs", what=what)
                        stream.finish()
                except ImageError as exc:
                    raise ImageError(f"{what}: {exc}") from None
                finally:
                    stream.close()
            if blob_digest and stream.blob_digest != blob_digest:
                raise ImageError(f"{what} is corrupt: its sha256 is {stream.blob_digest}, "
                                 f"the manifest says {blob_digest}")
            if diff_id is None:
                diff_id = stream.diff_id
                if paths.store_layer(diff_id).is_dir():
                    _log.debug("layer sha256:%s of %s is in the store already", diff_id[:12], what)
                    shutil.rmtree(tmp)
                    return diff_id
                _log.info("unpacked layer sha256:%s of %s into %s", diff_id[:12], what, paths.store_layer(diff_id))
            if stream.diff_id != diff_id:
                raise ImageError(f"{what} is corrupt: its uncompressed sha256 is {stream.diff_id}, "
                                 f"the image config says {diff_id}")
            write_json_atomic(tmp / "layer.json", {
                "diff_id": f"sha256:{diff_id}", "blob": f"sha256:{stream.blob_digest}",
                "compression": stream.compression, "blob_size": stream.blob.size, "size": stats.file_bytes,
                "entries": stats.entries, "whiteouts": stats.whiteouts, "unpacked": time.time()})
            tmp.rename(paths.store_layer(diff_id))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _log.debug("layer sha256:%s: %s in %d entries", diff_id[:12], human(stats.file_bytes), stats.entries)
    return diff_id


def clean_partial() -> int:
    """``pish gc``: remove what imports and pulls that were killed left half-way (their pid is gone)."""
    if not paths.layers_dir().is_dir():
        return 0
    with flocked(paths.unpack_lock()):
        removed = _clean_stale_tmp()
    if removed:
        _log.info("removed %d partial layer(s) of killed imports or pulls", removed)
    return removed


def _tar_scratch(pid: int) -> Path:
    return paths.lib_root() / f".tmp-tar-{pid}"


def _clean_stale_tmp() -> int:
    """Remove what imports killed mid-way left (their pid is gone); how many. Called under unpack.lock."""
    stale = [paths.layers_dir() / e for e in os.listdir(paths.layers_dir())
             if (m := re.fullmatch(r"\.tmp-(?:[0-9a-f]{64}|dir)-(\d+)(?:\.tar)?", e)) and not _alive(int(m.group(1)))]
    stale += [paths.lib_root() / e for e in os.listdir(paths.lib_root())
              if (m := re.fullmatch(r"\.tmp-tar-(\d+)", e)) and not _alive(int(m.group(1)))]
    for target in stale:
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    return len(stale)


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
