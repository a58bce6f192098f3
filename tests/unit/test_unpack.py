"""unpack_tar against hostile archives: each is refused, naming the member, and nothing lands outside.

Every test runs twice: with the streamed unpack, and with the one the importer uses for a big plain tar
file (``untar.unpack_parallel``: planned, the files written by forked writers and this process), here for
any size.

Every archive is unpacked into ``tmp_path/a/b/dest``, next to a ``sentinel`` directory that the attacks
aim at (``../../../sentinel`` from dest, or its absolute path), so a failed check writes somewhere this
test looks rather than into the host's /etc.
"""
from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest
from fixtures.images import imagebuild as ib
from fixtures.images.imagebuild import Member, directory, hardlink, layer_tar, symlink
from helpers.loglines import LogLines

from pish_core.errors import ImageError
from pish_core.image import untar
from pish_core.image.unpack import UnpackStats, unpack_tar

streamed = unpack_tar


def in_several_processes(archive: Path, dest: Path, *, whiteouts: bool = False) -> UnpackStats:
    """``unpack_tar`` as the importer unpacks a big plain tar file (a compressed one is streamed)."""
    with open(archive, "rb") as f:
        if f.read(6).startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
            return streamed(archive, dest, whiteouts=whiteouts)
        return untar.unpack_parallel(f, dest, what=f"image {archive}", whiteouts=whiteouts)


@pytest.fixture(autouse=True, params=["streamed", "in-several-processes"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "in-several-processes":
        monkeypatch.setattr(sys.modules[__name__], "unpack_tar", in_several_processes)
    return str(request.param)


def file(name: str, data: bytes = b"pwned\n") -> Member:
    return ib.file(name, data)


def make_tar(path: Path, members: list[Member]) -> Path:
    path.write_bytes(layer_tar(members))
    return path


class Layout:
    """tmp_path/a/b/dest (unpack here), tmp_path/sentinel (must not change), the archive beside them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dest = root / "a" / "b" / "dest"
        self.dest.mkdir(parents=True)
        self.sentinel = root / "sentinel"
        self.sentinel.mkdir(mode=0o755)
        self.sentinel.chmod(0o755)
        (self.sentinel / "target").write_text("original\n")
        self.archive = root / "image.tar"
        self._before = self.outside()

    def outside(self) -> dict[str, tuple[int, int, int, int, bytes]]:
        """Everything under tmp_path except dest and the archive: path -> (mode, uid, mtime, size, data)."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.dest:
                dirnames[:] = []
                continue
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p in (self.dest, self.archive):
                    continue
                st = p.lstat()
                data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
                out[str(p)] = (st.st_mode, st.st_uid, st.st_mtime_ns, st.st_size, data)
        return out

    def assert_untouched(self) -> None:
        assert self.outside() == self._before, "unpacking changed something outside dest"


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path)


def hostile_cases(sentinel: Path) -> dict[str, tuple[list[Member], str]]:
    """case id -> (members, the member name the error must name)."""
    abs_sentinel = str(sentinel).lstrip("/")
    return {
        "dotdot": ([file("../escape")], "../escape"),
        "dotdot-deep": ([file("../../../sentinel/pwned")], "../../../sentinel/pwned"),
        "dotdot-hidden": ([directory("x"), file("x/../../../../sentinel/pwned")], "x/../../../../sentinel/pwned"),
        "absolute": ([file(f"/{abs_sentinel}/pwned")], f"/{abs_sentinel}/pwned"),
        "symlink-to-root-then-write": (
            [symlink("evil", "/"), file(f"evil/{abs_sentinel}/pwned")], f"evil/{abs_sentinel}/pwned"
        ),
        "symlink-relative-then-write": (
            [symlink("rel", "../../.."), file("rel/sentinel/pwned")], "rel/sentinel/pwned"
        ),
        "symlink-then-mkdir": ([symlink("evil", str(sentinel)), directory("evil/sub")], "evil/sub"),
        "symlink-then-symlink": ([symlink("evil", str(sentinel)), symlink("evil/pwned", "/")], "evil/pwned"),
        "hardlink-outside": ([hardlink("passwd", "../../etc/passwd")], "passwd"),
        "hardlink-absolute": ([hardlink("target", f"/{abs_sentinel}/target")], "target"),
        "hardlink-through-symlink": (
            [symlink("evil", str(sentinel)), hardlink("target", "evil/target")], "target"
        ),
        "hardlink-to-symlink": (
            [symlink("evil", str(sentinel / "target")), hardlink("target", "evil")], "target"
        ),
        "char-device": ([Member("null", tarfile.CHRTYPE, mode=0o666)], "null"),
        "block-device": ([Member("sda", tarfile.BLKTYPE, mode=0o660)], "sda"),
        "device-outside-dev": ([directory("etc"), Member("etc/null", tarfile.CHRTYPE, mode=0o666)], "etc/null"),
    }


CASE_IDS = list(hostile_cases(Path("/x")))


@pytest.mark.parametrize("case", CASE_IDS)
def test_hostile_archive_is_refused(layout: Layout, case: str) -> None:
    members, culprit = hostile_cases(layout.sentinel)[case]
    make_tar(layout.archive, members)
    with pytest.raises(ImageError) as err:
        unpack_tar(layout.archive, layout.dest)
    assert repr(culprit) in str(err.value) or culprit in str(err.value), str(err.value)
    layout.assert_untouched()
    if case == "hardlink-outside":
        assert not (layout.dest / "passwd").exists()


def with_size(tar: bytes, index: int, size: int) -> bytes:
    """``tar`` with the size field of its ``index``-th 512-byte block (a header) set to ``size`` in GNU
    base-256 (which can say negative), and the header's checksum fixed."""
    block = bytearray(tar[index * 512:(index + 1) * 512])
    block[124:136] = (b"\xff" if size < 0 else b"\x80") + (size % (1 << 88)).to_bytes(11, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return tar[:index * 512] + bytes(block) + tar[(index + 1) * 512:]


@pytest.mark.parametrize(("size", "long_name"), [(-512, False), (-1, False), (1 << 40, True)],
                         ids=["negative-a-block", "negative-one", "huge-long-name"])
def test_sizes_that_step_back_or_past_reason_are_refused(layout: Layout, size: int, long_name: bool) -> None:
    """A size of -512 made the reader read the same header again, forever (holding the unpack lock); a GNU
    long name of 2**40 bytes asked for that much memory at once (the review's t1.py and t2.py)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("x" * 120 if long_name else "a")  # a long name: an "L" header first
        info.size = 4
        t.addfile(info, io.BytesIO(b"data"))
    layout.archive.write_bytes(with_size(buf.getvalue(), 0, size))
    with pytest.raises(ImageError, match=r"corrupt tar header at byte 0"):
        unpack_tar(layout.archive, layout.dest)
    layout.assert_untouched()


def test_devices_under_dev_are_skipped_and_fifos_kept(layout: Layout, log_lines: LogLines) -> None:
    """A debootstrap/mmdebstrap tarball holds /dev/null, /dev/console...: skipped with one warning (the
    container gets its own /dev); a fifo is made."""
    make_tar(layout.archive, [
        directory("dev"), Member("dev/null", tarfile.CHRTYPE, mode=0o666), Member("dev/sda", tarfile.BLKTYPE),
        Member("./dev/console", tarfile.CHRTYPE, mode=0o600), directory("run"), Member("run/pipe", tarfile.FIFOTYPE),
        file("dev/readme", b"kept\n"),
    ])
    stats = unpack_tar(layout.archive, layout.dest)
    assert sorted(os.listdir(layout.dest / "dev")) == ["readme"]
    assert stat.S_ISFIFO(os.lstat(layout.dest / "run" / "pipe").st_mode)
    assert stats.skipped_devices == 3
    assert [m for m in log_lines.messages("warning") if "device node" in m] == [
        "skipped 3 device node(s) under /dev: the container gets its own /dev"]
    layout.assert_untouched()


def test_not_a_tar(layout: Layout) -> None:
    layout.archive.write_bytes(b"this is not a tar archive\n" * 100)
    with pytest.raises(ImageError):
        unpack_tar(layout.archive, layout.dest)


def test_rootfs_with_absolute_symlinks_unpacks(layout: Layout) -> None:
    make_tar(layout.archive, [
        directory("bin"), Member("bin/busybox", data=b"\x7fELF...", mode=0o755),
        symlink("bin/sh", "/bin/busybox"), symlink("bin/ls", "busybox"),
        directory("etc"), file("etc/hostname", b"box\n"), hardlink("bin/busybox2", "bin/busybox", 0o755),
        directory("tmp", mode=0o1777),
    ])
    unpack_tar(layout.archive, layout.dest)
    assert os.readlink(layout.dest / "bin" / "sh") == "/bin/busybox"  # kept as is, not rewritten
    assert os.readlink(layout.dest / "bin" / "ls") == "busybox"
    assert (layout.dest / "etc" / "hostname").read_text() == "box\n"
    assert (layout.dest / "bin" / "busybox").stat().st_mode & 0o777 == 0o755
    assert (layout.dest / "bin" / "busybox2").stat().st_ino == (layout.dest / "bin" / "busybox").stat().st_ino
    assert stat.S_IMODE((layout.dest / "tmp").stat().st_mode) == 0o1777
    layout.assert_untouched()


@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_file_replacing_a_symlink_does_not_write_through_it(layout: Layout, link: str) -> None:
    target = str(layout.sentinel / "target") if link == "absolute" else "../../../sentinel/target"
    make_tar(layout.archive, [symlink("x", target), file("x", b"replaced\n")])
    unpack_tar(layout.archive, layout.dest)
    assert not (layout.dest / "x").is_symlink()
    assert (layout.dest / "x").read_text() == "replaced\n"
    assert (layout.sentinel / "target").read_text() == "original\n"
    layout.assert_untouched()


def test_symlink_replacing_a_symlink(layout: Layout) -> None:
    make_tar(layout.archive, [symlink("x", str(layout.sentinel)), symlink("x", "/bin/busybox")])
    unpack_tar(layout.archive, layout.dest)
    assert os.readlink(layout.dest / "x") == "/bin/busybox"
    layout.assert_untouched()


def test_directory_replacing_a_symlink_does_not_touch_its_target(layout: Layout) -> None:
    """A directory member where an earlier member planted a symlink: its mode and owner must not be
    applied through the link to the directory it points at (here the sentinel; in an attack, /etc)."""
    make_tar(layout.archive, [symlink("d", str(layout.sentinel)), directory("d", mode=0o777, uid=4321)])
    refused: ImageError | None = None
    try:
        unpack_tar(layout.archive, layout.dest)
    except ImageError as exc:
        refused = exc
    layout.assert_untouched()
    if refused:  # refusing is fine; replacing the link with a real directory is fine too
        assert "'d'" in str(refused)
    else:
        assert (layout.dest / "d").is_dir() and not (layout.dest / "d").is_symlink()


def test_replacing_a_directory_is_refused(layout: Layout) -> None:
    make_tar(layout.archive, [directory("etc"), file("etc/passwd", b"root\n"), file("etc", b"flat\n")])
    with pytest.raises(ImageError, match="'etc'"):
        unpack_tar(layout.archive, layout.dest)
    layout.assert_untouched()


# -- the unpacker's own tar reader (it parses headers itself, and writes files by their fd) --------------


def _tar_of(path: Path, fmt: int, infos: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for info, data in infos:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 1_600_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


LONG = "d" * 90 + "/" + "e" * 90 + "/" + "f" * 80  # no field of a plain header holds it


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_owners_and_times_in_every_tar_format(layout: Layout, fmt: int) -> None:
    """ustar's prefix field, GNU's long name and link members, pax records: read as tarfile reads them."""
    name = LONG if fmt != tarfile.USTAR_FORMAT else "u" * 120 + "/" + "v" * 90  # ustar: prefix + name
    target = "/" + name if fmt != tarfile.USTAR_FORMAT else "/bin/busybox"  # ustar has no long link names
    big = {"uid": 3_000_000, "gid": 3_000_001} if fmt != tarfile.USTAR_FORMAT else {"uid": 1234, "gid": 4321}
    _tar_of(layout.archive, fmt, [
        (_info(name, tarfile.REGTYPE, mode=0o640, **big), b"long\n"),
        (_info("link", tarfile.SYMTYPE, linkname=target), b""),
        (_info("s", mode=0o600), b"s"),
        (_info("hard", tarfile.LNKTYPE, linkname="s", mode=0o600), b""),  # its mode is the inode's
    ])
    stats = unpack_tar(layout.archive, layout.dest)
    made = layout.dest / name
    assert made.read_bytes() == b"long\n" and stats.entries == 4
    st = made.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o640, 1_600_000_000)
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (big["uid"], big["gid"])
    assert os.readlink(layout.dest / "link") == target
    assert (layout.dest / "hard").stat().st_ino == (layout.dest / "s").stat().st_ino
    assert (layout.dest / name.split("/")[0]).is_dir()  # parents no member names: made, as tar makes them
    layout.assert_untouched()


def test_parents_no_member_names_are_0755_and_a_later_member_sets_its_own(layout: Layout) -> None:
    _tar_of(layout.archive, tarfile.PAX_FORMAT, [
        (_info("a/b/file"), b"x"), (_info("a/b", tarfile.DIRTYPE, mode=0o700), b""),
    ])
    unpack_tar(layout.archive, layout.dest)
    assert stat.S_IMODE((layout.dest / "a").stat().st_mode) == 0o755
    b = (layout.dest / "a" / "b").stat()
    assert (stat.S_IMODE(b.st_mode), b.st_mtime) == (0o700, 1_600_000_000)


def test_modes_times_and_setuid_survive(layout: Layout) -> None:
    """A file's mode is set on its fd after its owner (a chown clears setuid bits); a directory's mode
    and time go on last, a read-only directory's entries are written before it is made read-only."""
    _tar_of(layout.archive, tarfile.PAX_FORMAT, [
        (_info("ro", tarfile.DIRTYPE, mode=0o555), b""),
        (_info("ro/su", mode=0o4755, uid=0, gid=42), b"#!\n"),
        (_info("ro/plain", mode=0o600), b"p"),
        (_info("tmp", tarfile.DIRTYPE, mode=0o1777), b""),
    ])
    unpack_tar(layout.archive, layout.dest)
    su, ro = (layout.dest / "ro" / "su").stat(), (layout.dest / "ro").stat()
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_mtime == 1_600_000_000
    assert stat.S_IMODE((layout.dest / "ro" / "plain").stat().st_mode) == 0o600
    assert (stat.S_IMODE(ro.st_mode), ro.st_mtime) == (0o555, 1_600_000_000)
    assert stat.S_IMODE((layout.dest / "tmp").stat().st_mode) == 0o1777
    if os.geteuid() == 0:
        assert su.st_gid == 42


def test_sparse_files_are_refused_in_one_line(layout: Layout) -> None:
    info = _info("holes")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "holes",
                        "GNU.sparse.realsize": "1048576"}
    _tar_of(layout.archive, tarfile.PAX_FORMAT, [(info, b"\0" * 512)])
    with pytest.raises(ImageError, match="refusing tar member .*sparse files are not supported"):
        unpack_tar(layout.archive, layout.dest)


def test_a_corrupt_header_after_the_first_is_refused(layout: Layout) -> None:
    """tarfile took a bad header after the first for the end of the archive, and said nothing."""
    raw = bytearray(layer_tar([file("a", b"x"), file("b", b"y")]))
    second = raw.index(b"b\0") // 512 * 512
    raw[second + 100] ^= 0x01  # its mode: the checksum no longer matches
    layout.archive.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match=r"cannot unpack image .*: corrupt tar header at byte \d+"):
        unpack_tar(layout.archive, layout.dest)


@pytest.mark.parametrize("compress", ["gzip", "bz2", "xz"])
def test_compressed_archives(layout: Layout, compress: str) -> None:
    import bz2
    import gzip
    import lzma

    raw = layer_tar([directory("etc"), file("etc/hostname", b"box\n")])
    packed = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compress](raw)
    layout.archive.write_bytes(packed)
    unpack_tar(layout.archive, layout.dest)
    assert (layout.dest / "etc" / "hostname").read_text() == "box\n"


def test_a_file_spanning_read_chunks(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    from pish_core.image import unpack

    monkeypatch.setattr(unpack, "CHUNK", 1000)  # not a multiple of the tar's 512-byte blocks
    data = bytes(range(256)) * 40
    make_tar(layout.archive, [file("a", b"1"), file("big", data), file("c", b"3")])
    unpack_tar(layout.archive, layout.dest)
    assert (layout.dest / "big").read_bytes() == data and (layout.dest / "c").read_bytes() == b"3"


@pytest.mark.parametrize("layer", [b"\0" * 1024, b"\0" * 10240], ids=["two-zero-blocks", "tarfile-empty"])
def test_an_empty_layer_is_an_empty_archive(tmp_path: Path, layer: bytes) -> None:
    """Docker images carry an empty layer (a tar of nothing but its end blocks: a3ed95ca... gzipped). A
    zero block where the first header would be is the end of an empty archive, as tarfile reads it; pish's
    own reader first refused it as "not a tar archive" (caught by test_hostile_registry's endless zeros)."""
    from pish_core.image.unpack import unpack_stream

    stats = unpack_stream(io.BytesIO(layer), tmp_path, what="an empty layer")
    assert stats.entries == 0 and list(tmp_path.iterdir()) == []


# -- the unpack in several processes -------------------------------------------------------------------


def test_several_processes_write_what_one_writes(layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many files across both halves, hard links to files of either half, owners, modes, times, symlinks."""
    monkeypatch.setattr(untar, "unpack_stream", None)  # no falling back to the streamed unpack here
    members = [directory("d"), directory("d/sub", mode=0o700), symlink("d/abs", "/etc/passwd")]
    members += [ib.file(f"d/f{i}", bytes([i]) * (i * 700), mode=0o4755 if i == 3 else 0o640, uid=i % 3)
                for i in range(40)]
    members += [hardlink("d/sub/l1", "d/f1"), hardlink("d/sub/l39", "d/f39"), file("d/sub/last", b"end\n")]
    make_tar(layout.archive, members)
    one = tmp_path / "one"
    one.mkdir()
    streamed(layout.archive, one)
    two = untar.unpack_parallel(open(layout.archive, "rb"), layout.dest, what="t")  # noqa: SIM115
    assert two.entries == len(members)

    def tree(root: Path) -> dict[str, tuple[int, int, int, int, bytes]]:
        out = {}
        for p in sorted(root.rglob("*")):
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(p).encode() if p.is_symlink() else b""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_nlink, st.st_mtime_ns, data)
        return out

    assert tree(layout.dest) == tree(one)
    assert os.lstat(layout.dest / "d" / "f1").st_ino == os.lstat(layout.dest / "d" / "sub" / "l1").st_ino


@pytest.mark.parametrize("members", [
    [file("a", b"old"), file("a", b"new")],
    [file("a", b"old"), hardlink("b", "a"), file("a", b"new")],  # b keeps the old a, as tar leaves it
    [directory("x"), file("x/.wh.gone", b"")],
], ids=["file-twice", "link-then-replaced", "whiteout"])
def test_what_the_plan_cannot_order_is_streamed(layout: Layout, tmp_path: Path, members: list[Member]) -> None:
    make_tar(layout.archive, members)
    one = tmp_path / "one"
    one.mkdir()
    streamed(layout.archive, one, whiteouts=True)
    untar.unpack_parallel(open(layout.archive, "rb"), layout.dest, what="t", whiteouts=True)  # noqa: SIM115
    assert sorted(os.listdir(layout.dest)) == sorted(os.listdir(one))
    for name in os.listdir(one):
        if (one / name).is_file():
            assert (layout.dest / name).read_bytes() == (one / name).read_bytes(), name


def test_a_failure_in_a_forked_writer_is_one_error(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tar(layout.archive, [file(f"f{i}", b"x" * 4096) for i in range(8)])
    real = untar._copy

    def copy(src: int, dst: int, offset: int, size: int) -> None:
        if os.readlink(f"/proc/self/fd/{dst}").endswith("/f1"):  # in the first quarter: a forked writer's
            raise OSError(28, "No space left on device")
        real(src, dst, offset, size)

    monkeypatch.setattr(untar, "_copy", copy)
    with pytest.raises(ImageError, match="cannot unpack t: .*No space left on device"):
        untar.unpack_parallel(open(layout.archive, "rb"), layout.dest, what="t")  # noqa: SIM115
    layout.assert_untouched()


def test_without_a_second_process_one_writes_them_all(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    """fork refused (a pids limit): the files are written here, the import does not fail."""
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(untar.os, "fork", no_fork)
    make_tar(layout.archive, [file(f"f{i}", bytes([i]) * 3000) for i in range(6)])
    untar.unpack_parallel(open(layout.archive, "rb"), layout.dest, what="t")  # noqa: SIM115
    assert sorted(os.listdir(layout.dest)) == [f"f{i}" for i in range(6)]
    assert (layout.dest / "f5").read_bytes() == bytes([5]) * 3000
