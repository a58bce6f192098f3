"""``--limits systemd`` on a real systemd host (the Debian 12 VM of tests/vm/): the container's scope as
``systemctl`` shows it, the limits in its cgroup, an OOM kill seen although systemd removes the scope as
soon as it empties, and nothing of pish's left in ``systemctl list-units`` or /sys/fs/cgroup after ``rm``
or after SIGKILL of the supervisor and ``pish gc``.

Skipped where the driver's own check fails (no systemd as PID 1, not cgroup v2 alone, no answer on D-Bus).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.containers import run_detached

from pish_core import names, state
from pish_core.drivers import RunContext
from pish_core.spec import ContainerSpec, DriverChoice, Process, Resources
from pish_drivers.limits.systemd import SystemdLimits

WHY_NOT = SystemdLimits.check()
pytestmark = [pytest.mark.integration, pytest.mark.hostkind, pytest.mark.leak_check(),
              pytest.mark.skipif(WHY_NOT is not None, reason=f"no systemd limits here: {WHY_NOT}")]

SYSTEMD = ("--log-level", "warning", "--limits", "systemd")
CGROUP = Path("/sys/fs/cgroup")
SLOW = 300  # seconds a pish command may take under emulation (the VM runs ~40x slower)


def systemctl(*args: str) -> str:
    return subprocess.run(["systemctl", *args], check=True, capture_output=True, text=True).stdout


def show(unit: str, *props: str) -> dict[str, str]:
    out = systemctl("show", unit, *(f"-p{p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def pish_units() -> list[str]:
    out = systemctl("list-units", "--all", "--plain", "--no-legend", "pish.slice", "pish-*.slice",
                    "pish-*.scope")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def nothing_left() -> None:
    """No pish unit in systemd, no pish.slice in the cgroup tree. systemd stops pish.slice by itself once
    no scope needs it, a moment after the last scope's stop job: wait for that."""
    deadline = time.monotonic() + 30
    while (pish_units() or (CGROUP / "pish.slice").exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pish_units() == []
    assert not (CGROUP / "pish.slice").exists()


def inspect(pish: Any, cid: str) -> dict[str, Any]:
    return json.loads(pish("inspect", cid, check=True, timeout=SLOW).stdout)[0]  # type: ignore[no-any-return]


def test_the_scope_has_the_limits(pish, busybox_tar, leaks):
    cid = run_detached(pish, *SYSTEMD, "--memory", "48m", "--cpus", "0.5", "--pids-limit", "20",
                       str(busybox_tar), "sleep", "600")
    unit, slice_unit = names.systemd_scope(cid), names.systemd_container_slice(cid)
    try:
        props = show(unit, "MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "Slice", "ControlGroup", "Delegate",
                     "ActiveState", "Description")
        assert props == {"MemoryMax": str(48 << 20), "CPUQuotaPerSecUSec": "500ms", "TasksMax": "20",
                         "Slice": slice_unit, "ControlGroup": f"/pish.slice/{slice_unit}/{unit}",
                         "Delegate": "yes", "ActiveState": "active",
                         "Description": props["Description"]}, props
        assert show(slice_unit, "Slice", "ActiveState") == {"Slice": "pish.slice", "ActiveState": "active"}
        cgroup = CGROUP / "pish.slice" / slice_unit / unit
        want = {"memory.max": str(48 << 20), "cpu.max": "50000 100000", "pids.max": "20"}
        assert {f: (cgroup / f).read_text().strip() for f in want} == want
        assert inspect(pish, cid)["pid"] in [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        # `pish exec` joins the scope: in the container's cgroup namespace, the scope is /
        joined = pish("exec", cid, "cat", "/proc/self/cgroup", "/sys/fs/cgroup/memory.max", check=True,
                      timeout=SLOW)
        assert joined.stdout.split() == ["0::/", str(48 << 20)], joined.stdout
    finally:
        pish("rm", "-f", cid, check=True, timeout=SLOW)
    nothing_left()
    leaks.assert_clean()


def test_a_foreground_run_reads_its_limits_and_leaves_nothing(pish, busybox_tar, leaks):
    proc = pish("run", *SYSTEMD, "--memory", "48m", "--cpus", "0.5", "--pids-limit", "20", str(busybox_tar),
                "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/pids.max",
                timeout=SLOW)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(48 << 20), "50000 100000", "20"]
    nothing_left()
    leaks.assert_clean()


def test_an_unlimited_container_gets_no_hidden_tasks_limit(pish, busybox_tar, leaks):
    proc = pish("run", *SYSTEMD, str(busybox_tar), "cat", "/sys/fs/cgroup/pids.max", timeout=SLOW)
    assert proc.stdout.strip() == "max", proc.stdout + proc.stderr  # not systemd's DefaultTasksMax
    nothing_left()
    leaks.assert_clean()


@pytest.mark.parametrize("attempt", [1, 2, 3])  # systemd removes the scope at once: no luck in the timing
def test_oom_kill_exits_137_and_is_reported(pish, busybox_tar, leaks, attempt):
    proc = pish("run", *SYSTEMD, "--name", f"hog{attempt}", "--memory", "16m", str(busybox_tar),
                "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1", timeout=SLOW)
    assert proc.returncode == 137, proc.stderr
    assert proc.stderr == f"pish: container hog{attempt} was killed by the OOM killer (memory limit 16 MiB)\n"
    cid = run_detached(pish, *SYSTEMD, "--memory", "16m", str(busybox_tar),
                       "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1")
    deadline = time.monotonic() + SLOW
    while (data := inspect(pish, cid))["status"] != "stopped":
        assert time.monotonic() < deadline, data
        time.sleep(0.2)
    assert data["exit_code"] == 137 and data["oom_killed"] is True, data
    pish("rm", cid, check=True, timeout=SLOW)
    nothing_left()
    leaks.assert_clean()


def test_sigkill_of_the_supervisor_then_gc_leaves_nothing(pish, pish_env, busybox_tar, leaks):
    # The container dies with its supervisor (PDEATHSIG), so systemd stops the scope by itself; the
    # container's slice is left for gc to stop.
    cid = run_detached(pish, *SYSTEMD, "--memory", "32m", str(busybox_tar), "sleep", "600")
    record = json.loads((pish_env.root / "containers" / cid / "state.json").read_text())
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    deadline = time.monotonic() + SLOW
    while Path(f"/proc/{record['supervisor_pid']}/stat").exists() and \
            Path(f"/proc/{record['supervisor_pid']}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    slice_unit = names.systemd_container_slice(cid)
    assert show(slice_unit, "ActiveState")["ActiveState"] == "active"  # pish's to remove, not systemd's
    gc = pish("gc", check=True, timeout=SLOW)
    assert f"removing slice {slice_unit}" in gc.stderr, gc.stderr
    pish("rm", "-f", cid, timeout=SLOW)
    nothing_left()
    leaks.assert_clean()


def test_release_from_the_journal_stops_a_scope_with_processes(tmp_path, monkeypatch):
    """What `pish gc` does for a scope that still holds processes: KillUnit, StopUnit, from the record alone.
    A plain `sleep` stands in for the container."""
    monkeypatch.setenv("PISH_ROOT", str(tmp_path / "run"))
    spec = ContainerSpec(id=names.new_id(), name="sd-direct", image="none", process=Process(args=("sleep",)),
                         hostname="sd-direct", limits=DriverChoice("systemd"),
                         resources=Resources(memory=32 << 20, pids_limit=10))
    journal = state.create(state.ContainerState(id=spec.id, name="sd-direct", image="none", command=[]))
    unit, slice_unit = names.systemd_scope(spec.id), names.systemd_container_slice(spec.id)
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        limits = SystemdLimits()
        limits.validate(spec)
        with limits.apply(RunContext(spec, journal), sleeper.pid) as group:
            (record,) = state.ContainerState.load(spec.id).resources
            assert record == {"kind": "limits", "driver": "systemd", "what": "scope", "unit": unit,
                              "bus": "system", "slice": slice_unit,
                              "path": f"/sys/fs/cgroup/pish.slice/{slice_unit}/{unit}"}
            assert show(unit, "ActiveState", "MemoryMax", "TasksMax") == {
                "ActiveState": "active", "MemoryMax": str(32 << 20), "TasksMax": "10"}
            assert group.pids() == [sleeper.pid]
            SystemdLimits().release(record)  # another process, as `pish gc`, from the record alone
            assert sleeper.wait(timeout=SLOW) == -signal.SIGKILL
            assert unit not in pish_units() and slice_unit not in pish_units()
            SystemdLimits().release(record)  # idempotent
        # ...and the run's own release, on the way out, finds nothing left to do
    finally:
        sleeper.kill()
        sleeper.wait()
        journal.close()
    nothing_left()


def test_two_containers_share_the_slice(pish, busybox_tar, leaks):
    first = run_detached(pish, *SYSTEMD, str(busybox_tar), "sleep", "600")
    second = run_detached(pish, *SYSTEMD, str(busybox_tar), "sleep", "600")
    try:
        assert show("pish.slice", "ActiveState", "StopWhenUnneeded") == {"ActiveState": "active",
                                                                       "StopWhenUnneeded": "yes"}
        pish("rm", "-f", first, check=True, timeout=SLOW)
        assert show("pish.slice", "ActiveState")["ActiveState"] == "active"  # the second still needs it
        assert show(names.systemd_scope(second), "ActiveState")["ActiveState"] == "active"
    finally:
        pish("rm", "-f", first, second, timeout=SLOW)
    nothing_left()
    leaks.assert_clean()
