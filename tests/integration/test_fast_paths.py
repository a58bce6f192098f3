"""Speed-ups that are behaviours (issue 13), checked as behaviours: what is mounted how, what is written,
how a command ends. No time is asserted."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration]


def root_mount_options(text: str) -> str:
    """The options of the mount at / in a /proc/self/mounts listing."""
    return next(line.split()[3] for line in text.splitlines() if line.split()[1] == "/")


def test_a_foreground_layer_is_volatile_and_a_kept_one_is_not(pish: Any, busybox_tar: Path, leaks: Any) -> None:
    """A foreground run's writable layer dies with it: mounted `volatile`, its unmount skips a syncfs of the
    host filesystem. A detached container's layer is kept for `pish start` and mounted without it, and
    mounts again after a stop (a volatile upper that was not cleanly unmounted would refuse that)."""
    fg = pish("run", "--net", "none", str(busybox_tar), "cat", "/proc/self/mounts", check=0)
    assert "volatile" in root_mount_options(fg.stdout)
    pish("run", "-d", "--name", "keeper", "--net", "none", str(busybox_tar), "sleep", "1000", check=0)
    try:
        kept = pish("exec", "keeper", "cat", "/proc/self/mounts", check=0)
        assert "volatile" not in root_mount_options(kept.stdout)
        pish("stop", "-t", "1", "keeper", check=0)
        pish("start", "keeper", check=0)
        assert pish("exec", "keeper", "true").returncode == 0
    finally:
        pish("rm", "-f", "keeper")
    leaks.assert_clean()


def test_run_output_and_status_survive_the_quick_exit(pish: Any, busybox_tar: Path) -> None:
    """pish ends with os._exit after flushing (pish_core/quickexit.py): everything printed still arrives,
    the exit status is the container's, and a bad flag is still one line with 125."""
    proc = pish("run", "--net", "none", str(busybox_tar), "sh", "-c", "seq 1 20000; exit 7")
    assert proc.returncode == 7
    assert proc.stdout.splitlines()[-1] == "20000"
    assert len(proc.stdout.splitlines()) == 20000
    bad = pish("run", "--no-such-flag")
    assert bad.returncode == 125 and bad.stderr.count("\n") == 1
    listing = pish("ps", "-a", check=0)
    assert listing.stdout.startswith("CONTAINER ID")


def test_run_and_exec_join_the_containers_cgroups_themselves(pish: Any, busybox_tar: Path) -> None:
    """On cgroup v1 the init, and an exec'd process before it enters the container, move themselves into
    the container's cgroups (pish_core/init.join_cgroup): every controller shows the container's group."""
    pish("run", "-d", "--name", "grouped", "--net", "none", str(busybox_tar), "sleep", "1000", check=0)
    try:
        init = pish("exec", "grouped", "cat", "/proc/1/cgroup", check=0).stdout
        execd = pish("exec", "grouped", "cat", "/proc/self/cgroup", check=0).stdout
        cid = pish("inspect", "grouped", check=0).stdout.split('"id": "')[1][:64]
        assert execd == init
        assert sum(f"/pish/{cid}" in line for line in init.splitlines()) >= 1
    finally:
        pish("rm", "-f", "grouped")
