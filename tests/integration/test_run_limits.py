"""Limits through ``pish run``: the kernel enforces them and the cgroup files say what was asked.

The settings are read from the host, in the container's cgroup v1 directories
(``/sys/fs/cgroup/<controller>/pish/<id>``), while a detached container runs.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.containers import run_detached, tree
from helpers.leaks import RUN_BRIDGE

from pish_core.spec import Resources
from pish_drivers.limits import auto

pytestmark = [pytest.mark.integration, pytest.mark.leak_check(bridge=RUN_BRIDGE),
              pytest.mark.skipif(auto.choose(Resources(memory=1), rootless=False) != "cgroupv1",
                                 reason="reads cgroup v1 files; test_limits_hostkind.py covers every host")]

CGROUP = Path("/sys/fs/cgroup")
QUIET = ("--log-level", "warning")


def cgroup_file(controller: str, cid: str, name: str) -> str:
    return (CGROUP / controller / "pish" / cid / name).read_text().strip()


def test_memory_limit_kills_a_process_touching_100_mib(pish, busybox_tar, leaks):
    # dd reads 100 MiB from /dev/zero into one buffer: every page of it is touched, in PID 1 itself.
    proc = pish("run", "--name", "hog", "--memory", "32m", str(busybox_tar),
                "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1")
    assert proc.returncode == 137, proc.stderr
    oom = [line for line in proc.stderr.splitlines() if "OOM" in line]
    assert oom == ["pish: container hog was killed by the OOM killer (memory limit 32 MiB)"], proc.stderr
    leaks.assert_clean()


def test_memory_limit_kills_a_shell_holding_100_mib(pish, busybox_tar):
    script = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo survived ${#x}'
    proc = pish("run", *QUIET, "--name", "hog2", "--memory", "32m", str(busybox_tar), "sh", "-c", script)
    assert proc.returncode == 137, proc.stdout + proc.stderr
    assert "survived" not in proc.stdout
    assert proc.stderr == "pish: container hog2 was killed by the OOM killer (memory limit 32 MiB)\n"


def test_no_oom_line_without_an_oom(pish, busybox_tar):
    proc = pish("run", *QUIET, "--memory", "32m", str(busybox_tar), "dd", "if=/dev/zero", "of=/dev/null",
                "bs=1M", "count=100")  # 100 MiB through a 1 MiB buffer: fits
    assert proc.returncode == 0, proc.stderr
    assert "OOM" not in proc.stderr


def test_pids_limit_contains_a_fork_bomb(pish, pish_env, busybox_tar, leaks):
    # The inner shell forks sleeps until fork fails (and then it gives up); the outer one, PID 1, says so
    # and becomes a sleep itself (exec: no fork needed), so the container stays up to be looked at.
    bomb = 'sh -c "while :; do sleep 100 & done"; echo contained; exec sleep 100'
    cid = run_detached(pish, "--pids-limit", "20", str(busybox_tar), "sh", "-c", bomb)
    log = pish_env.root / "containers" / cid / "container.log"
    deadline = time.monotonic() + 30  # a safety net, not a timing assertion
    while "contained" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "contained" in log.read_text(), log.read_text()
    assert "can't fork" in log.read_text()  # fork failed inside...

    assert cgroup_file("pids", cid, "pids.max") == "20"
    assert 1 < int(cgroup_file("pids", cid, "pids.current")) <= 20
    events = dict(line.split() for line in cgroup_file("pids", cid, "pids.events").splitlines())
    assert int(events["max"]) > 0  # ...because the limit refused it
    peak = CGROUP / "pids" / "pish" / cid / "pids.peak"
    if peak.exists():  # Linux 6.1 and later
        assert int(peak.read_text()) <= 20

    stop = pish("stop", "-t", "1", cid, timeout=60)
    assert stop.returncode == 0, stop.stderr
    pish("rm", cid, check=True)
    leaks.assert_clean()


def test_cpus_writes_the_quota(pish, busybox_tar, leaks):
    cid = run_detached(pish, "--cpus", "0.5", str(busybox_tar), "sleep", "100")
    try:
        assert cgroup_file("cpu", cid, "cpu.cfs_period_us") == "100000"
        assert cgroup_file("cpu", cid, "cpu.cfs_quota_us") == "50000"
    finally:
        pish("rm", "-f", cid, check=True)
    leaks.assert_clean()


def test_memory_cpuset_and_pids_are_written(pish, busybox_tar):
    cid = run_detached(pish, "--memory", "48m", "--cpuset-cpus", "0", "--pids-limit", "33", str(busybox_tar),
                       "sleep", "100")
    try:
        assert cgroup_file("memory", cid, "memory.limit_in_bytes") == str(48 << 20)
        assert cgroup_file("cpuset", cid, "cpuset.cpus") == "0"
        assert cgroup_file("pids", cid, "pids.max") == "33"
    finally:
        pish("rm", "-f", cid, check=True)


def test_raw_limit_is_written(pish, busybox_tar):
    assert (CGROUP / "memory" / "memory.swappiness").read_text().strip() != "0"  # so 0 means we wrote it
    cid = run_detached(pish, "--limit", "memory.swappiness=0", str(busybox_tar), "sleep", "100")
    try:
        assert cgroup_file("memory", cid, "memory.swappiness") == "0"
    finally:
        pish("rm", "-f", cid, check=True)


def test_no_limits_by_default(pish, busybox_tar):
    cid = run_detached(pish, str(busybox_tar), "sleep", "100")
    try:
        assert cgroup_file("cpu", cid, "cpu.cfs_quota_us") == "-1"
        assert cgroup_file("pids", cid, "pids.max") == "max"
    finally:
        pish("rm", "-f", cid, check=True)


@pytest.mark.parametrize("limit", ["memory.bogus=1", "nosuchcontroller.key=1", "memory.usage_in_bytes=1"])
def test_bad_limit_key(pish, pish_env, busybox_tar, leaks, limit):
    pish("run", str(busybox_tar), "true", check=True)  # the image in the store, as after any earlier run
    seen, lib = set(leaks.ids), tree(pish_env.lib)
    proc = pish("run", "--limit", limit, str(busybox_tar), "true")
    assert proc.returncode == 125
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pish: "), proc.stderr
    assert limit.split("=")[0].split(".")[0] in lines[0]  # it names what is wrong
    assert proc.stdout == ""
    assert leaks.ids == seen  # not even a container record was written
    assert tree(pish_env.lib) == lib and list((pish_env.root / "containers").iterdir()) == []
    leaks.assert_clean()
