"""One read of a layer: its digests taken as it is unpacked, and a rootfs tar found in the store unread."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
from pathlib import Path

import pytest
from fixtures.images import imagebuild as ib
from helpers.loglines import LogLines

from pish_core import paths
from pish_core.image import digest, importer

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking images keeps owners: root")
TAR = ib.layer_tar([ib.directory("etc"), ib.file("etc/hostname", b"box\n" * 1000)])


def test_background_hash_is_sha256() -> None:
    h = digest.BackgroundHash()
    data = os.urandom(3 << 20)
    for i in range(0, len(data), 100_000):
        h.update(data[i:i + 100_000])
    assert h.hexdigest() == hashlib.sha256(data).hexdigest() == h.hexdigest()


@pytest.mark.parametrize("compressed", [False, True])
def test_a_layer_stream_gives_both_digests(compressed: bool) -> None:
    blob = gzip.compress(TAR) if compressed else TAR
    stream = digest.LayerStream(io.BytesIO(blob), "test layer")
    assert stream.tar.read(1 << 20) + stream.tar.read(1 << 20) == TAR
    stream.finish()
    assert stream.blob_digest == ib.sha(blob) and stream.diff_id == ib.sha(TAR)
    # an uncompressed layer is its own tar: one hash, not two of the same bytes
    assert (stream.tar_hash is stream.blob) is (not compressed)


def test_the_size_limit_holds_for_an_uncompressed_layer() -> None:
    stream = digest.LayerStream(io.BytesIO(TAR), "test layer", max_tar=1000)
    with pytest.raises(Exception, match="bigger than 1000 bytes"):
        while stream.tar.read(512):
            pass
    stream.close()


@needs_root
def test_a_rootfs_tar_is_unpacked_while_hashed_and_left_when_stored(
        pish_env: object, tmp_path: Path, log_lines: LogLines, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.tar").write_bytes(TAR)
    first = importer.import_path(tmp_path / "a.tar")[0]
    (tmp_path / "b.tar").write_bytes(TAR)

    class Known(importer._PreHash):  # the pre-hash done before the unpack reads a byte
        def __init__(self, path: Path, only: bool = False) -> None:
            super().__init__(path, only)
            self._thread.join()

    layers = os.stat(paths.layers_dir()).st_mtime_ns
    monkeypatch.setattr(importer, "_PreHash", Known)
    log_lines.clear()
    again = importer.import_path(tmp_path / "b.tar")[0]
    assert again.id == first.id
    said = log_lines.messages()
    assert any("is in the store already" in m for m in said)
    assert not [m for m in said if "unpacking" in m or "unpacked layer" in m]
    assert os.stat(paths.layers_dir()).st_mtime_ns == layers  # the unpack began beside the store, not in it
    assert not list(paths.lib_root().glob(".tmp-*"))  # and what it made is gone


def test_gc_removes_what_a_killed_rootfs_tar_import_left(pish_env: object) -> None:
    paths.layers_dir().mkdir(parents=True)
    dead = 2**22 + 12345  # above any pid_max: no such process
    (paths.lib_root() / f".tmp-tar-{dead}" / "fs").mkdir(parents=True)
    (paths.lib_root() / f".tmp-tar-{os.getpid()}").mkdir()  # an import still running: kept
    (paths.lib_root() / ".tmp-tar-x").mkdir()  # not ours
    assert importer.clean_partial() == 1
    assert sorted(p.name for p in paths.lib_root().glob(".tmp-tar-*")) == [f".tmp-tar-{os.getpid()}", ".tmp-tar-x"]
