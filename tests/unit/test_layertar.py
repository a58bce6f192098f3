"""layertar: layer directories back into tars (whiteouts, opaque dirs, hard links, symlinks, devices,
owners, xattrs), deterministic, with the digests of what was written, and the merged view of several
layers. Needs root (device nodes, chown, trusted.* xattrs), as the store does."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from pish_core.image import layertar, whiteout
from pish_core.image.unpack import unpack_stream

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, chown, trusted xattrs)")


def members(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return tar.getmembers()


def layer(root: Path) -> tuple[layertar.LayerDigests, bytes, bytes]:
    """Write ``root`` as a layer: the digests, the blob (gzip) and the tar."""
    out = io.BytesIO()
    made = layertar.write_layer(root, out)
    blob = out.getvalue()
    return made, blob, gzip.decompress(blob)


def by_name(raw: bytes) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in members(raw)}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A layer as the store keeps it: files, a hard link, symlinks, a fifo, a device, whiteouts."""
    root = tmp_path / "layer"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.chown(root / "etc" / "passwd", 12, 34)
    os.chmod(root / "etc" / "passwd", 0o640)
    os.utime(root / "etc" / "passwd", (1_600_000_000, 1_600_000_000))
    os.link(root / "etc" / "passwd", root / "etc" / "passwd-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("/", root / "escape")
    os.utime(root / "abs-link", (1_500_000_000, 1_500_000_000), follow_symlinks=False)
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    whiteout.make_whiteout(root / "gone")
    (root / "opaque").mkdir()
    whiteout.make_opaque(root / "opaque")
    (root / "opaque" / "kept").write_text("kept\n")
    os.setxattr(root / "etc" / "passwd", "user.note", b"hello")
    os.setxattr(root / "etc", "trusted.overlay.origin", b"x")
    return root


def test_whiteouts_and_opaque_directories_become_oci_markers(tree: Path) -> None:
    _, _, tar = layer(tree)
    m = by_name(tar)
    gone = m[".wh.gone"]
    assert gone.isreg() and gone.size == 0 and (gone.uid, gone.gid, gone.mode, gone.mtime) == (0, 0, 0, 0)
    assert "gone" not in m
    names = [x.name for x in members(tar)]
    assert names.index("opaque/.wh..wh..opq") == names.index("opaque") + 1  # first in its directory
    assert "opaque/kept" in m


def test_hardlinks_symlinks_fifos_devices_owners_xattrs(tree: Path) -> None:
    _, _, tar = layer(tree)
    m = by_name(tar)
    first, second = m["etc/passwd"], m["etc/passwd-link"]
    assert first.isreg() and (first.uid, first.gid, first.mode, first.mtime) == (12, 34, 0o640, 1_600_000_000)
    assert second.islnk() and second.linkname == "etc/passwd"
    assert first.pax_headers.get("SCHILY.xattr.user.note") == "hello"
    assert not any(k.startswith("SCHILY.xattr.trusted.overlay") for k in m["etc"].pax_headers)
    assert m["abs-link"].issym() and m["abs-link"].linkname == "/etc/passwd"
    assert m["abs-link"].mtime == 1_500_000_000
    assert m["escape"].issym() and not any(n.startswith("escape/") for n in m)  # never followed
    assert m["fifo"].isfifo()
    assert m["null"].ischr() and (m["null"].devmajor, m["null"].devminor) == (1, 3)
    assert all(x.uname == "" and x.gname == "" for x in m.values())


def test_order_is_by_name_and_output_is_deterministic(tree: Path) -> None:
    made, blob, tar = layer(tree)
    names = [x.name for x in members(tar)]
    top = [n for n in names if "/" not in n]
    assert top == sorted(top, key=os.fsencode)
    again, blob2, _ = layer(tree)
    assert again == made and blob2 == blob


def test_digests_are_those_of_the_bytes_written(tree: Path) -> None:
    made, blob, tar = layer(tree)
    assert made.digest == hashlib.sha256(blob).hexdigest() and made.size == len(blob)
    assert made.diff_id == hashlib.sha256(tar).hexdigest() and made.tar_size == len(tar)
    assert layertar.write_layer(tree, None) == made  # digests alone, nothing written


def test_unpacked_and_written_again_is_the_same_tar(tree: Path, tmp_path: Path) -> None:
    os.removexattr(tree / "etc" / "passwd", "user.note")  # the unpacker keeps no xattrs but the opaque one
    os.unlink(tree / "null")  # devices outside /dev are refused by the unpacker
    made, _, tar = layer(tree)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    unpack_stream(io.BytesIO(tar), dest, what="test layer")
    assert whiteout.is_whiteout(os.lstat(dest / "gone")) and whiteout.is_opaque(dest / "opaque")
    assert os.lstat(dest / "abs-link").st_mtime == 1_500_000_000  # a symlink's own time kept by the unpacker
    assert layer(dest)[0] == made


def test_a_symlinked_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(Exception, match="cannot read directory"):
        layertar.write_layer(tmp_path / "link", io.BytesIO())


def test_a_file_that_changes_size_keeps_the_listed_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert layertar._Exact(fd, 5).read() == b"abc\0\0"  # shrank: padded
        os.lseek(fd, 0, os.SEEK_SET)
        assert layertar._Exact(fd, 2).read() == b"ab"  # grew: cut
    finally:
        os.close(fd)


def test_merged_view_applies_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for d in (lower / "bin", lower / "etc" / "sub", lower / "data", upper / "etc", upper / "data"):
        d.mkdir(parents=True)
    (lower / "bin" / "vi").write_text("vi")
    (lower / "bin" / "sh").write_text("sh")
    (lower / "etc" / "hosts").write_text("lower")
    (lower / "etc" / "sub" / "x").write_text("x")
    (lower / "data" / "old").write_text("old")
    (lower / "dir-then-file").mkdir()
    (lower / "dir-then-file" / "inside").write_text("hidden")
    (upper / "bin").mkdir()
    whiteout.make_whiteout(upper / "bin" / "vi")
    (upper / "etc" / "hosts").write_text("upper")
    whiteout.make_opaque(upper / "data")
    (upper / "data" / "new").write_text("new")
    (upper / "dir-then-file").write_text("a file now")
    out = io.BytesIO()
    layertar.write_merged([layertar.Source(upper), layertar.Source(lower)], out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = {m.name for m in tar.getmembers()}
        hosts = tar.extractfile("etc/hosts")
        assert hosts is not None and hosts.read() == b"upper"
    assert {".", "bin", "bin/sh", "etc", "etc/hosts", "etc/sub", "etc/sub/x", "data", "data/new",
            "dir-then-file"} == names
    assert not any(whiteout.is_marker(n.rsplit("/", 1)[-1]) for n in names)


def test_merged_view_maps_owners_of_a_userns_upper(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    upper.mkdir()
    lower.mkdir()
    (upper / "f").write_text("f")
    os.chown(upper / "f", 100_000 + 5, 100_000 + 6)
    out = io.BytesIO()
    layertar.write_merged([layertar.Source(upper, lambda u, g: (u - 100_000, g - 100_000)), layertar.Source(lower)], out)
    f = by_name(out.getvalue())["f"]
    assert (f.uid, f.gid) == (5, 6)


def test_a_hard_link_whose_first_name_went_meanwhile_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A running container deletes ``a`` (linked as ``b``) after the listing: ``a`` is left out, and ``b``
    was written as a hard link to it, a member no unpacker can make (a commit failed on it)."""
    root = tmp_path / "layer"
    root.mkdir()
    (root / "a").write_bytes(b"data")
    os.link(root / "a", root / "b")
    original = layertar._Writer._file

    def deleted_first(self: layertar._Writer, info: tarfile.TarInfo, node: layertar._Node, *rest: object) -> object:
        if node.name == "a":
            os.unlink(node.name, dir_fd=node.dir_fd)
        return original(self, info, node, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(layertar._Writer, "_file", deleted_first)
    out = io.BytesIO()
    layertar.write_layer_tar(root, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["b"]
        assert members["b"].isreg()
        data = tar.extractfile(members["b"])
        assert data is not None and data.read() == b"data"
