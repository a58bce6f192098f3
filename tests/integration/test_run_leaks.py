"""Nothing leaks: after every way a ``pish run`` can end, the host is as it was before.

The ways: a normal exit, a non-zero exit, exec of a missing command, a bad ``--limit`` key, SIGTERM and
SIGINT to ``pish run`` while the container runs and while it is still being set up, and all of that with
``--net bridge`` too. "As it was" is judged by the ``leaks`` fixture (``tests/conftest.py``,
``tests/helpers/leaks.py``): the snapshots of ``tests/helpers/hostsnap.py`` (mounts, cgroups, links, netns,
container records, writable layers, ``/tmp/pish*``), narrowed to this test's own containers, its
``tmp_path`` and our bridge, because other test runs on this machine start containers at the same time.
"""
from __future__ import annotations

import os
import signal
import time

import pytest
from helpers.containers import no_traceback, pish_in_background, wait_running
from helpers.leaks import RUN_BRIDGE, bridge_path, fail_if_bridge_exists

pytestmark = [pytest.mark.integration, pytest.mark.leak_check(bridge=RUN_BRIDGE)]

BRIDGE_PATH = bridge_path(RUN_BRIDGE)
BRIDGE_ARGS = ("--net", "bridge", "--network", RUN_BRIDGE, "--ip", "10.0.4.9/24")


@pytest.fixture(params=["none", "bridge"])
def net_args(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Every case once with ``--net none`` and once on our test bridge."""
    if request.param == "bridge":
        fail_if_bridge_exists(RUN_BRIDGE)
    return ("--net", "none") if request.param == "none" else BRIDGE_ARGS


@pytest.mark.parametrize(("cmd", "code"), [
    (["true"], 0),
    (["sh", "-c", "echo out; echo err >&2; exit 7"], 7),
    (["/bin/nope"], 127),
    (["/etc/passwd"], 126),
], ids=["exit-0", "exit-7", "missing-command", "not-executable"])
def test_a_run_leaves_nothing(pish, busybox_tar, leaks, net_args, cmd, code):
    proc = pish("run", *net_args, "--memory", "64m", "--pids-limit", "50", str(busybox_tar), *cmd)
    assert proc.returncode == code, proc.stderr
    no_traceback(proc.stderr)
    assert leaks.ids, "the watcher saw no container: the check would prove nothing"
    assert not BRIDGE_PATH.exists()  # the only user left: the bridge went with it
    leaks.assert_clean()


def test_bad_limit_key_leaves_nothing(pish, busybox_tar, leaks):
    proc = pish("run", "--limit", "memory.bogus=1", str(busybox_tar), "true")
    assert proc.returncode == 125
    assert [line for line in proc.stderr.splitlines() if not line.startswith("[INFO]")] == [
        "pish: cgroupv1: memory has no setting memory.bogus (see the files in /sys/fs/cgroup/memory)"], proc.stderr
    leaks.assert_clean()


def test_oom_kill_leaves_nothing(pish, busybox_tar, leaks):
    proc = pish("run", "--memory", "32m", str(busybox_tar), "dd", "if=/dev/zero", "of=/dev/null", "bs=100M",
                "count=1")
    assert proc.returncode == 137, proc.stderr
    leaks.assert_clean()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_pish_while_running(pish_env, busybox_tar, leaks, net_args, sig):
    """``pish run`` forwards the signal; sleep as PID 1 ignores it, so SIGKILL follows after the stop
    timeout. pish exits with 128+N or the container's status (137), and everything is released."""
    with pish_in_background("run", *net_args, "--stop-timeout", "1", str(busybox_tar), "sleep", "100") as proc:
        wait_running(pish_env, proc)
        assert leaks.ids
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (128 + sig, 128 + signal.SIGKILL), err
    no_traceback(err)
    leaks.assert_clean()


@pytest.mark.parametrize("stage", ["storage", "isolation", "limits", "network"])
def test_signal_to_pish_during_set_up(pish_env, busybox_tar, leaks, tmp_path, stage):
    """SIGTERM while pish is still setting the container up: what is made so far is undone, exit 143.

    pish's test hook (``PISH_TEST_STAGES`` / ``PISH_TEST_STAGE_DELAY`` in runtime.py) reports each stage it
    reaches and pauses after it, which is when the signal is sent.
    """
    stages = tmp_path / "stages"
    stages.touch()
    env = {**os.environ, "PISH_TEST_STAGES": str(stages), "PISH_TEST_STAGE_DELAY": "0.5"}
    with pish_in_background("run", *BRIDGE_ARGS, str(busybox_tar), "sleep", "100", env=env) as proc:
        deadline = time.monotonic() + 30
        while stage not in stages.read_text().split() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines()[-1] == "pish: interrupted by SIGTERM during set-up; cleaned up", err
    no_traceback(err)
    assert not BRIDGE_PATH.exists()
    leaks.assert_clean()
