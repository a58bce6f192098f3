"""Many containers at once on one bridge: 20 ``pish run -d`` started together all reach running with unique
names and their own addresses; 20 ``pish rm -f`` together leave nothing (the bridge included).

The runs race for the bridge (the first creates it, the rest join: a users file under an flock), for
the names lock, and for cgroup parents; the removals race for the last-one-out deletion of the bridge.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import pish_command
from helpers.hostsnap import diff, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

BRIDGE = "pisht3"  # the one bridge this test run may use (other runs on this machine use others)
SUBNET = "10.0.5"
N = 20

# -- the leak check ----------------------------------------------------------------------------------
#
# The conftest's `no_leaks` compares the whole host, but other test runs on this machine start containers
# and mount things at the same time. `leaks` takes the same snapshot (tests/helpers/hostsnap.py) and
# judges only what this test can have made: entries naming one of its containers (pish/<id>,
# pv<id[:11]>), under its tmp_path (PISH_ROOT, PISH_LIB, the overlay mounts), or the pisht3 bridge; and
# all of its container records and layers. A thread collects the ids from PISH_ROOT and PISH_LIB: pish
# writes a record before it acquires anything and keeps it until all is released, so none is missed.

BRIDGE_PATH = Path("/sys/class/net") / BRIDGE
ID_RE = re.compile(r"[0-9a-f]{64}")


class Leaks:
    def __init__(self, pish_env: Any) -> None:
        self.env = pish_env
        self.ids: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.bridge_existed = BRIDGE_PATH.exists()
        self.before = snapshot(run_root=pish_env.root, lib_root=pish_env.lib)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def scan(self) -> None:
        for d in (self.env.root / "containers", self.env.lib / "containers"):
            with contextlib.suppress(OSError), self._lock:
                self.ids.update(n for n in os.listdir(d) if ID_RE.fullmatch(n))

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.scan()

    def leftovers(self) -> list[str]:
        """hostsnap's diff against the first snapshot, only the lines about what this test made."""
        self.scan()
        with self._lock:
            marks = [str(self.env.root.parent) + "/", str(BRIDGE_PATH), *(cid[:11] for cid in self.ids)]
        return [line for line in diff(self.before, self.before.retake()).splitlines()
                if line.split(":")[0].strip() in ("containers", "layers") or any(m in line for m in marks)]

    def assert_clean(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` s for asynchronous teardown (a safety net, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, "the host changed:\n" + "\n".join(left)

    def clean_up(self) -> None:
        """After a failure: remove what this test left, so the next one starts from a clean host."""
        env = {**os.environ, **self.env.env}
        with self._lock:
            ids = sorted(self.ids)
        for cid in ids:
            if (self.env.root / "containers" / cid).exists():
                subprocess.run([*pish_command(), "rm", "-f", cid], env=env, capture_output=True, check=False,
                               timeout=60)
        subprocess.run([*pish_command(), "gc"], env=env, capture_output=True, check=False, timeout=60)
        if BRIDGE_PATH.exists() and not self.bridge_existed:
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False, timeout=30)


@pytest.fixture
def leaks(pish_env: Any) -> Iterator[Leaks]:
    """Fail the test if it leaves anything of its own on the host; clean up after it either way."""
    check = Leaks(pish_env)
    try:
        yield check
        check.assert_clean()
    finally:
        check._stop.set()
        check._thread.join()
        if check.leftovers():
            check.clean_up()


# -- the test ----------------------------------------------------------------------------------------


def start_all(argvs: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command at once (Popen all, then wait for all); return their results in order."""
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True, env=env) for argv in argvs]
    results = []
    for argv, proc in zip(argvs, procs):
        try:
            out, err = proc.communicate(timeout=120)  # a safety net against a hang, not a timing check
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return results


def test_twenty_runs_then_twenty_removals_at_once(pish, pish_env, busybox_tar, leaks):
    if BRIDGE_PATH.exists():
        pytest.skip(f"bridge {BRIDGE} exists already: another test run is using it")
    env = {**os.environ, **pish_env.env}
    pish("run", "--net", "none", str(busybox_tar), "true", check=True)  # unpack the image once, up front

    addresses = [f"{SUBNET}.{10 + i}/24" for i in range(N)]
    runs = start_all([[*pish_command(), "run", "-d", "--log-level", "warning", "--net", "bridge",
                       "--network", BRIDGE, "--ip", ip, str(busybox_tar), "sleep", "100"] for ip in addresses],
                     env)
    failed = [f"--ip {ip}: exit {r.returncode}: {r.stderr.strip()}" for ip, r in zip(addresses, runs)
              if r.returncode != 0]
    assert not failed, "some runs failed:\n" + "\n".join(failed)
    ids = [r.stdout.strip() for r in runs]
    assert all(ID_RE.fullmatch(cid) for cid in ids), ids
    assert len(set(ids)) == N

    rows = {row["id"]: row for row in json.loads(pish("ps", "--json", check=True).stdout)}
    assert set(rows) == set(ids)
    assert all(row["status"] == "running" for row in rows.values())
    names = [rows[cid]["name"] for cid in ids]
    assert len(set(names)) == N, f"names not unique: {sorted(names)}"
    assert [rows[cid]["address"] for cid in ids] == addresses
    ports = sorted(os.listdir(BRIDGE_PATH / "brif"))  # every container's veth is in the one bridge
    assert ports == sorted(f"pv{cid[:11]}" for cid in ids)
    assert len(json.loads((pish_env.root / "networks" / f"{BRIDGE}.json").read_text())["users"]) == N
    # each one is up and has its own address inside
    probe = pish("exec", ids[7], "ip", "-4", "-o", "addr", "show", "eth0", check=True).stdout
    assert f"inet {addresses[7]}" in probe

    removals = start_all([[*pish_command(), "rm", "-f", cid] for cid in ids], env)
    failed = [f"rm -f {cid[:12]}: exit {r.returncode}: {r.stderr.strip()}" for cid, r in zip(ids, removals)
              if r.returncode != 0]
    assert not failed, "some removals failed:\n" + "\n".join(failed)
    assert json.loads(pish("ps", "-a", "--json", check=True).stdout) == []
    assert not (pish_env.root / "networks" / f"{BRIDGE}.json").exists()
    # `leaks` checks the rest: no cgroup, veth, mount, record or layer of any of them, and no bridge
