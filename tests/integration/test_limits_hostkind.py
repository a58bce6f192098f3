"""Limits on whatever kind of host this is: cgroup v1 here, cgroup v2 with or without systemd on a Debian 12
VM (tests/vm/ runs this file there). Each test finds the container's cgroup the way an admin would, from
``/proc/PID/cgroup`` on the host, so it holds for every limits driver.

What a cgroup v2 host must show (the issue's list): an OOM kill exits 137 and ``inspect`` says so; a pids
limit stops the process after the last one allowed; ``--cpus 0.5 --memory 48m --pids-limit 20`` read as
``50000 100000``, ``50331648`` and ``20``, from the host and from inside at /sys/fs/cgroup; the container
sees its own cgroup as ``/``; nothing of pish's is left in /sys/fs/cgroup after ``rm`` or SIGKILL + ``gc``.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.containers import run_detached

from pish_core.spec import Resources
from pish_drivers.limits import auto, cgroup_mounts

pytestmark = [pytest.mark.integration, pytest.mark.hostkind, pytest.mark.leak_check()]

QUIET = ("--log-level", "warning")
CGROUP = Path("/sys/fs/cgroup")
DRIVER = auto.choose(Resources(memory=1), rootless=False)  # what `--limits auto` picks here
UNIFIED_DRIVER = DRIVER in ("cgroupv2", "systemd")
needs_v2 = pytest.mark.skipif(not UNIFIED_DRIVER, reason=f"cgroup v2 host only; this one is {DRIVER}")


def v2_root() -> Path | None:
    mounts = {m for m, fstype, _ in cgroup_mounts() if fstype == "cgroup2"}
    return next((p for p in (CGROUP, CGROUP / "unified") if p in mounts), None)


def container_cgroup(pid: int, controller: str = "") -> Path:
    """The host directory of ``pid``'s cgroup: in the hierarchy of ``controller`` (v1), or the v2 one."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if UNIFIED_DRIVER and controllers == "":
            root = v2_root()
            assert root is not None
            return root / path.lstrip("/")
        if not UNIFIED_DRIVER and controller in controllers.split(","):
            return CGROUP / controller / path.lstrip("/")
    raise AssertionError(f"no {controller or 'v2'} cgroup for pid {pid}")


def inspect(pish: Any, cid: str) -> dict[str, Any]:
    return json.loads(pish("inspect", cid, check=True).stdout)[0]  # type: ignore[no-any-return]


def wait_stopped(pish: Any, cid: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout  # a safety net, not a timing assertion
    while (data := inspect(pish, cid))["status"] != "stopped":
        assert time.monotonic() < deadline, data
        time.sleep(0.1)
    return data


def pish_cgroups() -> list[str]:
    """Everything of pish's in the cgroup trees: what must be gone once no container runs."""
    found = [*CGROUP.glob("*/pish/*"), *CGROUP.glob("pish/*"), *CGROUP.glob("pish.slice/*")]
    return [str(p) for p in found if p.is_dir()]


def test_oom_kill_exits_137_and_inspect_says_so(pish, busybox_tar, leaks):
    cid = run_detached(pish, *QUIET, "--memory", "16m", str(busybox_tar),
                       "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1")
    data = wait_stopped(pish, cid)
    assert data["exit_code"] == 137 and data["oom_killed"] is True, data
    pish("rm", cid, check=True)
    fg = pish("run", *QUIET, "--name", "hog16", "--memory", "16m", str(busybox_tar),
              "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1")
    assert fg.returncode == 137, fg.stderr
    assert "pish: container hog16 was killed by the OOM killer (memory limit 16 MiB)" in fg.stderr
    leaks.assert_clean()


def test_pids_limit_5_stops_the_6th_process(pish, busybox_tar, leaks):
    # PID 1 is the shell; four sleeps make five processes; the fifth sleep would be the sixth.
    script = "for i in 1 2 3 4 5; do sleep 30 & done; wait"
    proc = pish("run", *QUIET, "--pids-limit", "5", str(busybox_tar), "sh", "-c", script, timeout=120)
    assert proc.stderr.count("can't fork") == 1, proc.stderr
    leaks.assert_clean()


@needs_v2
def test_limits_read_the_same_from_the_host_and_from_inside(pish, busybox_tar, leaks):
    cid = run_detached(pish, *QUIET, "--cpus", "0.5", "--memory", "48m", "--pids-limit", "20",
                       str(busybox_tar), "sleep", "300")
    try:
        cgroup = container_cgroup(inspect(pish, cid)["pid"])
        want = {"cpu.max": "50000 100000", "memory.max": "50331648", "pids.max": "20"}
        assert {name: (cgroup / name).read_text().strip() for name in want} == want
        inside = pish("exec", cid, "cat", *(f"/sys/fs/cgroup/{name}" for name in want), check=True)
        assert inside.stdout.split("\n")[:3] == list(want.values()), inside.stdout
    finally:
        pish("rm", "-f", cid, check=True)
    assert pish_cgroups() == []
    leaks.assert_clean()


#: run in a process of its own (its intermediate forks from it): enter the container the way `pish exec`
#: does, and say where the new process is before it is let go
_ENTER = """
import json, sys
from pish_core import resources, state
from pish_core.drivers import load
from pish_core.spec import ContainerSpec, Process
s = state.ContainerState.load(sys.argv[1])
spec = ContainerSpec.from_dict(s.spec)
limits, record = resources.limits_of(s)
isolation = load("isolation", spec.isolation.name, spec.isolation.options)
with resources.entered(isolation, limits, record, s.pid, Process(args=("true",)), {}, spec.security) as child:
    born = open(f"/proc/{child.pid}/cgroup").read().splitlines()[-1]
    print(json.dumps({"in_cgroup": child.in_cgroup, "cgroup": born}))
"""


@pytest.mark.skipif(v2_root() is None, reason="no cgroup2 hierarchy on this host")
def test_exec_is_born_in_the_containers_cgroup(pish, busybox_tar, leaks):
    """On cgroup v2 a process joining a container (`pish exec`, `pish-oci exec`) is cloned into its cgroup
    (clone3 CLONE_INTO_CGROUP): moving it there after the fork, as before, waited out an RCU grace period
    of the host's cgroup lock (5-18 ms a move here). It is there before it runs anything, also where the
    container has a cgroup namespace of its own on a delegating (nsdelegate) systemd host."""
    import subprocess
    import sys

    driver = DRIVER if UNIFIED_DRIVER else "cgroupv2"
    for cgroupns in ("private", "host"):
        cid = run_detached(pish, *QUIET, "--limits", driver, "--cgroupns", cgroupns, str(busybox_tar), "sleep", "300")
        try:
            pid = inspect(pish, cid)["pid"]
            proc = subprocess.run([sys.executable, "-c", _ENTER, cid], capture_output=True, text=True, timeout=60,
                                  check=False)
            assert proc.returncode == 0, proc.stderr
            born = json.loads(proc.stdout.splitlines()[-1])
            assert born["in_cgroup"] is True
            init = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::"))
            assert born["cgroup"] == init and init != "0::/", (born, init, cgroupns)  # both seen from the host
            inside = pish("exec", cid, "cat", "/proc/self/cgroup", check=True).stdout.splitlines()[-1]
            assert inside == ("0::/" if cgroupns == "private" else born["cgroup"]), inside
        finally:
            pish("rm", "-f", cid, check=True)
    leaks.assert_clean()


@pytest.mark.skipif(v2_root() is None, reason="no cgroup2 hierarchy on this host")
def test_a_container_sees_its_own_cgroup_as_root_read_only(pish, busybox_tar, leaks):
    driver = DRIVER if UNIFIED_DRIVER else "cgroupv2"  # on a hybrid host, the v2 driver without limits
    script = "cat /proc/self/cgroup; grep ' /sys/fs/cgroup ' /proc/mounts; echo 1 > /sys/fs/cgroup/cgroup.procs"
    proc = pish("run", *QUIET, "--limits", driver, str(busybox_tar), "sh", "-c", script)
    lines = proc.stdout.splitlines()
    assert "0::/" in lines, proc.stdout
    assert any(line.startswith("cgroup2 /sys/fs/cgroup cgroup2 ro,") for line in lines), proc.stdout
    assert "Read-only file system" in proc.stderr
    host = pish("run", *QUIET, "--limits", driver, "--cgroupns", "host", str(busybox_tar), "cat", "/proc/self/cgroup")
    assert "0::/" not in host.stdout.splitlines(), host.stdout
    cid = run_detached(pish, *QUIET, "--limits", driver, str(busybox_tar), "sleep", "300")
    try:  # `pish exec` joins the container's cgroup and its cgroup namespace
        assert "0::/" in pish("exec", cid, "cat", "/proc/self/cgroup", check=True).stdout.splitlines()
    finally:
        pish("rm", "-f", cid, check=True)
    leaks.assert_clean()


@pytest.mark.skipif(v2_root() is None, reason="no cgroup2 hierarchy on this host")
def test_nothing_is_left_after_rm_or_after_sigkill_and_gc(pish, pish_env, busybox_tar, leaks):
    driver = DRIVER if UNIFIED_DRIVER else "cgroupv2"
    limits = ("--memory", "32m", "--pids-limit", "10") if UNIFIED_DRIVER else ()
    cid = run_detached(pish, *QUIET, "--limits", driver, *limits, str(busybox_tar), "sleep", "300")
    pish("rm", "-f", cid, check=True)
    assert pish_cgroups() == []
    cid = run_detached(pish, *QUIET, "--limits", driver, *limits, str(busybox_tar), "sleep", "300")
    supervisor = json.loads((pish_env.root / "containers" / cid / "state.json").read_text())["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{supervisor}").exists() and Path(f"/proc/{supervisor}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pish("gc", check=True)
    assert pish_cgroups() == []
    pish("rm", "-f", cid)
    leaks.assert_clean()


def a_block_device() -> str:
    """``MAJOR MINOR`` of a block device of this host (its first disk)."""
    for dev in sorted(Path("/sys/block").glob("*/dev")):
        return dev.read_text().strip().replace(":", " ")
    pytest.skip("this host has no block device")


@pytest.mark.parametrize("driver", ["auto", "cgroupv2"])
def test_a_default_container_can_mknod_but_not_use_a_block_device(pish, busybox_tar, leaks, driver):
    if driver == "cgroupv2" and v2_root() is None:
        pytest.skip("no cgroup2 hierarchy on this host")
    script = (f"mknod /tmp/null c 1 3 && echo hi > /tmp/null && echo char-ok; "
              f"mknod /tmp/disk b {a_block_device()} && echo block-made; head -c 1 /tmp/disk >/dev/null && echo block-read; "
              "grep CapBnd /proc/self/status")
    proc = pish("run", *QUIET, "--limits", driver, str(busybox_tar), "sh", "-c", script)
    assert "char-ok" in proc.stdout, proc.stdout + proc.stderr
    assert "block-read" not in proc.stdout, proc.stdout
    assert "Operation not permitted" in proc.stderr, proc.stderr
    bounding = int(proc.stdout.split("CapBnd:")[1].split()[0], 16)
    assert bounding & (1 << 27), "CAP_MKNOD is in the default set, as docker's"
    leaks.assert_clean()


@pytest.mark.skipif(v2_root() is None, reason="no cgroup2 hierarchy on this host")
def test_fork_into_cgroup_is_a_fork_born_in_the_cgroup(tmp_path: Path) -> None:
    """native.fork_into_cgroup: clone3 wrapped as os.fork wraps fork. The child is in the cgroup before
    it runs a line, and its Python works (threads, the after-fork hooks); a v1 directory is refused
    with nothing forked."""
    import subprocess
    import sys

    root = v2_root()
    assert root is not None
    cgroup = root / f"pish-test-fork-{os.getpid()}"
    cgroup.mkdir()
    code = f"""
import os, threading
from pish_core import native
fd = os.open({str(cgroup)!r}, os.O_PATH | os.O_DIRECTORY)
pid = native.fork_into_cgroup(fd)
if pid == 0:
    here = open("/proc/self/cgroup").read()
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    os._exit(0 if {cgroup.name!r} in here else 3)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
try:
    native.fork_into_cgroup(os.open("/proc", os.O_PATH | os.O_DIRECTORY))
except OSError as exc:
    print("refused", exc.errno)
"""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.split("\n")
        assert lines[0] == "0" and lines[1].startswith("refused "), proc.stdout
    finally:
        cgroup.rmdir()
