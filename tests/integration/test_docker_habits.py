"""The commands docker users reach for after run/ps/exec/stop (issue 14): pause/unpause, wait, port, rename,
top, update, and ``--network NET`` alone. Real containers from the busybox image; bad input is one line,
exit 125 (docker's), with nothing changed; the ``leaks`` check ends every test."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from typing import Any

import pytest
from helpers import pish_command
from helpers.containers import ps_json, refused, run_detached
from helpers.leaks import LIFECYCLE_BRIDGE, skip_if_bridge_in_use

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(bridge=LIFECYCLE_BRIDGE, at_teardown=True)]

SUBNET = "10.0.7"


def sleeper(pish: Any, image: Any, name: str, *options: str) -> str:
    return run_detached(pish, "--net", "none", "--name", name, *options, str(image), "sleep", "100")






def state_of(pish: Any, cid: str) -> str:
    return str(ps_json(pish, "-a")[cid]["status"])


# -- pause / unpause --------------------------------------------------------------------------------


def test_pause_and_unpause(pish, busybox_tar, cleanup, leaks):
    cleanup.append("hab-pause")
    cid = run_detached(pish, "--net", "none", "--name", "hab-pause", str(busybox_tar),
                       "sh", "-c", "while true; do date +%s%N > /tick; sleep 0.05; done")
    assert pish("pause", "hab-pause", check=True).stdout == "hab-pause\n"
    assert state_of(pish, cid) == "paused"
    assert "paused" in pish("ps", check=True).stdout  # listed without -a, as docker's ps lists it
    assert [r["status"] for r in json.loads(pish("ps", "--format", "json", check=True).stdout)] == ["paused"]
    tick = pish_env_file(cid, "/tick")
    time.sleep(0.3)
    assert pish_env_file(cid, "/tick") == tick, "a paused container went on writing"
    refused(pish, "pause", "hab-pause", match=r"hab-pause is already paused")
    refused(pish, "exec", "hab-pause", "true", match=r"hab-pause is paused: unpause it")
    refused(pish, "kill", "hab-pause", match=r"hab-pause is paused: unpause it")
    assert pish("unpause", "hab-pause", check=True).stdout == "hab-pause\n"
    assert state_of(pish, cid) == "running"
    refused(pish, "unpause", "hab-pause", match=r"hab-pause is not paused")
    assert pish("exec", "hab-pause", "echo", "on", check=True).stdout == "on\n"
    pish("pause", "hab-pause", check=True)
    pish("stop", "-t", "1", "hab-pause", check=True)  # a paused container still stops
    assert state_of(pish, cid).startswith("exited")
    refused(pish, "pause", "hab-pause", match=r"hab-pause is not running")
    refused(pish, "unpause", "hab-pause", match=r"hab-pause is not running")
    refused(pish, "pause", "no-such-ctr", match=r"no such container: no-such-ctr")


def pish_env_file(cid: str, path: str) -> str:
    """A file of a running container, read through its first process's root."""
    record = json.loads((_root() / "containers" / cid / "state.json").read_text())
    with open(f"/proc/{record['pid']}/root{path}") as f:
        return f.read()


def _root() -> Any:
    from pathlib import Path

    return Path(os.environ["PISH_ROOT"])


def test_rm_force_of_a_paused_container(pish, busybox_tar, cleanup, leaks):
    cleanup.append("hab-pause-rm")
    sleeper(pish, busybox_tar, "hab-pause-rm")
    pish("pause", "hab-pause-rm", check=True)
    refused(pish, "rm", "hab-pause-rm", match=r"hab-pause-rm is paused")
    pish("rm", "-f", "hab-pause-rm", check=True)
    assert ps_json(pish, "-a") == {}


# -- wait --------------------------------------------------------------------------------------------


def test_wait_prints_exit_codes(pish, busybox_tar, cleanup, leaks):
    cleanup += ["hab-w1", "hab-w2"]
    run_detached(pish, "--net", "none", "--name", "hab-w1", str(busybox_tar), "sh", "-c", "sleep 0.5; exit 3")
    run_detached(pish, "--net", "none", "--name", "hab-w2", str(busybox_tar), "true")
    out = pish("wait", "hab-w1", "hab-w2", check=True)
    assert out.stdout == "3\n0\n"
    assert pish("wait", "hab-w1", check=True).stdout == "3\n"  # an exited container: at once
    proc = pish("wait", "hab-w2", "no-such-ctr")
    assert (proc.returncode, proc.stdout, proc.stderr) == (125, "0\n", "pish: no such container: no-such-ctr\n")


def test_wait_for_a_killed_container(pish, busybox_tar, cleanup, leaks):
    cleanup.append("hab-wk")
    sleeper(pish, busybox_tar, "hab-wk")
    with subprocess.Popen([*pish_command(), "wait", "hab-wk"], stdout=subprocess.PIPE, text=True) as waiter:
        time.sleep(0.3)
        assert waiter.poll() is None
        pish("kill", "hab-wk", check=True)
        assert waiter.communicate(timeout=30)[0] == "137\n"


# -- rename --------------------------------------------------------------------------------------------


def test_rename(pish, busybox_tar, cleanup, leaks):
    cleanup += ["hab-old", "hab-new", "hab-other"]
    cid = sleeper(pish, busybox_tar, "hab-old")
    sleeper(pish, busybox_tar, "hab-other")
    pish("rename", "hab-old", "hab-new", check=True)
    assert ps_json(pish)[cid]["name"] == "hab-new"
    refused(pish, "exec", "hab-old", "true", match=r"no such container: hab-old")
    assert pish("exec", "hab-new", "echo", "ok", check=True).stdout == "ok\n"
    refused(pish, "rename", "hab-new", "hab-other", match=r"name 'hab-other' is already in use")
    refused(pish, "rename", "hab-new", "a/b", match=r"container name")
    refused(pish, "rename", "no-such-ctr", "x", match=r"no such container: no-such-ctr")
    pish("stop", "-t", "1", "hab-new", check=True)  # the supervisor's last write keeps the new name
    assert ps_json(pish, "-a")[cid]["name"] == "hab-new"
    pish("rename", cid[:12], "hab-old", check=True)  # a stopped one too, as docker
    assert ps_json(pish, "-a")[cid]["name"] == "hab-old"


# -- top -----------------------------------------------------------------------------------------------


def test_top(pish, busybox_tar, cleanup, leaks):
    cleanup.append("hab-top")
    run_detached(pish, "--net", "none", "--name", "hab-top", str(busybox_tar),
                 "sh", "-c", "sleep 101 & sleep 102")
    deadline = time.monotonic() + 20
    while len(lines := pish("top", "hab-top", check=True).stdout.splitlines()) < 3 or any("sh -c" in line for line in lines):
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    assert lines[0].split()[:2] == ["UID", "PID"]
    commands = sorted(line.split(None, 7)[7] for line in lines[1:])
    assert commands == ["sleep 101", "sleep 102"], lines  # sh execs its last command
    lines = pish("top", "hab-top", "-o", "pid,comm", check=True).stdout.splitlines()
    assert sorted(line.split()[1] for line in lines[1:]) == ["sleep", "sleep"]
    refused(pish, "top", "hab-top", "-o", "comm", match=r"no PID column")
    refused(pish, "top", "no-such-ctr", match=r"no such container")
    pish("stop", "-t", "1", "hab-top", check=True)
    refused(pish, "top", "hab-top", match=r"hab-top is not running")


# -- port, and --network NET alone ---------------------------------------------------------------------


def test_network_alone_joins_it_and_port_lists_what_it_publishes(pish, busybox_tar, cleanup, leaks):
    skip_if_bridge_in_use(LIFECYCLE_BRIDGE)
    cleanup += ["hab-net", "hab-none"]
    pish("network", "create", LIFECYCLE_BRIDGE, "--subnet", f"{SUBNET}.0/24", check=True)
    try:
        cid = run_detached(pish, "--network", LIFECYCLE_BRIDGE, "--name", "hab-net", "-p", "127.0.0.1:18714:80",
                           "-p", "53/udp", str(busybox_tar), "sleep", "100")
        row = ps_json(pish)[cid]
        assert row["address"] and row["address"].startswith(f"{SUBNET}."), row
        addrs = pish("exec", "hab-net", "ip", "-4", "addr", check=True).stdout
        assert f"inet {SUBNET}." in addrs
        lines = pish("port", "hab-net", check=True).stdout.splitlines()
        assert lines[0] == "80/tcp -> 127.0.0.1:18714"
        assert re.fullmatch(r"53/udp -> 0\.0\.0\.0:\d+", lines[1]), lines
        assert pish("port", "hab-net", "80", check=True).stdout == "127.0.0.1:18714\n"
        assert pish("port", "hab-net", "80/tcp", check=True).stdout == "127.0.0.1:18714\n"
        refused(pish, "port", "hab-net", "81", match=r"no public port '81/tcp' published for hab-net")
        refused(pish, "port", "hab-net", "eighty", match=r"invalid port 'eighty'")
        refused(pish, "port", "no-such-ctr", match=r"no such container")

        # --network none: no interface but lo
        run_detached(pish, "--network", "none", "--name", "hab-none", str(busybox_tar), "sleep", "100")
        links = pish("exec", "hab-none", "ip", "-o", "link", check=True).stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        assert pish("port", "hab-none", check=True).stdout == ""
        pish("rm", "-f", "hab-net", "hab-none", check=True)
    finally:
        pish("rm", "-f", "hab-net", "hab-none")
        pish("network", "rm", LIFECYCLE_BRIDGE)


def test_network_host_and_unknown(pish, busybox_tar, leaks):
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    out = pish("run", "--network", "host", str(busybox_tar), "ip", "-o", "link", check=True).stdout
    assert len(out.splitlines()) == len(host_links.splitlines())
    proc = pish("run", "--network", "no-such-net", str(busybox_tar), "true")
    assert proc.returncode == 125 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "no-such-net" in proc.stderr


# -- update --------------------------------------------------------------------------------------------


def cgroup_file(pid: int, v1_controller: str, v1_name: str, v2_name: str) -> str:
    """A cgroup file of process ``pid``: ``v1_name`` in its ``v1_controller`` hierarchy, else ``v2_name``."""
    from pathlib import Path

    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if v1_controller in controllers.split(","):
            return (Path("/sys/fs/cgroup") / v1_controller / path.lstrip("/") / v1_name).read_text().strip()
    path = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
    return (Path("/sys/fs/cgroup") / path.lstrip("/") / v2_name).read_text().strip()


def test_update_live(pish, busybox_tar, cleanup, leaks):
    cleanup.append("hab-upd")
    cid = sleeper(pish, busybox_tar, "hab-upd", "--memory", "64m", "--pids-limit", "20")
    pid = json.loads((_root() / "containers" / cid / "state.json").read_text())["pid"]
    assert pish("update", "--memory", "96m", "--cpus", "0.5", "--pids-limit", "30", "hab-upd",
                check=True).stdout == "hab-upd\n"
    assert cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max") == str(96 << 20)
    assert cgroup_file(pid, "pids", "pids.max", "pids.max") == "30"
    quota = cgroup_file(pid, "cpu", "cpu.cfs_quota_us", "cpu.max").split()[0]
    assert quota == "50000"
    pish("update", "--pids-limit", "40", cid[:12], check=True)  # one flag leaves the others alone
    assert cgroup_file(pid, "pids", "pids.max", "pids.max") == "40"
    assert cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max") == str(96 << 20)

    refused(pish, "update", "hab-upd", match=r"at least one of --memory")
    refused(pish, "update", "--memory", "1", "hab-upd", match=r"invalid --memory '1'")
    refused(pish, "update", "--cpus", "lots", "hab-upd", match=r"invalid --cpus 'lots'")
    refused(pish, "update", "--pids-limit", "0", "hab-upd", match=r"invalid --pids-limit '0'")
    refused(pish, "update", "--memory", "64m", "no-such-ctr", match=r"no such container")
    assert cgroup_file(pid, "pids", "pids.max", "pids.max") == "40"
    pish("stop", "-t", "1", "hab-upd", check=True)
    refused(pish, "update", "--memory", "64m", "hab-upd", match=r"hab-upd is not running")


# -- stats -------------------------------------------------------------------------------------------


def test_stats_no_stream(pish, busybox_tar, cleanup, leaks):
    cleanup += ["hab-hog", "hab-spin"]
    cid = run_detached(pish, "--net", "none", "--name", "hab-hog", "--memory", "64m", str(busybox_tar), "sh", "-c",
                       "dd if=/dev/zero of=/dev/shm/hog bs=1M count=24 2>/dev/null; touch /done; sleep 100")
    spin = run_detached(pish, "--net", "none", "--name", "hab-spin", str(busybox_tar), "sh", "-c",
                        "while :; do :; done")
    pid = json.loads((_root() / "containers" / cid / "state.json").read_text())["pid"]
    deadline = time.monotonic() + 20
    while not os.path.exists(f"/proc/{pid}/root/done"):
        assert time.monotonic() < deadline, "the memory hog did not finish writing"
        time.sleep(0.05)
    rows = [json.loads(line) for line in pish("stats", "--no-stream", "--format", "json", check=True).stdout.splitlines()]
    by_name = {row["Name"]: row for row in rows}
    assert set(by_name) == {"hab-hog", "hab-spin"}
    hog = by_name["hab-hog"]
    current = int(cgroup_file(pid, "memory", "memory.usage_in_bytes", "memory.current"))
    assert abs(hog["memory_bytes"] - current) <= current / 10, (hog, current)
    assert hog["memory_bytes"] >= 24 << 20
    assert hog["memory_limit"] == 64 << 20 and hog["MemUsage"].endswith(" / 64MiB")
    assert hog["pids"] == 1 and hog["PIDs"] == "1"
    assert by_name["hab-spin"]["cpu_percent"] > 5, by_name["hab-spin"]  # one busy CPU: ~100 % on an idle host
    assert by_name["hab-spin"]["memory_limit"] > 64 << 20  # no limit: the host's memory

    table = pish("stats", "--no-stream", "hab-hog", check=True).stdout.splitlines()
    assert table[0].split("  ")[0] == "CONTAINER ID" and "MEM USAGE / LIMIT" in table[0]
    assert len(table) == 2 and table[1].startswith(cid[:12]) and "hab-hog" in table[1]

    refused(pish, "stats", "--no-stream", "no-such-ctr", match=r"no such container: no-such-ctr")
    refused(pish, "stats", "--no-stream", "--format", "xml", match=r"--format")
    pish("stop", "-t", "1", spin, check=True)
    refused(pish, "stats", "--no-stream", "hab-spin", match=r"hab-spin is not running")


# -- /etc/hosts, /etc/hostname, /etc/resolv.conf on every network --------------------------------------


@pytest.mark.parametrize("network", ["none", "host"])
def test_etc_files_without_a_network(pish, busybox_tar, network, leaks):
    script = "cat /etc/hostname; grep -c localhost /etc/hosts; grep -c nameserver /etc/resolv.conf; hostname"
    out = pish("run", "--network", network, "--hostname", "hab-host", str(busybox_tar), "sh", "-c", script,
               check=True).stdout.split()
    assert out[0] == "hab-host" and out[3] == "hab-host"
    if network == "none":
        assert int(out[1]) >= 2  # localhost on both families
        lines = pish("run", "--network", "none", "--hostname", "hab-host", str(busybox_tar), "cat", "/etc/hosts",
                     check=True).stdout.splitlines()
        assert "127.0.0.1\thab-host" in lines
    assert int(out[2]) >= 1
    proc = pish("run", "--network", network, str(busybox_tar), "sh", "-c", "echo x > /etc/hostname")
    assert proc.returncode != 0 and "Read-only" in proc.stderr
