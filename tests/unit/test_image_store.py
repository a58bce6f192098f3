"""The image store without containers: names, users, the config merge, whiteouts, digests, hostile layers.

Images here are made by hand (tests/fixtures/images/imagebuild.py) so that each can be wrong in exactly
one way. Unpacking keeps owners and makes overlayfs whiteouts (device nodes, trusted.* xattrs), so the
store tests need root; the pure ones do not.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
from fixtures.images import imagebuild as ib
from helpers.loglines import LogLines

from pish_core import paths, state
from pish_core.errors import ImageError, SpecError
from pish_core.image import cache, config, flatten, importer, store, whiteout
from pish_core.image.progress import Progress
from pish_core.spec import User
from pish_core.user import resolve as resolve_user

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking images keeps owners and makes device nodes: root")


# -- names, users, the config merge (no root) --------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("debian", "debian:latest"), ("debian:bookworm", "debian:bookworm"), ("docker.io/library/busybox:1", "busybox:1"),
    ("docker.io/pishtest/layers:v1", "pishtest/layers:v1"), ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
])
def test_parse_name(text: str, want: str) -> None:
    assert store.parse_name(text) == want


@pytest.mark.parametrize("text", ["", "UPPER", "a:b:c", "x:" + "t" * 200, "a/../b", "a" * 64])
def test_parse_name_refuses(text: str) -> None:
    with pytest.raises(ImageError):
        store.parse_name(text)


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n"
GROUP = "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\naudio:x:29:app\nnogroup:x:65534:\n"


@pytest.mark.parametrize(("spec", "user", "home"), [
    ("app", User(1000, 1000, (2000, 29)), "/home/app"),  # name: primary group + the groups listing it
    ("1000", User(1000, 1000, (2000, 29)), "/home/app"),  # a uid in passwd counts as that user
    ("app:extra", User(1000, 2000, ()), "/home/app"),  # an explicit group replaces them all
    ("app:29", User(1000, 29, ()), "/home/app"),
    ("4242", User(4242, 0, ()), "/"),  # numeric, not in passwd: gid 0, home /
    ("4242:4343", User(4242, 4343, ()), "/"),
    ("root", User(0, 0, ()), "/root"),
    (":extra", User(0, 2000, ()), "/root"),
])
def test_resolve_user_like_runc(spec: str, user: User, home: str) -> None:
    assert resolve_user(spec, PASSWD, GROUP) == (user, home)


@pytest.mark.parametrize(("spec", "message"), [
    ("ghost", "unable to find user ghost"), ("app:ghosts", "unable to find group ghosts"),
    ("99999999999", "out of range"),
])
def test_resolve_user_refuses(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        resolve_user(spec, PASSWD, GROUP)


def test_resolve_user_without_passwd_takes_numbers_only() -> None:
    assert resolve_user("7:8", None, None) == (User(7, 8, ()), "/")
    with pytest.raises(SpecError):
        resolve_user("app", None, None)


IMAGE_CONFIG = {"config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["PATH=/bin", "A=1"],
                           "WorkingDir": "/srv"}}


def test_config_merge_like_docker() -> None:
    p = config.process_for(IMAGE_CONFIG, [], args=())
    assert (p.args, p.env, p.cwd, p.user) == (("/bin/sh", "-c", "echo hi"), ("PATH=/bin", "A=1"), "/srv", None)
    p = config.process_for(IMAGE_CONFIG, [], args=("echo other",), env=("A=2",), workdir="/tmp")
    assert (p.args, p.env, p.cwd) == (("/bin/sh", "-c", "echo other"), ("PATH=/bin", "A=1", "A=2"), "/tmp")
    assert config.process_for(IMAGE_CONFIG, [], args=("x",), entrypoint="/bin/echo").args == ("/bin/echo", "x")
    assert config.process_for(IMAGE_CONFIG, [], args=("ls",), entrypoint="").args == ("ls",)
    assert config.process_for({}, [], args=()).args == ()
    assert config.process_for({"config": {"WorkingDir": "rel"}}, [], args=("x",)).cwd == "/rel"


def test_spec_keeps_the_user_and_image_through_json() -> None:
    from pish_core import names
    from pish_core.spec import ContainerSpec, Process

    spec = ContainerSpec(id=names.new_id(), name="u1", image="x:1", hostname="u1", image_id="ab" * 32,
                         readonly_rootfs=True, process=Process(args=("id",), user=User(5, 6, (7, 8))))
    back = ContainerSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.process.user == User(5, 6, (7, 8))


def test_progress_is_quiet_in_a_pipe_and_draws_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    pipe, tty = io.StringIO(), Tty()
    for stream in (pipe, tty):
        p = Progress(100 << 20, "layer 1/1", stream=stream)
        p.advance(50 << 20)
        p.done()
    assert pipe.getvalue() == ""
    assert "\r" in tty.getvalue() and "100%" in tty.getvalue() and "layer 1/1" in tty.getvalue()
    small = Tty()
    Progress(1000, "x", stream=small).done()
    assert small.getvalue() == ""  # a small import draws nothing


# -- the store (root) --------------------------------------------------------------------------------

BASE = [ib.directory("etc"), ib.file("etc/passwd", PASSWD.encode()), ib.file("etc/group", GROUP.encode()),
        ib.file("etc/gone", b"gone\n"), ib.directory("data"), ib.directory("data/old"), ib.file("data/old/a"),
        ib.file("data/keep", b"keep\n"), ib.directory("opt"), ib.directory("opt/app"), ib.file("opt/app/old"),
        ib.file("bin/tool", b"#!tool\n", 0o4755), ib.hardlink("bin/tool2", "bin/tool", 0o4755)]
TOP = [ib.whiteout("etc/gone"), ib.directory("data"), ib.whiteout("data/old"), ib.file("data/new", b"new\n"),
       ib.opaque("opt/app"), ib.directory("opt/app"), ib.file("opt/app/fresh", b"fresh\n")]
VISIBLE = {"bin", "bin/tool", "bin/tool2", "data", "data/keep", "data/new", "etc", "etc/group", "etc/passwd",
           "opt", "opt/app", "opt/app/fresh"}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def store_entries() -> set[str]:
    out = set()
    for d in (paths.layers_dir(), paths.images_dir()):
        if d.exists():
            out |= {f"{d.name}/{n}" for n in os.listdir(d)}
    return out


@pytest.fixture
def two_layers() -> tuple[bytes, bytes]:
    return ib.layer_tar(BASE), ib.layer_tar(TOP)


@needs_root
def test_oci_whiteouts_become_overlayfs_whiteouts(pish_env: object, tmp_path: Path, two_layers: tuple[bytes, bytes]) -> None:
    ib.oci_layout(tmp_path / "oci", list(two_layers), tag="v1")
    [img] = importer.import_path(tmp_path / "oci", "hand:v1")
    assert img.names == ["hand:v1"] and len(img.layers) == 2
    bottom, top = img.layer_dirs()
    assert whiteout.is_whiteout(os.lstat(top / "etc" / "gone"))
    assert whiteout.is_whiteout(os.lstat(top / "data" / "old"))
    assert whiteout.is_opaque(top / "opt" / "app") and not whiteout.is_opaque(bottom / "opt" / "app")
    assert not list(top.rglob(".wh.*")), "no OCI marker may stay in an unpacked layer"
    assert (bottom / "bin" / "tool").stat().st_mode & 0o7777 == 0o4755
    assert (bottom / "bin" / "tool").stat().st_ino == (bottom / "bin" / "tool2").stat().st_ino
    # What the merged image shows, looked up through the layers, and flattened as `--storage copy` does:
    assert whiteout.read_text([bottom, top], "etc/passwd") == PASSWD
    assert whiteout.lookup([bottom, top], "etc/gone") is None
    assert whiteout.lookup([bottom, top], "opt/app/old") is None
    flatten.flatten([bottom, top], tmp_path / "flat")
    assert tree(tmp_path / "flat") == VISIBLE
    assert (tmp_path / "flat" / "bin" / "tool").stat().st_ino == (tmp_path / "flat" / "bin" / "tool2").stat().st_ino


@needs_root
def test_layers_are_shared_between_formats(pish_env: object, tmp_path: Path, two_layers: tuple[bytes, bytes],
                                            log_lines: LogLines) -> None:
    layers = list(two_layers)
    ib.oci_layout(tmp_path / "oci", layers)
    ib.docker_archive(tmp_path / "saved.tar", layers, repo_tag="docker.io/hand/saved:v2")
    with tarfile.open(tmp_path / "oci.tar", "w") as t:
        t.add(tmp_path / "oci", arcname=".")
    [a] = importer.import_path(tmp_path / "oci", "hand:oci")
    before = {p: p.stat().st_mtime_ns for p in paths.layers_dir().iterdir()}
    log_lines.clear()
    [b] = importer.import_path(tmp_path / "saved.tar")
    [c] = importer.import_path(tmp_path / "oci.tar")
    assert a.id == b.id == c.id  # one config, one image, whatever the wrapping
    assert c.names == ["hand/saved:v2", "hand:oci", "oci:latest"]
    assert {p: p.stat().st_mtime_ns for p in paths.layers_dir().iterdir()} == before
    assert not [m for m in log_lines.messages("info") if "unpacking" in m]


@needs_root
def test_rootfs_tar_is_keyed_by_content(pish_env: object, tmp_path: Path, log_lines: LogLines) -> None:
    raw = ib.layer_tar(BASE)
    (tmp_path / "a.tar").write_bytes(raw)
    (tmp_path / "b.tar").write_bytes(raw)
    (tmp_path / "c.tar.gz").write_bytes(gzip.compress(raw))
    first = cache.resolve(str(tmp_path / "a.tar"))
    log_lines.clear()
    assert cache.resolve(str(tmp_path / "a.tar")).image_id == first.image_id  # the stat pre-check
    assert cache.resolve(str(tmp_path / "b.tar")).image_id == first.image_id  # same bytes elsewhere
    assert cache.resolve(str(tmp_path / "c.tar.gz")).image_id == first.image_id  # same tar, gzipped
    os.utime(tmp_path / "a.tar", (1, 1))  # the identity changes: hashed again, nothing unpacked
    assert cache.resolve(str(tmp_path / "a.tar")).image_id == first.image_id
    assert not [m for m in log_lines.messages("info") if "unpacking" in m]
    assert len(os.listdir(paths.layers_dir())) == 1
    assert store.list_images()[0].names == []
    assert os.listdir(paths.image_sources_dir())  # what each path gave is remembered...
    store.remove(first.image_id)
    assert os.listdir(paths.image_sources_dir()) == []  # ...and forgotten with the image


@needs_root
def test_a_plain_rootfs_tar_is_hashed_once_and_a_tar_opened_for_writing_meanwhile_is_refused(
        pish_env: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An uncompressed rootfs tar pish holds a read lease on is hashed by the pre-hash thread alone; its
    bytes and those unpacked are read apart, so a tar somebody opens for writing during the import must
    not be stored under the digest of either. (A ctime check let a write through a dirty shared mapping
    by: the review's reproducer stored tar B's tree under tar A's digest.)"""
    import hashlib
    import threading
    import time

    raw = ib.layer_tar(BASE)
    tar = tmp_path / "a.tar"
    tar.write_bytes(raw)
    hashed = []
    real = importer.digest.BackgroundHash.update
    monkeypatch.setattr(importer.digest.BackgroundHash, "update", lambda self, data: (hashed.append(len(data)),
                                                                                   real(self, data))[1])
    [img] = importer.import_path(tar)
    assert img.layers == [hashlib.sha256(raw).hexdigest()]
    assert sum(hashed) == len(raw)  # once: by the pre-hash, not again by the unpack's pass

    other = tmp_path / "b.tar"
    other.write_bytes(ib.layer_tar([ib.file("x", b"x")]))
    real_result = importer._PreHash.result
    writer = threading.Thread(target=lambda: os.close(os.open(other, os.O_WRONLY)))  # waits for the lease

    def written(self: importer._PreHash, held: object) -> str:
        writer.start()
        deadline = time.monotonic() + 5
        while held() and time.monotonic() < deadline:  # type: ignore[operator]
            time.sleep(0.01)  # until the kernel starts breaking the lease
        return real_result(self, held)  # type: ignore[arg-type]

    monkeypatch.setattr(importer._PreHash, "result", written)
    with pytest.raises(ImageError, match="was opened for writing while it was imported"):
        importer.import_path(other)
    writer.join(10)
    assert not writer.is_alive()  # let in once pish let go
    assert len(os.listdir(paths.layers_dir())) == 1  # the first tar's layer only, no temp dir left


@needs_root
def test_a_tar_open_for_writing_is_hashed_over_the_bytes_unpacked(pish_env: object, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No lease while a writer has the tar open (here a writable shared mapping): the unpack's own pass
    hashes what it unpacks, and the two-process unpack is not used."""
    import mmap

    raw = ib.layer_tar(BASE)
    tar = tmp_path / "a.tar"
    tar.write_bytes(raw)
    monkeypatch.setattr(importer.untar, "unpack_parallel", None)
    hashed = []
    real = importer.digest.BackgroundHash.update
    monkeypatch.setattr(importer.digest.BackgroundHash, "update", lambda self, data: (hashed.append(len(data)),
                                                                                   real(self, data))[1])
    with open(tar, "r+b") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED):
        [img] = importer.import_path(tar)
    assert sum(hashed) == 2 * len(raw)  # the unpack's pass, and the pre-hash (a shortcut only)
    assert img.layers == [importer.digest.sha256_bytes(raw)]


@needs_root
def test_directory_import_goes_through_the_same_checks(pish_env: object, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("box\n")
    [img] = importer.import_path(root, "dir:1")
    assert (img.layer_dirs()[0] / "etc" / "hostname").read_text() == "box\n"
    os.mknod(root / "etc" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(ImageError, match="etc/null"):
        importer.import_path(root, "dir:2")


@needs_root
def test_umoci_style_layer_without_end_blocks(pish_env: object, tmp_path: Path) -> None:
    """umoci 0.4.7's `insert` stops right after the last file's data; Go's tar reader (and pish) take it."""
    full = ib.layer_tar([ib.directory("x"), ib.file("x/f", b"fresh\n")])
    with tarfile.open(fileobj=io.BytesIO(full)) as t:
        end = t.getmember("x/f").offset_data + 6
    cut = full[:end]  # the file's data, then nothing: no padding, no end-of-archive blocks
    ib.oci_layout(tmp_path / "oci", [cut])
    [img] = importer.import_path(tmp_path / "oci")
    assert (img.layer_dirs()[0] / "x" / "f").read_bytes() == b"fresh\n"
    truncated = full[:end - 3]  # the data itself cut short: refused
    ib.oci_layout(tmp_path / "bad", [truncated])
    with pytest.raises(ImageError, match="truncated|unexpected end"):
        importer.import_path(tmp_path / "bad")


# -- what is verified ---------------------------------------------------------------------------------


def _corrupt(case: str, root: Path, layers: list[bytes]) -> None:
    if case == "blob":  # the stored layer is not what the manifest's digest says
        ib.oci_layout(root, layers, blob_override={1: gzip.compress(ib.layer_tar([ib.file("evil")]))})
    elif case == "diff_id":  # the config names another uncompressed content
        cfg = ib.config_for(layers)
        cfg["rootfs"]["diff_ids"][1] = f"sha256:{'0' * 64}"
        ib.oci_layout(root, layers, cfg)
    elif case == "config":
        out = ib.oci_layout(root, layers)
        (root / "blobs" / "sha256" / out["config"]).write_bytes(b'{"rootfs": {"diff_ids": []}}')
    elif case == "manifest":
        out = ib.oci_layout(root, layers)
        path = root / "blobs" / "sha256" / out["manifest"]
        path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion": 3'))
    elif case == "count":
        ib.oci_layout(root, layers, ib.config_for(layers[:1]))


@needs_root
@pytest.mark.parametrize("case", ["blob", "diff_id", "config", "manifest", "count"])
def test_digests_are_verified(pish_env: object, tmp_path: Path, two_layers: tuple[bytes, bytes], case: str) -> None:
    _corrupt(case, tmp_path / "oci", list(two_layers))
    with pytest.raises(ImageError) as err:
        importer.import_path(tmp_path / "oci")
    want = {"blob": "corrupt", "diff_id": "corrupt", "config": "digest", "manifest": "digest", "count": "diff_ids"}
    assert want[case] in str(err.value)
    assert store_entries() <= {f"layers/{ib.sha(two_layers[0])}"}  # at most the good bottom layer stays
    assert store.list_images() == []


# -- hostile layers -----------------------------------------------------------------------------------


def hostile(sentinel: Path) -> dict[str, tuple[list[ib.Member], str]]:
    """case -> (members of a layer, the member the refusal must name)."""
    abs_s = str(sentinel).lstrip("/")
    return {
        "traversal": ([ib.file("../../../../../../../../escape")], "../../../../../../../../escape"),
        "absolute": ([ib.file(f"/{abs_s}/pwned")], f"/{abs_s}/pwned"),
        "absolute-symlink-then-write": ([ib.symlink("evil", "/"), ib.file(f"evil/{abs_s}/pwned")], f"evil/{abs_s}/pwned"),
        "symlink-then-write": ([ib.symlink("evil", str(sentinel)), ib.file("evil/target")], "evil/target"),
        "hardlink-out": ([ib.hardlink("passwd", f"/{abs_s}/target")], "passwd"),
        "hardlink-up": ([ib.hardlink("passwd", "../../../../../etc/passwd")], "passwd"),
        "device": ([ib.device("etc/null")], "etc/null"),  # under dev/ it is skipped (test_unpack.py)
        "whiteout-through-symlink": ([ib.symlink("evil", str(sentinel)), ib.whiteout("evil/target")], "evil/.wh.target"),
        "opaque-through-symlink": ([ib.symlink("evil", str(sentinel)), ib.opaque("evil")], "evil/.wh..wh..opq"),
        "whiteout-with-children": ([ib.file(".wh.x/y")], ".wh.x/y"),
    }


@needs_root
@pytest.mark.parametrize("fmt", ["oci", "docker", "rootfs"])
@pytest.mark.parametrize("case", list(hostile(Path("/x"))))
def test_hostile_layers_are_refused(pish_env: object, tmp_path: Path, fmt: str, case: str) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "target").write_text("original\n")
    members, culprit = hostile(sentinel)[case]
    good = ib.layer_tar([ib.file("etc/hostname", b"ok\n")])
    bad = ib.layer_tar(members)
    if fmt == "oci":
        ib.oci_layout(tmp_path / "img", [good, bad])
    elif fmt == "docker":
        ib.docker_archive(tmp_path / "img", [good, bad])
    else:
        (tmp_path / "img").write_bytes(bad)
    before = sorted((str(p), p.lstat().st_mtime_ns) for p in tmp_path.rglob("*") if "pish-" not in str(p))
    with pytest.raises(ImageError) as err:
        importer.import_path(tmp_path / "img")
    assert repr(culprit) in str(err.value), str(err.value)
    after = sorted((str(p), p.lstat().st_mtime_ns) for p in tmp_path.rglob("*") if "pish-" not in str(p))
    assert after == before, "the import wrote outside the store"
    assert (sentinel / "target").read_text() == "original\n"
    assert not (Path("/escape")).exists()
    bad_layers = [e for e in store_entries() if e.startswith("layers/") and ib.sha(bad) in e]
    assert not bad_layers and not [e for e in store_entries() if ".tmp" in e or e.startswith("images/")]


# -- removing ----------------------------------------------------------------------------------------


def _fake_container(name: str, image_id: str) -> None:
    """A container record that uses ``image_id``, as `pish create` leaves one."""
    cid = ib.sha(name.encode())
    paths.container_dir(cid).mkdir(parents=True)
    state.ContainerState(id=cid, name=name, image="x", command=["true"], spec={"image_id": image_id}).save()


@needs_root
def test_rm_refuses_an_image_in_use_and_collects_unused_layers(pish_env: object, tmp_path: Path,
                                                                two_layers: tuple[bytes, bytes]) -> None:
    base, top = two_layers
    ib.oci_layout(tmp_path / "one", [base])
    ib.oci_layout(tmp_path / "two", [base, top])
    [one] = importer.import_path(tmp_path / "one", "one:1")
    [two] = importer.import_path(tmp_path / "two", "two:1")
    importer.import_path(tmp_path / "two", "two:alias")
    assert store.remove("two:alias") == ["untagged two:alias"]  # another name is left: untag only
    _fake_container("busy", two.id)
    with pytest.raises(ImageError, match="in use by container busy"):
        store.remove("two:1")
    state.remove(ib.sha(b"busy"))
    with pytest.raises(ImageError, match="no such image"):
        store.remove("two")  # NAME means NAME:latest
    done = store.remove("two:1")
    assert "untagged two:1" in done and f"deleted sha256:{two.id}" in done
    assert f"deleted layer sha256:{ib.sha(top)}" in done
    assert sorted(os.listdir(paths.layers_dir())) == [ib.sha(base)]  # `one` still uses it
    store.remove(one.short_id)
    assert os.listdir(paths.layers_dir()) == [] and store.list_images() == []
