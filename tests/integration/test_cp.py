"""``pish cp`` (issue 14): files and directories between the host and a container, running or exited,
and tars on stdin/stdout, by docker's rules; never through a symlink out of the container, even one the
container swaps in while the copy runs.

Real containers from the busybox image under a private ``PISH_ROOT``/``PISH_LIB``; the ``leaks`` check
ends every test. Bad input is one line, exit 125, nothing changed.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import pish_command
from helpers.containers import refused, run_detached, tree

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(at_teardown=True)]

HOSTILE = ("mkdir -p /d/sub && echo one > /d/a && echo two > /d/sub/b && chmod 750 /d/sub && ln -s a /d/link; "
           "ln -s / /etc/evil; echo container-shadow > /etc/shadow; ln -s /etc/shadow /tmp/x; "
           "ln -s {host} /tmp/hostlink; echo ready > /ready; sleep 100")




def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def hostile(pish: Any, busybox_tar: Path, tmp_path: Path, leaks: Any) -> Iterator[tuple[str, Path]]:
    """A running container full of links that point out: (its name, a host directory it names)."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "sentinel").write_text("host-data\n")
    run_detached(pish, "--net", "none", "--name", "cp-hostile", str(busybox_tar), "sh", "-c",
                 HOSTILE.format(host=host))
    deadline = time.monotonic() + 30
    while pish("exec", "cp-hostile", "cat", "/ready").stdout != "ready\n":
        assert time.monotonic() < deadline, "the container did not get ready"
        time.sleep(0.05)
    try:
        yield "cp-hostile", host
    finally:
        pish("rm", "-f", "cp-hostile")


def test_links_in_the_container_never_lead_out(pish, hostile, tmp_path):
    name, host = hostile
    shadow = digest("/etc/shadow")
    out = tmp_path / "out"
    out.mkdir()

    # a link is copied as a link, never followed on the host
    pish("cp", f"{name}:/etc/evil", str(out / "evil"), check=True)
    assert os.readlink(out / "evil") == "/"
    # a path through a link resolves inside the container: its /etc/shadow, not the host's
    pish("cp", f"{name}:/etc/evil/etc/shadow", str(out / "shadow"), check=True)
    assert (out / "shadow").read_text() == "container-shadow\n"
    pish("cp", f"{name}:/tmp/x", str(out / "x"), check=True)
    assert os.readlink(out / "x") == "/etc/shadow"  # the link itself, as docker copies it
    refused(pish, "cp", f"{name}:/tmp/hostlink/sentinel", str(out / "s"), match="no such file")
    # a directory with a link to / in it: the link comes as a link, nothing of the host's / with it
    pish("cp", f"{name}:/etc", str(out / "etc"), check=True)
    assert os.readlink(out / "etc" / "evil") == "/" and (out / "etc" / "shadow").read_text() == "container-shadow\n"

    # into the container: through its links, inside it
    src = tmp_path / "payload"
    src.write_text("from-the-host\n")
    pish("cp", str(src), f"{name}:/etc/evil/etc/", check=True)
    assert pish("exec", name, "cat", "/etc/payload", check=True).stdout == "from-the-host\n"
    assert not Path("/etc/payload").exists()
    pish("cp", str(src), f"{name}:/tmp/x", check=True)  # onto a link to /etc/shadow: the container's
    assert pish("exec", name, "cat", "/etc/shadow", check=True).stdout == "from-the-host\n"
    assert digest("/etc/shadow") == shadow
    before = tree(host)
    refused(pish, "cp", str(src), f"{name}:/tmp/hostlink/sentinel", match="no such file")
    assert tree(host) == before and (host / "sentinel").read_text() == "host-data\n"
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        info = tarfile.TarInfo("etc/evil/etc/from-tar")
        info.size = 4
        t.addfile(info, io.BytesIO(b"tar\n"))
    proc = subprocess.run([*pish_command(), "cp", "-", f"{name}:/"], input=tar.getvalue(), capture_output=True,
                          env={**os.environ}, check=False)
    assert proc.returncode == 0, proc.stderr
    # a tar's members are written as they are named: the link in the way was replaced by a directory
    # of the container's own, not followed to the host's /etc
    assert not Path("/etc/from-tar").exists()
    assert pish("exec", name, "cat", "/etc/evil/etc/from-tar", check=True).stdout == "tar\n"
    assert pish("exec", name, "test", "-L", "/etc/evil").returncode == 1


def test_a_link_swapped_in_during_copies_never_leads_out(pish, busybox_tar, tmp_path, leaks):
    """The container swaps /sw between a directory and a link to / as fast as it can while files are
    copied in and out through it: each copy lands inside the container or fails, never on the host."""
    stem = f"pish-cp-race-{os.getpid()}"
    run_detached(pish, "--net", "none", "--name", "cp-race", str(busybox_tar), "sh", "-c",
                 f"echo inside > /inside; while :; do rm -rf /sw; mkdir /sw; echo c > /sw/{stem}; "
                 "rm -rf /sw; ln -s / /sw; done")
    src = tmp_path / "payload"
    src.write_text("x\n")
    through_link = 0
    try:
        for i in range(30):
            pish("cp", str(src), f"cp-race:/sw/{stem}-{i}")
            out = pish("cp", "cp-race:/sw/etc/hostname", str(tmp_path / f"got-{i}"))
            if out.returncode == 0:  # /sw was the link: the container's /etc/hostname, or nothing
                assert (tmp_path / f"got-{i}").read_text() == "cp-race\n"
                through_link += 1
            assert "Traceback" not in out.stderr
        assert not list(Path("/").glob(f"{stem}*")), "a copy went through the link to the host's /"
        inside = pish("exec", "cp-race", "sh", "-c", f"ls / /sw 2>/dev/null | grep -c {stem}-").stdout.strip()
        print(f"{through_link} of 30 copies out went through the link; copies in found inside: {inside}")
    finally:
        for leaked in Path("/").glob(f"{stem}*"):
            leaked.unlink()
        pish("rm", "-f", "cp-race")


def test_files_and_directories_by_dockers_rules(pish, hostile, tmp_path):
    name, _ = hostile
    out = tmp_path / "out"
    out.mkdir()
    # a file onto a missing path creates it; into a directory it goes inside
    pish("cp", f"{name}:/d/a", str(out / "a-copy"), check=True)
    pish("cp", f"{name}:/d/a", str(out), check=True)
    assert (out / "a-copy").read_text() == (out / "a").read_text() == "one\n"
    # a directory onto a missing path becomes it; into an existing one it goes inside; SRC/. its contents
    pish("cp", f"{name}:/d", str(out / "d1"), check=True)
    pish("cp", f"{name}:/d", str(out / "d1"), check=True)
    (out / "d3").mkdir()
    pish("cp", f"{name}:/d/.", str(out / "d3"), check=True)
    for top in (out / "d1", out / "d1" / "d", out / "d3"):
        assert (top / "a").read_text() == "one\n" and (top / "sub" / "b").read_text() == "two\n", top
        assert os.readlink(top / "link") == "a"
        assert (top / "sub").stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in (out / "d3").iterdir()) == ["a", "link", "sub"]

    # host -> container, the same rules
    pish("cp", str(out / "d1"), f"{name}:/new", check=True)
    pish("cp", str(out / "a"), f"{name}:/new/sub/", check=True)
    assert pish("exec", name, "sh", "-c", "cat /new/a /new/sub/a /new/d/sub/b; readlink /new/link",
                check=True).stdout == "one\none\ntwo\na\n"

    # - : a tar of SRC on stdout, a tar on stdin extracted into a directory
    raw = subprocess.run([*pish_command(), "cp", f"{name}:/d", "-"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        assert sorted(t.getnames()) == ["d", "d/a", "d/link", "d/sub", "d/sub/b"]
        assert t.getmember("d/link").issym() and t.getmember("d/sub").mode & 0o777 == 0o750
    proc = subprocess.run([*pish_command(), "cp", "-", f"{name}:/tmp"], input=raw, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert pish("exec", name, "cat", "/tmp/d/sub/b", check=True).stdout == "two\n"


def test_an_exited_container_keeps_its_files_for_cp_and_start(pish, busybox_tar, tmp_path, leaks):
    run_detached(pish, "--net", "none", "--name", "cp-exited", str(busybox_tar), "sh", "-c",
                 "cat /in.txt 2>/dev/null || echo first > /out.txt")
    try:
        assert pish("wait", "cp-exited", check=True).stdout == "0\n"
        pish("cp", "cp-exited:/out.txt", str(tmp_path / "out.txt"), check=True)
        assert (tmp_path / "out.txt").read_text() == "first\n"
        (tmp_path / "in.txt").write_text("copied-in\n")
        pish("cp", str(tmp_path / "in.txt"), "cp-exited:/", check=True)
        pish("start", "cp-exited", check=True)
        assert pish("wait", "cp-exited", check=True).stdout == "0\n"
        assert pish("logs", "cp-exited", check=True).stdout == "copied-in\n"
    finally:
        pish("rm", "-f", "cp-exited")


def test_bad_cp_requests(pish, hostile, tmp_path):
    name, _ = hostile
    before = tree(tmp_path)
    (tmp_path / "file").write_text("f\n")
    refused(pish, "cp", "cp-nope:/etc/hostname", str(tmp_path / "x"), match="no such container: cp-nope")
    refused(pish, "cp", str(tmp_path / "file"), str(tmp_path / "y"), match="exactly one of SRC and DEST")
    refused(pish, "cp", f"{name}:/d", f"{name}:/e", match="exactly one of SRC and DEST")
    refused(pish, "cp", f"{name}:/nope", str(tmp_path / "x"), match="/nope: no such file or directory")
    refused(pish, "cp", f"{name}:/d", str(tmp_path / "file"), match="cannot copy a directory onto a file")
    refused(pish, "cp", str(tmp_path / "file"), f"{name}:/no/such/dir/x", match="no such file or directory")
    refused(pish, "cp", str(tmp_path / "file"), f"{name}:/nodir/", match="no such directory")
    refused(pish, "cp", "-", f"{name}:/d/a", match="extracted into a directory", input="")
    refused(pish, "cp", "-", f"{name}:/tmp", match="the tar on stdin cannot be read", input="not a tar")
    refused(pish, "cp", str(tmp_path / "file"), ":/x", match="invalid container path")
    assert tree(tmp_path) == sorted([*before, str(tmp_path / "file")])
    assert pish("exec", name, "ls", "/nodir", "/x").returncode != 0


def test_the_kernels_filesystems_come_out_empty(pish, busybox_tar, tmp_path, leaks):
    """`pish cp CTR:/ DIR` of a running container went into its /proc (and /sys): it copied the kernel's
    files and failed half-way on /proc/1/attr (EINVAL). As docker's cp: empty directories."""
    run_detached(pish, "--net", "none", "--name", "cp-kernel", str(busybox_tar), "sh", "-c",
                 "mkdir /data && echo mine > /data/f; sleep 100")
    try:
        deadline = time.monotonic() + 30
        while pish("exec", "cp-kernel", "cat", "/data/f").stdout != "mine\n":
            assert time.monotonic() < deadline, "the container did not get ready"
            time.sleep(0.05)
        out = tmp_path / "out"
        out.mkdir()
        pish("cp", "cp-kernel:/", str(out), check=True)
        copied = next(out.iterdir())
        assert (copied / "data" / "f").read_text() == "mine\n"
        assert (copied / "proc").is_dir() and list((copied / "proc").iterdir()) == []
        assert list((copied / "sys").iterdir()) == []
        raw = subprocess.run([*pish_command(), "cp", "cp-kernel:/proc", "-"], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            assert [m.name for m in tar.getmembers()] == ["proc"]
    finally:
        pish("rm", "-f", "cp-kernel")


def test_an_exited_container_whose_overlay_is_not_mounted_is_refused(pish, pish_env, busybox_tar, tmp_path, leaks):
    """A kept overlay no longer mounted (rootless: it went with the supervisor's namespace; here unmounted
    by hand): cp read the empty mount point ("no such file") and wrote under it, where the next start's
    mount hid the files. One line instead, nothing written."""
    cid = run_detached(pish, "--net", "none", "--name", "cp-unmounted", str(busybox_tar), "true")
    merged = Path(pish_env.lib) / "containers" / cid / "merged"
    try:
        assert pish("wait", "cp-unmounted", check=True).stdout == "0\n"
        subprocess.run(["umount", str(merged)], check=True)
        (tmp_path / "f").write_text("f\n")
        refused(pish, "cp", str(tmp_path / "f"), "cp-unmounted:/", match="not mounted")
        refused(pish, "cp", "cp-unmounted:/etc/passwd", str(tmp_path / "g"), match="not mounted")
        assert list(merged.iterdir()) == []
    finally:
        pish("rm", "-f", "cp-unmounted")
