"""Many containers at once on one bridge: 20 ``pish run -d`` started together all reach running with unique
names and their own addresses; 20 ``pish rm -f`` together leave nothing (the bridge included).

The runs race for the bridge (the first creates it, the rest join: a users file under an flock), for
the names lock, and for cgroup parents; the removals race for the last-one-out deletion of the bridge.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers import pish_command
from helpers.containers import ID_RE, ps_json
from helpers.leaks import LIFECYCLE_BRIDGE as BRIDGE
from helpers.leaks import bridge_path, skip_if_bridge_in_use

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(bridge=BRIDGE, at_teardown=True)]

BRIDGE_PATH = bridge_path(BRIDGE)
SUBNET = "10.0.5"
N = 20

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
    skip_if_bridge_in_use(BRIDGE)
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

    rows = ps_json(pish)
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
