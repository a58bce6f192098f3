"""A default container cannot reach the host: the escape battery, and what each switch turns off.

``tests/fixtures/escape_battery.sh`` runs inside a container and tries ten ways out (see its header),
printing one ``STEP name: BLOCKED|SUCCEEDED`` line each. In a default container every step must be
blocked. Run with ``--privileged`` the same battery must succeed at the steps privileged opens, which
shows the battery can tell. No step changes the host when it succeeds (it writes back the value it read).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
STEPS = ("host_pids", "mount", "write_proc_sys", "read_masked", "mknod_block", "open_disk", "dangerous_caps",
         "ptrace_outside", "unshare_userns", "host_root")
#: What --privileged opens. The PID namespace stays the container's own, as with docker, so host processes
#: (and so ptrace of one) stay out of sight, and pivot_root still hides the host's root.
OPENED_BY_PRIVILEGED = {"mount", "write_proc_sys", "read_masked", "mknod_block", "open_disk", "dangerous_caps",
                        "unshare_userns"}
QUIET = ("--log-level", "warning")


@pytest.fixture
def img(busybox_tar: Path) -> str:
    return str(busybox_tar)


@pytest.fixture
def host_bait(tmp_path: Path) -> Iterator[dict[str, str]]:
    """What the battery looks for: a marker file on the host, a host process with a marker in its
    command line, and the numbers of the host's root disk."""
    marker = tmp_path / f"host-marker-{uuid.uuid4().hex[:8]}"
    marker.write_text("the host\n")
    argv = f"escape-bait-{uuid.uuid4().hex[:8]}"
    bait = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", argv])
    disk = os.stat("/").st_dev
    try:
        yield {"HOST_MARKER": str(marker), "HOST_ARGV": argv, "DISK_DEV": f"{os.major(disk)}:{os.minor(disk)}"}
    finally:
        bait.kill()
        bait.wait()


def battery(pish, img: str, env: dict[str, str], *flags: str) -> dict[str, str]:
    """Run the battery in a container made with ``flags``; return step -> its whole line."""
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    proc = pish("run", *QUIET, "--net", "none", *flags, "-v", f"{FIXTURES}:/battery:ro", *env_args,
                img, "/bin/sh", "/battery/escape_battery.sh", timeout=120)
    print(f"--- battery {' '.join(flags) or '(defaults)'}\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    steps = dict(re.findall(r"^STEP (\w+): (.*)$", proc.stdout, re.MULTILINE))
    assert tuple(steps) == STEPS, proc.stdout
    return steps


def succeeded(steps: dict[str, str]) -> set[str]:
    return {name for name, line in steps.items() if line.startswith("SUCCEEDED")}


def test_escape_battery_fails_at_every_step(pish, img, host_bait, no_leaks):
    swappiness = Path("/proc/sys/vm/swappiness").read_text()
    steps = battery(pish, img, host_bait)
    assert succeeded(steps) == set(), "\n".join(f"{k}: {v}" for k, v in steps.items())
    assert Path("/proc/sys/vm/swappiness").read_text() == swappiness


def test_escape_battery_detects_what_privileged_opens(pish, img, host_bait, no_leaks):
    swappiness = Path("/proc/sys/vm/swappiness").read_text()
    steps = battery(pish, img, host_bait, "--privileged")
    assert succeeded(steps) == OPENED_BY_PRIVILEGED, "\n".join(f"{k}: {v}" for k, v in steps.items())
    assert Path("/proc/sys/vm/swappiness").read_text() == swappiness  # written back, unchanged


def status_of(pish, img: str, *flags: str) -> dict[str, str]:
    """The container command's /proc/self/status fields, run with ``flags``."""
    proc = pish("run", *QUIET, "--net", "none", *flags, img, "cat", "/proc/self/status", check=True)
    return dict(re.findall(r"^(\w+):\s*(.*)$", proc.stdout, re.MULTILINE))


def test_defaults_are_docker_s(pish, img, no_leaks):
    status = status_of(pish, img)
    for field in ("CapBnd", "CapPrm", "CapEff"):
        assert int(status[field], 16) == 0xA80425FB, status  # docker's default set
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"


@pytest.mark.parametrize(("flags", "field", "expected"), [
    (("--security-opt", "seccomp=unconfined"), "Seccomp", "0"),
    (("--security-opt", "no-new-privileges=false"), "NoNewPrivs", "0"),
    (("--cap-drop", "ALL"), "CapEff", "0000000000000000"),
    (("--cap-drop", "ALL", "--cap-add", "CAP_NET_ADMIN"), "CapBnd", f"{1 << 12:016x}"),
    (("--cap-add", "sys_time", "--cap-drop", "NET_RAW"), "CapEff", f"{(0xA80425FB | 1 << 25) & ~(1 << 13):016x}"),
])
def test_each_switch(pish, img, flags, field, expected):
    assert status_of(pish, img, *flags)[field] == expected


def test_masked_and_read_only_paths(pish, img, no_leaks):
    proc = pish("run", *QUIET, "--net", "none", img, "/bin/sh", "-c",
                "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; grep -c ' /proc/sys .*ro,' /proc/self/mounts",
                check=True)
    assert proc.stdout.split() == ["0", "0", "1"]
    unmasked = pish("run", *QUIET, "--net", "none", "--privileged", img, "/bin/sh", "-c",
                    "wc -c < /proc/timer_list", check=True)
    assert int(unmasked.stdout) > 0


def test_devices_cgroup_allowlist(pish, img, no_leaks):
    """The container's devices cgroup denies all but the container's own nodes (cgroup v1)."""
    allowed = pish("run", *QUIET, "--net", "none", "--limits", "cgroupv1", img, "/bin/sh", "-c",
                   "cat /proc/self/cgroup | sed -n 's/^[0-9]*:devices://p'", check=True).stdout.strip()
    assert allowed.startswith("/pish/")
    proc = pish("run", *QUIET, "--net", "none", "--limits", "cgroupv1", "-v",
                "/sys/fs/cgroup/devices:/cgdev:ro", img, "/bin/sh", "-c",
                "cat /cgdev$(sed -n 's/^[0-9]*:devices://p' /proc/self/cgroup)/devices.list", check=True)
    assert sorted(proc.stdout.split("\n")[:-1]) == sorted(
        ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"])


def test_exec_gets_the_same_restrictions(pish, img, no_leaks):
    pish("run", *QUIET, "-d", "--name", "hardened", "--net", "none", "--cap-add", "NET_ADMIN", img,
         "sleep", "60", check=True)
    try:
        proc = pish("exec", "hardened", "cat", "/proc/self/status", check=True)
        status = dict(re.findall(r"^(\w+):\s*(.*)$", proc.stdout, re.MULTILINE))
        assert int(status["CapEff"], 16) == 0xA80425FB | 1 << 12
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    finally:
        pish("rm", "-f", "hardened", check=True)


@pytest.mark.parametrize(("flags", "message"), [
    (("--cap-add", "FLY"), "invalid --cap-add 'FLY': unknown capability"),
    (("--cap-drop", "CAP_NOPE"), "invalid --cap-drop 'CAP_NOPE': unknown capability"),
    (("--security-opt", "seccomp=/etc/profile.json"), "invalid --security-opt"),
    (("--security-opt", "label=disable"), "unsupported --security-opt"),
])
def test_bad_input_is_one_line(pish, img, flags, message):
    proc = pish("run", *QUIET, "--net", "none", *flags, img, "true")
    assert proc.returncode == 125
    assert proc.stderr.startswith(f"pish: {message}") and proc.stderr.count("\n") == 1, proc.stderr


def test_a_container_under_cgroupv2(pish, img, no_leaks):
    """On this hybrid host ``--limits auto`` is cgroupv1; ``--limits cgroupv2`` puts the container in the
    (controller-less) unified hierarchy for real, in a cgroup namespace of its own (its cgroup is ``/``; with
    ``--cgroupns host`` the host's path shows), and CAP_MKNOD is kept: a BPF program is its device allowlist."""
    from pish_drivers.limits.cgroupv2 import CgroupV2Limits

    if CgroupV2Limits.check() is not None:
        pytest.skip(str(CgroupV2Limits.check()))
    proc = pish("run", *QUIET, "--net", "none", "--limits", "cgroupv2", img, "/bin/sh", "-c",
                "sed -n 's/^0:://p' /proc/self/cgroup; sed -n 's/^CapEff:\\t//p' /proc/self/status", check=True)
    cgroup, capeff = proc.stdout.split()
    assert cgroup == "/"
    assert int(capeff, 16) == 0xA80425FB
    host_view = pish("run", *QUIET, "--net", "none", "--limits", "cgroupv2", "--cgroupns", "host", img,
                     "sed", "-n", "s/^0:://p", "/proc/self/cgroup", check=True)
    assert re.fullmatch(r"/pish/[0-9a-f]{64}", host_view.stdout.strip())
    auto = pish("run", *QUIET, "--net", "none", img, "sed", "-n", "s/^[0-9]*:memory://p", "/proc/self/cgroup",
                check=True)
    assert auto.stdout.startswith("/pish/")  # cgroupv1's memory hierarchy
