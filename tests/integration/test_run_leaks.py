"""Nothing leaks: after every way a ``pish run`` can end, the host is as it was before.

The ways: a normal exit, a non-zero exit, exec of a missing command, a bad ``--limit`` key, SIGTERM and
SIGINT to ``pish run`` while the container runs and while it is still being set up, and all of that with
``--net bridge`` too. "As it was" is judged on the snapshots of ``tests/helpers/hostsnap.py`` (mounts,
cgroups, links, netns, container records, writable layers, ``/tmp/pish*``), narrowed to this test's own
things as said below.

This module also holds what the other ``test_run_*`` modules share: the ``leaks`` fixture (import
``leaks_fixture`` to use it) and ``wait_running``.

Why not the plain ``no_leaks`` fixture: it compares the whole host, and other test runs on this machine
start and stop containers of their own at the same time, so their mounts, cgroups and veths come and go
in our snapshot. ``LeakCheck`` takes the same snapshots but judges only what this test can have made: the
entries that name one of this test's containers (every host name pish derives from a container embeds the
first 11 hex digits of its id: ``pish/<id>``, ``pv<id[:11]>``), anything under this test's ``tmp_path``
(``PISH_ROOT``, ``PISH_LIB``, the overlay mounts), our bridge, and the container records and layers.
The ids are collected by a thread that watches this test's ``PISH_ROOT`` and ``PISH_LIB``: pish writes a
container's record before it acquires anything and keeps it until everything is released, so no
container of ours can hold a resource without being seen.
"""
from __future__ import annotations

import collections
import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import pish_command
from helpers.hostsnap import HostSnapshot, snapshot

pytestmark = pytest.mark.integration

ID_RE = re.compile(r"[0-9a-f]{64}")
#: The one bridge these tests may use (other test runs on this machine use pisht3, pisht4...; never pish0).
TEST_BRIDGE = "pisht2"
BRIDGE_PATH = Path("/sys/class/net") / TEST_BRIDGE
_FIELDS = ("mounts", "cgroups", "links", "netns", "tmp", "containers", "layers")
_ALWAYS_OURS = ("containers", "layers")  # they live under this test's PISH_ROOT / PISH_LIB


class LeakCheck:
    """A host snapshot taken now, and ``assert_clean()`` to compare the host with it later."""

    def __init__(self, pish_env: Any) -> None:
        self.env = pish_env
        self.scope = str(pish_env.root.parent) + "/"  # the test's tmp_path
        self.ids: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.bridge_existed = BRIDGE_PATH.exists()
        self.before = snapshot(run_root=pish_env.root, lib_root=pish_env.lib)
        self._thread = threading.Thread(target=self._watch, name="pish-id-watch", daemon=True)
        self._thread.start()

    # -- which containers are ours --

    def _scan(self) -> None:
        for d in (self.env.root / "containers", self.env.lib / "containers"):
            with contextlib.suppress(OSError):
                found = {n for n in os.listdir(d) if ID_RE.fullmatch(n)}
                with self._lock:
                    self.ids |= found

    def _watch(self) -> None:
        while True:
            self._scan()
            if self._stop.wait(0.005):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _ours(self, entry: str) -> bool:
        with self._lock:
            prefixes = [cid[:11] for cid in self.ids]
        return (entry.startswith(self.scope) or entry == str(BRIDGE_PATH)
                or any(p in entry for p in prefixes))

    # -- comparing --

    def leftovers(self, after: HostSnapshot | None = None) -> list[str]:
        """What differs from the snapshot and is this test's doing, one line per entry."""
        self._scan()
        after = after or self.before.retake()
        out = []
        for name in _FIELDS:
            old, new = collections.Counter(getattr(self.before, name)), collections.Counter(getattr(after, name))
            for how, items in (("left behind", new - old), ("gone", old - new)):
                for item in sorted(items.elements()):
                    if name in _ALWAYS_OURS or self._ours(item):
                        out.append(f"  {name}: {how}  {item}")
        return out

    def assert_clean(self, timeout: float = 5.0) -> None:
        """Fail unless the host is back to the snapshot; wait up to ``timeout`` s for asynchronous teardown
        (a netns the kernel frees late, a lazily unmounted overlay). A safety net, not a timing assertion."""
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, "the host changed:\n" + "\n".join(left)


def clean_up(pish_env: Any, check: LeakCheck) -> None:
    """After a failed test: remove its containers and a bridge it left, so the host is left as found."""
    env = {**os.environ, **pish_env.env}
    for cid in sorted(check.ids):
        if (pish_env.root / "containers" / cid).exists():
            subprocess.run([*pish_command(), "rm", "-f", cid], check=False, env=env, capture_output=True, timeout=60)
    subprocess.run([*pish_command(), "gc"], check=False, env=env, capture_output=True, timeout=60)
    if BRIDGE_PATH.exists() and not check.bridge_existed:
        subprocess.run(["ip", "link", "del", TEST_BRIDGE], check=False, capture_output=True, timeout=30)


@pytest.fixture(name="leaks")
def leaks_fixture(pish_env: Any) -> Iterator[LeakCheck]:
    """A LeakCheck for this test; call ``leaks.assert_clean()`` at its end. If the test failed half-way,
    whatever it left is removed afterwards (after the check, so nothing is hidden from it)."""
    check = LeakCheck(pish_env)
    try:
        yield check
    finally:
        check.close()
        clean_up(pish_env, check)


def wait_running(pish_env: Any, proc: subprocess.Popen[str] | None = None, name: str | None = None,
                 timeout: float = 30) -> dict[str, Any]:
    """The state record of this test's container (named ``name``, or the only one) once it is running.

    ``proc``, the ``pish run`` being waited for, must not end first. ``timeout`` is a safety net only.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in glob.glob(str(pish_env.root / "containers" / "*" / "state.json")):
            with contextlib.suppress(OSError, ValueError):  # removed meanwhile; writes are atomic renames
                record: dict[str, Any] = json.loads(Path(path).read_text())
                if record["status"] == "running" and name in (None, record["name"]):
                    return record
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"pish run ended (exit {proc.returncode}) before its container ran:\n{out}\n{err}")
        time.sleep(0.02)
    pytest.fail(f"no running container {name or ''} after {timeout:g} s")


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


# -- the ways a run ends --------------------------------------------------------------------------------

BRIDGE_ARGS = ("--net", "bridge", "--network", TEST_BRIDGE, "--ip", "10.0.4.9/24")


@pytest.fixture(params=["none", "bridge"])
def net_args(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Every case once with ``--net none`` and once on our test bridge."""
    if request.param == "bridge" and BRIDGE_PATH.exists():
        pytest.fail(f"{TEST_BRIDGE} exists before the test: a previous run left it (ip link del {TEST_BRIDGE})")
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
    proc = subprocess.Popen([*pish_command(), "run", *net_args, "--stop-timeout", "1", str(busybox_tar),
                             "sleep", "100"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_running(pish_env, proc)
        assert leaks.ids
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
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
    proc = subprocess.Popen([*pish_command(), "run", *BRIDGE_ARGS, str(busybox_tar), "sleep", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while stage not in stages.read_text().split() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines()[-1] == "pish: interrupted by SIGTERM during set-up; cleaned up", err
    no_traceback(err)
    assert not BRIDGE_PATH.exists()
    leaks.assert_clean()
