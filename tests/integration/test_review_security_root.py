"""Security review findings that need root and real containers: each test failed before its fix."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
QUIET = ("--log-level", "warning")


def test_exec_process_is_out_of_the_container_s_reach_before_exec(pish, busybox_tar: Path, leaks) -> None:
    """`pish exec`: between dropping to the container's capabilities and execve, the joined process was
    still pish's Python, dumpable, with the same uid and no more capabilities than the container's root:
    a process in the container could open its /proc/PID/exe (the host's interpreter), its fds, or
    ptrace it (CVE-2019-5736's window). A watcher in the container looks for it during many execs."""
    watcher = ('while :; do for p in /proc/[0-9]*; do case "$(readlink $p/exe 2>/dev/null)" in '
               '*python*) echo "$p" >> /tmp/seen;; esac; done; done')
    pish("run", *QUIET, "-d", "--name", "watched", str(busybox_tar), "sh", "-c", watcher, check=True)
    try:
        for _ in range(30):
            pish("exec", "watched", "true", check=True)
        seen = pish("exec", "watched", "sh", "-c", "cat /tmp/seen 2>/dev/null; true", check=True).stdout
        assert seen == "", f"the container reached pish's own process: {seen}"
    finally:
        pish("rm", "-f", "watched")
    leaks.assert_clean()


def test_read_only_volume_keeps_its_submounts_read_only(pish, busybox_tar: Path, tmp_path: Path, leaks) -> None:
    """`-v HOST:CPATH:ro` is an rbind remounted read-only at the top only: a mount below HOST stayed
    writable in the container, and writes went through to the host."""
    import subprocess

    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "pishrv-sub", str(vol / "sub")], check=True)
    try:
        proc = pish("run", *QUIET, "-v", f"{vol}:/x:ro", str(busybox_tar), "sh", "-c",
                    "echo pwned > /x/sub/file; true")
        assert proc.returncode == 0, proc.stderr
        assert not (vol / "sub" / "file").exists(), "a read-only volume was written through a submount"
    finally:
        subprocess.run(["umount", "-l", str(vol / "sub")], check=False)
    leaks.assert_clean()


def test_import_of_a_dotdot_member_behind_a_symlink_writes_nothing_outside(pish, tmp_path: Path, leaks) -> None:
    """`pish image import` of a rootfs tar with `sym -> OUTSIDE/inner` then `sym/../pwned` wrote
    OUTSIDE/pwned on the host, as root (the checks looked at the normalised name, tarfile used the raw one)."""
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("sym")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside / "inner")
        tar.addfile(link)
        data = b"pwned\n"
        member = tarfile.TarInfo("sym/../pwned")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    pish("image", "import", "--name", "evil", str(archive))
    assert not (outside / "pwned").exists()
    pish("image", "rm", "evil")
    leaks.assert_clean()
