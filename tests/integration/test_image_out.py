"""Images out of pish: ``commit``, ``export``, ``image save`` / ``image load``, checked by running the result
and by tools no one here wrote (podman load and run, skopeo inspect).

One busybox container per test writes ``/new`` and ``/d/f``, deletes ``/bin/vi`` (a file of the image)
and plants symlinks that lead out of its root (``/escape -> /``, ``/shadow -> /etc/shadow``), then
sleeps; the tests read it while it runs.
"""
from __future__ import annotations

import io
import json
import os
import pty
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import run_pish

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(at_teardown=True)]
needs_podman = pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman")
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo (apt-get install -y skopeo)")

Pish = Callable[..., "subprocess.CompletedProcess[str]"]
SCRIPT = ("echo hello > /new && rm /bin/vi && mkdir /d && echo x > /d/f && ln -s / /escape "
          "&& ln -s /etc/shadow /shadow && touch /ready && exec sleep 600")
PROBE = "cat /new; if [ -e /bin/vi ]; then echo vi-present; else echo vi-gone; fi; cat /d/f"


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 125, proc
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pish: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


@pytest.fixture
def box(pish: Pish, busybox_tar: Path, pish_env: object, leaks: object) -> Iterator[str]:
    """A running container ``out-box`` of image ``bb`` that made its changes (see the module's doc)."""
    pish("image", "import", "--name", "bb", str(busybox_tar), check=True)
    pish("run", "-d", "--name", "out-box", "bb", "sh", "-c", SCRIPT, check=True)
    try:
        for _ in range(500):
            if pish("exec", "out-box", "test", "-e", "/ready").returncode == 0:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the container did not get ready")
        yield "out-box"
    finally:
        pish("rm", "-f", "out-box")


def no_temporaries(lib: Path) -> None:
    layers = lib / "layers"
    assert not [e for e in os.listdir(layers) if e.startswith(".tmp-")], os.listdir(layers)


def tar_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_commit_then_run_sees_the_writes_and_the_deletions(pish: Pish, box: str, pish_env: object) -> None:
    out = pish("commit", "-m", "made by a test", box, "bb-committed:v1", check=True)
    image_id = out.stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert "paused container out-box" in out.stderr and "unpaused container out-box" in out.stderr
    run = pish("run", "--rm", "bb-committed:v1", "sh", "-c", PROBE, check=True)
    assert run.stdout.split() == ["hello", "vi-gone", "x"]
    base = pish("run", "--rm", "bb", "sh", "-c", "[ -e /bin/vi ] && echo vi-present", check=True)
    assert base.stdout.strip() == "vi-present"  # the image the container came from is untouched
    (info,) = json.loads(pish("image", "inspect", "bb-committed:v1", check=True).stdout)
    (base_info,) = json.loads(pish("image", "inspect", "bb", check=True).stdout)
    diff_ids = info["config"]["rootfs"]["diff_ids"]
    assert diff_ids[:-1] == base_info["config"]["rootfs"]["diff_ids"] and len(diff_ids) == 2  # layers shared
    assert info["config"]["history"][-1]["comment"] == "made by a test"
    assert pish("ps", "--json", check=True).stdout.count('"running"') == 1  # unpaused again
    no_temporaries(pish_env.lib)  # type: ignore[attr-defined]


def test_commit_changes_set_the_config(pish: Pish, box: str) -> None:
    pish("commit", "-c", 'CMD ["cat", "/new"]', "-c", "ENV GREETING=hi", "-c", "WORKDIR /d", box, "bb-cmd",
         check=True)
    assert pish("run", "--rm", "bb-cmd", check=True).stdout == "hello\n"
    env = pish("run", "--rm", "bb-cmd", "sh", "-c", "echo $GREETING $(pwd)", check=True)
    assert env.stdout.split() == ["hi", "/d"]


def test_commit_and_export_bad_input_is_one_line(pish: Pish, box: str, tmp_path: Path) -> None:
    assert "no such container" in one_error(pish("commit", "nope", "x:1"))
    assert "FROM" in one_error(pish("commit", "-c", "FROM busybox", box, "x:1"))
    assert "invalid image name" in one_error(pish("commit", box, "Bad Name"))
    assert "no such container" in one_error(pish("export", "nope", "-o", str(tmp_path / "x.tar")))
    assert not (tmp_path / "x.tar").exists()
    assert "no such image" in one_error(pish("image", "save", "nope", "-o", str(tmp_path / "y.tar")))
    assert not (tmp_path / "y.tar").exists()


def test_an_exited_container_exports_and_commits(pish: Pish, busybox_tar: Path, tmp_path: Path,
                                                  leaks: object) -> None:
    """Exited containers keep their files until rm (as docker's): both read them, unmounted."""
    pish("image", "import", "--name", "bb", str(busybox_tar), check=True)
    pish("run", "-d", "--name", "out-done", "bb", "sh", "-c", "echo bye > /left && rm /bin/vi", check=True)
    try:
        assert pish("wait", "out-done", check=True).stdout.strip() == "0"
        pish("export", "out-done", "-o", str(tmp_path / "x.tar"), check=True)
        members = tar_members((tmp_path / "x.tar").read_bytes())
        assert "left" in members and "bin/vi" not in members
        pish("commit", "out-done", "bb-exited", check=True)
        run = pish("run", "--rm", "bb-exited", "sh", "-c", "cat /left; [ -e /bin/vi ] || echo vi-gone", check=True)
        assert run.stdout.split() == ["bye", "vi-gone"]
    finally:
        pish("rm", "-f", "out-done")
    assert "no such container" in one_error(pish("export", "out-done", "-o", str(tmp_path / "y.tar")))


def test_export_is_the_merged_root_and_follows_no_symlink(pish: Pish, box: str, tmp_path: Path) -> None:
    target = tmp_path / "root.tar"
    pish("export", box, "-o", str(target), check=True)
    members = tar_members(target.read_bytes())
    assert members["new"].isreg() and members["d/f"].isreg() and members["bin/sh"].issym()
    assert "bin/vi" not in members and "bin/busybox" in members and "./" in members or "." in members
    assert not [n for n in members if n.rsplit("/", 1)[-1].startswith(".wh.")]
    assert members["escape"].issym() and members["escape"].linkname == "/"
    assert not [n for n in members if n.startswith(("escape/", "shadow/"))]
    assert members["shadow"].issym() and members["shadow"].size == 0
    with tarfile.open(target) as tar:
        new = tar.extractfile("new")
        assert new is not None and new.read() == b"hello\n"
    piped = subprocess.run(_pish_args("export", box), capture_output=True, timeout=60, check=True)  # a pipe
    assert set(tar_members(piped.stdout)) == set(members)


def _pish_args(*args: str) -> list[str]:
    from helpers import pish_command

    return [*pish_command(), *args]


def test_a_tar_is_not_written_to_a_terminal(pish_env: object, box: str) -> None:
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(_pish_args("export", box), check=False, stdout=terminal, stderr=subprocess.PIPE, text=True,
                              timeout=60, env={**os.environ, **pish_env.env})  # type: ignore[attr-defined]
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode == 125 and "terminal" in proc.stderr and "Traceback" not in proc.stderr


def test_save_load_round_trip_in_pish(pish: Pish, box: str, tmp_path: Path, pish_env: object) -> None:
    pish("commit", box, "bb-saved:v1", check=True)
    archive, again = tmp_path / "saved.tar", tmp_path / "again.tar"
    pish("image", "save", "bb-saved:v1", "-o", str(archive), check=True)
    names = set(tar_members(archive.read_bytes()))
    assert {"manifest.json", "repositories"} <= names
    with tarfile.open(archive) as tar:
        (entry,) = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert entry["RepoTags"] == ["bb-saved:v1"] and len(entry["Layers"]) == 2
    env = {"PISH_LIB": str(tmp_path / "lib2"), "PISH_ROOT": str(tmp_path / "root2")}
    for d in env.values():
        Path(d).mkdir()
    loaded = run_pish("image", "load", "-i", str(archive), env=env, check=True)
    assert "Loaded image: bb-saved:v1" in loaded.stdout
    run = run_pish("run", "--rm", "bb-saved:v1", "sh", "-c", PROBE, env=env, check=True)
    assert run.stdout.split() == ["hello", "vi-gone", "x"]
    run_pish("image", "save", "bb-saved:v1", "-o", str(again), env=env, check=True)
    assert again.read_bytes() == archive.read_bytes()  # what pish saved, loaded and saved: the same bytes
    oci = tmp_path / "saved-oci.tar"
    pish("image", "save", "--format", "oci-archive", "bb-saved:v1", "-o", str(oci), check=True)
    assert {"oci-layout", "index.json"} <= set(tar_members(oci.read_bytes()))
    run_pish("image", "rm", "bb-saved:v1", env=env, check=True)
    run_pish("image", "load", "-i", str(oci), env=env, check=True)
    run = run_pish("run", "--rm", "bb-saved:v1", "sh", "-c", PROBE, env=env, check=True)
    assert run.stdout.split() == ["hello", "vi-gone", "x"]
    no_temporaries(pish_env.lib)  # type: ignore[attr-defined]


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """``podman(*args)`` with its storage in this test's directory and its runroot in a short one
    (podman wants fewer than 50 characters); everything it made is reset afterwards."""
    work = tmp_path / "podman"
    work.mkdir()
    with tempfile.TemporaryDirectory(prefix="pdm-") as run:
        # runc by name: with crun installed too podman picks crun, which refuses a hybrid cgroup host
        base = ["podman", "--root", str(work / "storage"), "--runroot", run, "--runtime", "runc"]

        def call(*args: str) -> subprocess.CompletedProcess[str]:
            proc = subprocess.run([*base, *args], cwd=work, capture_output=True, text=True, timeout=300, check=False)
            assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
            return proc

        try:
            yield call
        finally:
            subprocess.run([*base, "system", "reset", "-f"], cwd=work, capture_output=True, timeout=120, check=False)


@needs_podman
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_loads_and_runs_what_pish_saved(pish: Pish, box: str, tmp_path: Path, fmt: str,
                                               podman: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    pish("commit", box, "bb-podman:v1", check=True)
    archive = tmp_path / "x.tar"
    pish("image", "save", "--format", fmt, "bb-podman:v1", "-o", str(archive), check=True)
    assert "bb-podman:v1" in podman("load", "-i", str(archive)).stdout
    run = podman("run", "--rm", "--net=none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                 "bb-podman:v1", "sh", "-c", PROBE)
    assert run.stdout.split() == ["hello", "vi-gone", "x"]


@needs_skopeo
def test_skopeo_inspects_both_archive_formats(pish: Pish, box: str, tmp_path: Path) -> None:
    pish("commit", box, "bb-skopeo:v1", check=True)
    for fmt in ("docker-archive", "oci-archive"):
        archive = tmp_path / f"{fmt}.tar"
        pish("image", "save", "--format", fmt, "bb-skopeo:v1", "-o", str(archive), check=True)
        proc = subprocess.run(["skopeo", "inspect", f"{fmt}:{archive}"], capture_output=True, text=True,
                              timeout=120, check=True)
        info = json.loads(proc.stdout)
        assert len(info["Layers"]) == 2 and info["Os"] == "linux", info


def test_commit_of_a_copy_storage_container(pish: Pish, busybox_tar: Path, leaks: object) -> None:
    """``--storage copy`` keeps no layer of changes: the whole root becomes the image's one layer."""
    pish("image", "import", "--name", "bb", str(busybox_tar), check=True)
    try:
        pish("run", "-d", "--name", "out-copy", "--storage", "copy", "bb", "sh", "-c",
             "echo copy > /c && rm /bin/vi", check=True)
        assert pish("wait", "out-copy", check=True).stdout.strip() == "0"
        pish("commit", "out-copy", "bb-copy", check=True)
        (info,) = json.loads(pish("image", "inspect", "bb-copy", check=True).stdout)
        assert len(info["layers"]) == 1
        run = pish("run", "--rm", "bb-copy", "sh", "-c", "cat /c; [ -e /bin/vi ] || echo vi-gone", check=True)
        assert run.stdout.split() == ["copy", "vi-gone"]
    finally:
        pish("rm", "-f", "out-copy")


def test_commit_and_export_of_a_userns_container_record_the_containers_ids(busybox_tar: Path) -> None:
    """Under ``--userns`` the upper layer holds host ids: a file chowned to 5:6 inside is 5:6 in the
    image and the export, not 300005:300006. (State under a 0711 directory the mapped root can reach.)"""
    top = Path(tempfile.mkdtemp(prefix="image-out-userns-"))
    top.chmod(0o711)
    env = {"PISH_ROOT": str(top / "run"), "PISH_LIB": str(top / "lib")}
    for d in env.values():
        Path(d).mkdir(mode=0o711)
    try:
        run_pish("image", "import", "--name", "bb", str(busybox_tar), env=env, check=True)
        run_pish("run", "-d", "--name", "out-userns", "--userns", "0:300000:65536", "bb", "sh", "-c",
                 "echo u > /u && chown 5:6 /u", env=env, check=True)
        assert run_pish("wait", "out-userns", env=env, check=True).stdout.strip() == "0"
        run_pish("commit", "out-userns", "bb-userns", env=env, check=True)
        run = run_pish("run", "--rm", "bb-userns", "stat", "-c", "%u:%g", "/u", env=env, check=True)
        assert run.stdout.strip() == "5:6"
        run_pish("export", "out-userns", "-o", str(top / "u.tar"), env=env, check=True)
        u = tar_members((top / "u.tar").read_bytes())["u"]
        assert (u.uid, u.gid) == (5, 6)
    finally:
        run_pish("rm", "-f", "out-userns", env=env)
        assert not list((top / "lib" / "containers").glob("*"))
        shutil.rmtree(top)
