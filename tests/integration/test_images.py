"""Real images, made by tools no one here wrote, imported and run.

- umoci builds a three-layer OCI layout on a busybox rootfs: layer 1 the files; layer 2 (``umoci repack``)
  deletes a file and a directory of layer 1 (``.wh.`` whiteouts); layer 3 (``umoci insert --opaque``)
  replaces a directory (an opaque whiteout). umoci's ``repack`` never writes an opaque whiteout, it lists
  each deleted entry, which is why the opaque one is a layer of its own.
- skopeo turns that layout into a ``docker save`` archive.
- mmdebstrap builds a Debian minbase rootfs tar (slow; cached under /var/cache/pish-tests).

Each is imported, then run, and the files the container sees are the ones the layers leave.
"""
from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pish_core import paths

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]
needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None, reason="needs umoci (apt-get install -y umoci)")
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo (apt-get install -y skopeo)")

Pish = Callable[..., "subprocess.CompletedProcess[str]"]

PASSWD_ADD = "app:x:1000:1000:App:/home/app:/bin/sh\n"
GROUP_ADD = "app:x:1000:\nextra:x:2000:app\n"
# What the three layers leave, and what they take away.
PROBES = ("/etc/one", "/etc/gone", "/data/keep", "/data/old", "/data/old/a", "/data/new", "/opt/app/old",
          "/opt/app/sub/file")
VISIBLE = ["/etc/one", "/data/keep", "/data/new", "/opt/app/sub/file"]
SHOW = "for f in " + " ".join(PROBES) + "; do [ -e $f ] && echo $f; done; true"


def sh(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def visible(out: str) -> list[str]:
    return [line for line in out.split() if line.startswith("/")]


@pytest.fixture(scope="session")
def umoci_layout(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout with tags ``v1`` (runs as root) and ``asapp`` (User app), three layers each."""
    if shutil.which("umoci") is None:
        pytest.skip("needs umoci (apt-get install -y umoci)")
    work = tmp_path_factory.mktemp("umoci")
    oci = f"{work}/oci"
    sh("umoci", "init", "--layout", oci)
    sh("umoci", "new", "--image", f"{oci}:v1")
    bundle = work / "bundle"
    sh("umoci", "unpack", "--image", f"{oci}:v1", str(bundle))
    rootfs = bundle / "rootfs"
    sh("tar", "-xf", str(busybox_tar), "-C", str(rootfs))
    for rel, text in {"etc/one": "one\n", "etc/gone": "gone\n", "data/keep": "keep\n", "data/old/a": "a\n",
                      "opt/app/old": "old\n", "home/app/.profile": "\n"}.items():
        (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / rel).write_text(text)
    os.chown(rootfs / "home" / "app", 1000, 1000)
    with open(rootfs / "etc" / "passwd", "a") as f:
        f.write(PASSWD_ADD)
    with open(rootfs / "etc" / "group", "a") as f:
        f.write(GROUP_ADD)
    sh("umoci", "repack", "--image", f"{oci}:v1", str(bundle))  # layer 1
    shutil.rmtree(bundle)
    sh("umoci", "unpack", "--image", f"{oci}:v1", str(bundle))
    (rootfs / "etc" / "gone").unlink()
    shutil.rmtree(rootfs / "data" / "old")
    (rootfs / "data" / "new").write_text("new\n")
    sh("umoci", "repack", "--image", f"{oci}:v1", str(bundle))  # layer 2: .wh.gone, .wh.old
    shutil.rmtree(bundle)
    (work / "optsrc" / "sub").mkdir(parents=True)
    (work / "optsrc" / "sub" / "file").write_text("fresh\n")
    sh("umoci", "insert", "--image", f"{oci}:v1", "--opaque", str(work / "optsrc"), "/opt/app")  # layer 3
    sh("umoci", "config", "--image", f"{oci}:v1", "--config.cmd", "/bin/sh", "--config.cmd", "-c",
       "--config.cmd", "echo cmd-ran in $(pwd) with $GREETING as $(id -u)",
       "--config.env", "GREETING=hello", "--config.env", "PATH=/usr/bin:/bin", "--config.workingdir", "/data")
    sh("umoci", "config", "--image", f"{oci}:v1", "--tag", "asapp", "--config.user", "app",
       "--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c",
       "--config.cmd", "echo $(id -u) $(id -g) $(id -G) $HOME")
    return Path(oci)


@pytest.fixture(scope="session")
def docker_archive(umoci_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo (apt-get install -y skopeo)")
    out = tmp_path_factory.mktemp("skopeo") / "saved.tar"
    sh("skopeo", "--insecure-policy", "copy", f"oci:{umoci_layout}:v1", f"docker-archive:{out}:pishtest/saved:v1")
    return out


def layer_members(layout: Path) -> list[list[str]]:
    """The member names of each layer of tag v1, bottom first."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "v1")
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_text())
    out = []
    for layer in manifest["layers"]:
        with tarfile.open(layout / "blobs" / "sha256" / layer["digest"][7:]) as t:
            names = []
            try:
                names = [m.name for m in t]
            except tarfile.ReadError:  # umoci's insert leaves off the end-of-archive blocks
                names = [m.name for m in t.members]
            out.append(names)
    return out


def store_state() -> dict[str, tuple[int, int]]:
    """Every path in the store (layers and images) with its inode and mtime."""
    out = {}
    for top in (paths.layers_dir(), paths.images_dir()):
        for p in [top, *top.rglob("*")]:
            st = p.lstat()
            out[str(p)] = (st.st_ino, st.st_mtime_ns)
    return out


# -- importing and running ---------------------------------------------------------------------------


@needs_umoci
def test_the_umoci_image_is_what_the_tests_say(umoci_layout: Path) -> None:
    layers = layer_members(umoci_layout)
    assert len(layers) == 3
    assert "etc/.wh.gone" in layers[1] and "data/.wh.old" in layers[1]
    assert "opt/app/.wh..wh..opq" in layers[2]


@needs_umoci
def test_oci_layout_imports_and_runs(pish: Pish, umoci_layout: Path, tmp_path: Path, no_leaks: object) -> None:
    out = pish("image", "import", str(umoci_layout), "--name", "pishtest", check=True)
    assert "pishtest:v1" in out.stdout and "pishtest:asapp" in out.stdout
    assert out.stderr.count("unpacking layer") == 3  # three layers, shared by both tags
    listed = pish("image", "ls", check=True).stdout
    assert "pishtest" in listed and "v1" in listed and "asapp" in listed
    run = pish("run", "pishtest:v1", "sh", "-c", SHOW, check=True)
    assert visible(run.stdout) == VISIBLE
    # The same layout as a tar: the same image, nothing unpacked again.
    with tarfile.open(tmp_path / "oci.tar", "w") as t:
        t.add(umoci_layout, arcname=".")
    again = pish("image", "import", str(tmp_path / "oci.tar"), "--name", "pishtest-tar", check=True)
    assert "unpacking" not in again.stderr
    assert visible(pish("run", "pishtest-tar:v1", "sh", "-c", SHOW, check=True).stdout) == VISIBLE
    inspect = json.loads(pish("image", "inspect", "pishtest:v1", check=True).stdout)[0]
    assert len(inspect["layers"]) == 3 and all(la["blob"].startswith("sha256:") for la in inspect["layers"])


@needs_umoci
@needs_skopeo
def test_docker_archive_imports_runs_and_shares_layers(pish: Pish, umoci_layout: Path, docker_archive: Path,
                                                       no_leaks: object) -> None:
    alone = pish("image", "import", str(docker_archive), check=True)
    assert "pishtest/saved:v1" in alone.stdout and alone.stderr.count("unpacking layer") == 3
    assert visible(pish("run", "pishtest/saved:v1", "sh", "-c", SHOW, check=True).stdout) == VISIBLE
    # skopeo stored the layers uncompressed, umoci gzipped: the same diff_ids, so nothing is unpacked.
    before = store_state()
    both = pish("image", "import", str(umoci_layout), "--name", "pishtest", check=True)
    assert "unpacking" not in both.stderr
    assert {k for k in store_state() if "/layers/" in k} == {k for k in before if "/layers/" in k}
    ids = {line.split()[0] for line in both.stdout.splitlines()} | {alone.stdout.split()[0]}
    assert len(ids) == 2  # v1 (the same image as the docker archive's) and asapp


@needs_umoci
def test_second_run_unpacks_nothing(pish: Pish, umoci_layout: Path, no_leaks: object) -> None:
    pish("image", "import", str(umoci_layout), "--name", "pishtest", check=True)
    first = pish("run", "pishtest:v1", "true", check=True)
    before = store_state()
    second = pish("run", "pishtest:v1", "true", check=True)
    assert "unpacking" not in first.stderr and "unpacking" not in second.stderr
    assert store_state() == before
    # A layout given to `pish run` as a path must hold one image: this one holds two (v1, asapp).
    ambiguous = pish("run", str(umoci_layout), "true", check=125)
    assert "holds 2 images" in ambiguous.stderr


def test_run_path_caches_by_content(pish: Pish, busybox_tar: Path, tmp_path: Path, no_leaks: object) -> None:
    first = pish("run", str(busybox_tar), "true", check=True)
    assert "unpacked layer" in first.stderr  # a rootfs tar's diff_id is known once it is read
    before = store_state()
    second = pish("run", str(busybox_tar), "true", check=True)
    shutil.copy(busybox_tar, tmp_path / "copy.tar")
    elsewhere = pish("run", str(tmp_path / "copy.tar"), "true", check=True)
    assert "unpacking" not in second.stderr + elsewhere.stderr
    assert store_state() == before
    assert len(json.loads(pish("image", "ls", "--json", check=True).stdout)) == 1


# -- the image config --------------------------------------------------------------------------------


@needs_umoci
def test_image_config_is_honoured(pish: Pish, umoci_layout: Path, no_leaks: object) -> None:
    pish("image", "import", str(umoci_layout), "--name", "pishtest", check=True)
    assert pish("run", "pishtest:v1", check=True).stdout.strip() == "cmd-ran in /data with hello as 0"
    assert pish("run", "-e", "GREETING=bye", "-w", "/tmp", "pishtest:v1", check=True).stdout.strip() \
        == "cmd-ran in /tmp with bye as 0"
    assert pish("run", "pishtest:v1", "pwd", check=True).stdout.strip() == "/data"  # COMMAND replaces Cmd
    env = pish("run", "pishtest:v1", "env", check=True).stdout.split()
    assert "GREETING=hello" in env and "PATH=/usr/bin:/bin" in env and "HOME=/root" in env
    assert pish("run", "--entrypoint", "/bin/echo", "pishtest:v1", "a", "b", check=True).stdout == "a b\n"
    # User from the config, and -u over it, resolved in the image's /etc/passwd and /etc/group.
    assert pish("run", "pishtest:asapp", check=True).stdout.split() == ["1000", "1000", "1000", "2000", "/home/app"]
    assert pish("run", "-u", "app:extra", "pishtest:asapp", check=True).stdout.split() \
        == ["1000", "2000", "2000", "/home/app"]
    assert pish("run", "-u", "4242:4343", "pishtest:asapp", check=True).stdout.split() \
        == ["4242", "4343", "4343", "/"]
    assert pish("run", "-u", "0", "pishtest:asapp", check=True).stdout.split()[:2] == ["0", "0"]
    nobody = pish("run", "-u", "ghost", "pishtest:asapp", check=125)
    assert "unable to find user ghost" in nobody.stderr
    # A non-root user really is one: it cannot write where root owns.
    denied = pish("run", "-u", "app", "pishtest:v1", "sh", "-c", "touch /etc/x", check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stdout + denied.stderr


# -- mounts and storage ------------------------------------------------------------------------------


@needs_umoci
def test_volumes_and_read_only_as_docker(pish: Pish, umoci_layout: Path, tmp_path: Path, no_leaks: object) -> None:
    pish("image", "import", str(umoci_layout), "--name", "pishtest", check=True)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "from-host").write_text("host\n")
    # -v hides what the image has at that path and writes through to the host.
    out = pish("run", "-v", f"{vol}:/data", "pishtest:v1", "sh", "-c", "ls /data; echo hi > /data/made", check=True)
    assert out.stdout.split() == ["from-host"] and (vol / "made").read_text() == "hi\n"
    ro = pish("run", "-v", f"{vol}:/data:ro", "pishtest:v1", "sh", "-c", "touch /data/x", check=False)
    assert ro.returncode != 0 and "Read-only file system" in ro.stdout + ro.stderr
    # --read-only: the root refuses writes; /dev, /proc, /dev/shm, tmpfs and rw volumes work as usual.
    script = ("touch /x 2>&1; echo ok > /dev/null && echo devnull; touch /dev/shm/s && echo shm; "
              "touch /tmp/t && echo tmpfs; touch /data/rw && echo volume; cat /proc/1/comm; true")
    out = pish("run", "--read-only", "--tmpfs", "/tmp", "-v", f"{vol}:/data", "pishtest:v1", "sh", "-c", script,
               check=True)
    assert "Read-only file system" in out.stdout
    assert [w for w in ("devnull", "shm", "tmpfs", "volume", "sh") if w in out.stdout.split()] \
        == ["devnull", "shm", "tmpfs", "volume", "sh"]
    assert (vol / "rw").exists()
    writable = pish("run", "pishtest:v1", "sh", "-c", "touch /x && echo wrote", check=True)
    assert writable.stdout.strip() == "wrote"


@needs_umoci
def test_storage_copy_runs_the_same_image(pish: Pish, umoci_layout: Path, busybox_tar: Path, no_leaks: object) -> None:
    pish("image", "import", str(umoci_layout), "--name", "pishtest", check=True)
    out = pish("run", "--storage", "copy", "pishtest:v1", "sh", "-c", SHOW + "; touch /written && echo w",
               check=True)
    assert visible(out.stdout) == VISIBLE and "w" in out.stdout.split()
    assert "copying image" in out.stderr
    # (/etc/hostname is the container's own now, as docker gives it: the image's page shows the image)
    page = pish("run", "--storage", "copy", str(busybox_tar), "cat", "/www/index.html", check=True).stdout
    assert page == "<h1>hello from pish</h1>\n"
    listed = pish("drivers", "list", check=True).stdout
    assert any(line.startswith("storage") and " copy " in line and "available" in line for line in listed.splitlines())


@needs_umoci
def test_image_rm_is_refused_while_a_container_uses_it(pish: Pish, umoci_layout: Path, no_leaks: object) -> None:
    pish("image", "import", str(umoci_layout), "--name", "pishtest", check=True)
    pish("run", "-d", "--name", "img-user", "pishtest:v1", "sleep", "100", check=True)
    try:
        refused = pish("image", "rm", "pishtest:v1", check=125)
        assert "in use by container img-user" in refused.stderr
    finally:
        pish("rm", "-f", "img-user", check=True)
    removed = pish("image", "rm", "pishtest:v1", check=True).stdout
    assert "deleted sha256:" in removed and "deleted layer" not in removed  # asapp still uses every layer
    removed = pish("image", "rm", "pishtest:asapp", check=True).stdout
    assert removed.count("deleted layer") == 3
    assert os.listdir(paths.layers_dir()) == []


# -- hostile archives and the progress bar, through the CLI ------------------------------------------


def test_hostile_archives_are_refused_by_the_cli(pish: Pish, tmp_path: Path, no_leaks: object) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    cases = {
        "traversal": [("../../../../../../../../../pish-escape", tarfile.REGTYPE, "")],
        "symlink-then-write": [("evil", tarfile.SYMTYPE, str(sentinel)), ("evil/pwned", tarfile.REGTYPE, "")],
        "hardlink-out": [("passwd", tarfile.LNKTYPE, "/etc/passwd")],
        "device": [("null", tarfile.CHRTYPE, "")],
    }
    for case, members in cases.items():
        archive = tmp_path / f"{case}.tar"
        with tarfile.open(archive, "w") as t:
            for name, kind, link in members:
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, link
                t.addfile(info)
        for cmd in (("image", "import", str(archive)), ("run", str(archive), "true")):
            out = pish(*cmd, check=125)
            assert f"refusing tar member {members[-1][0]!r}" in out.stderr, out.stderr
    assert os.listdir(sentinel) == [] and not Path("/pish-escape").exists()
    assert os.listdir(paths.layers_dir()) == [] and os.listdir(paths.images_dir()) == []


def test_progress_bar_on_a_terminal_only(pish_env: object, tmp_path: Path) -> None:
    from helpers import pish_command

    data = os.urandom(20 << 20)
    with tarfile.open(tmp_path / "big.tar", "w") as t:
        info = tarfile.TarInfo("big.bin")
        info.size = len(data)
        import io

        t.addfile(info, io.BytesIO(data))
    piped = subprocess.run([*pish_command(), "image", "import", "-q", str(tmp_path / "big.tar")], capture_output=True,
                           text=True, check=True)
    assert "\r" not in piped.stderr and "%" not in piped.stderr
    subprocess.run([*pish_command(), "image", "rm", piped.stdout.strip()], check=True, capture_output=True)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*pish_command(), "image", "import", str(tmp_path / "big.tar")], stdout=subprocess.PIPE,
                            stderr=terminal, stdin=subprocess.DEVNULL)
    os.close(terminal)
    seen = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == 0
    proc.stdout.close()  # type: ignore[union-attr]
    assert b"\r" in seen and b"100%" in seen, seen[-400:]


# -- a real distribution -----------------------------------------------------------------------------

DEBIAN_CACHE = Path(os.environ.get("PISH_TEST_CACHE", "/var/cache/pish-tests"))


@pytest.fixture(scope="session")
def debian_tar() -> Path:
    """A Debian bookworm minbase rootfs tar from mmdebstrap, built once and kept in DEBIAN_CACHE."""
    out = DEBIAN_CACHE / "debian-bookworm-minbase.tar"
    if out.exists():
        return out
    if shutil.which("mmdebstrap") is None:
        pytest.skip("needs mmdebstrap (apt-get install -y mmdebstrap) to build the Debian image")
    DEBIAN_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    proc = subprocess.run(["mmdebstrap", "--quiet", "--format=tar", "--variant=minbase", "--skip=output/dev",
                           "bookworm", str(tmp)], capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        pytest.skip(f"cannot build the Debian image (is the Debian archive reachable?): {proc.stderr.strip()[-300:]}")
    tmp.rename(out)
    return out


@pytest.mark.slow
def test_debian_minbase_imports_and_runs_env(pish: Pish, debian_tar: Path, tmp_path: Path, no_leaks: object) -> None:
    pish("image", "import", str(debian_tar), "--name", "debian:minbase", check=True, timeout=300)
    env = pish("run", "--name", "deb", "debian:minbase", "/usr/bin/env", check=True).stdout.split("\n")
    assert "HOSTNAME=deb" in env and "HOME=/root" in env and any(e.startswith("PATH=") for e in env)
    assert pish("run", "debian:minbase", "cat", "/etc/debian_version", check=True).stdout.startswith("12.")
    if shutil.which("umoci") is None:
        return
    # The same rootfs as an OCI image with a config (umoci): `pish run IMAGE` runs its Cmd, /usr/bin/env,
    # as its User (nobody, from Debian's own /etc/passwd), in its WorkingDir, with its Env.
    oci = f"{tmp_path}/oci"
    sh("umoci", "init", "--layout", oci)
    sh("umoci", "new", "--image", f"{oci}:cfg")
    sh("umoci", "raw", "add-layer", "--image", f"{oci}:cfg", str(debian_tar))
    sh("umoci", "config", "--image", f"{oci}:cfg", "--config.cmd", "/usr/bin/env", "--config.user", "nobody",
       "--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "--config.env", "FROM_CONFIG=yes",
       "--config.workingdir", "/tmp")
    out = pish("image", "import", oci, "--name", "debian:cfg", check=True, timeout=300)
    assert "unpacking" not in out.stderr  # the very same layer as the tar imported above
    env = pish("run", "debian:cfg", check=True).stdout.split("\n")
    assert "FROM_CONFIG=yes" in env and "HOME=/nonexistent" in env
    assert pish("run", "debian:cfg", "sh", "-c", "id -un; pwd", check=True).stdout.split() == ["nobody", "/tmp"]
    assert pish("run", "--storage", "copy", "debian:cfg", "cat", "/etc/debian_version",
                check=True).stdout.startswith("12.")
