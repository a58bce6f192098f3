"""Containers on a bridge reach each other; the bridge lives exactly as long as its last user.

Only the bridge ``pisht2`` is used (other test runs on this machine use pisht3, pisht4...; never pish0),
and the only addresses contacted are those of this test's containers, inside network namespaces pish made:
the bridge itself has no address on the host.
"""
from __future__ import annotations

import json

import pytest
from helpers.containers import ID_RE
from helpers.leaks import RUN_BRIDGE, bridge_path, fail_if_bridge_exists

pytestmark = [pytest.mark.integration, pytest.mark.leak_check(bridge=RUN_BRIDGE)]

BRIDGE_PATH = bridge_path(RUN_BRIDGE)
ON_BRIDGE = ("--net", "bridge", "--network", RUN_BRIDGE)


def bridge_ports() -> set[str]:
    """The interfaces plugged into our bridge, as the kernel lists them."""
    return {p.name for p in (BRIDGE_PATH / "brif").iterdir()}


def ping(pish, name: str, address: str):
    """busybox ping from inside container ``name`` (through ``pish exec``): one packet, two seconds."""
    return pish("exec", name, "ping", "-c1", "-W2", address)


def test_two_containers_ping_each_other_and_share_the_bridge(pish, busybox_tar, leaks):
    fail_if_bridge_exists(RUN_BRIDGE)
    image = str(busybox_tar)
    a = pish("run", "-d", "--name", "net-a", *ON_BRIDGE, "--ip", "10.0.4.5/24", image, "sleep", "100",
             check=True).stdout.strip()
    assert ID_RE.fullmatch(a)
    assert BRIDGE_PATH.is_dir()  # the first one in made it
    b = pish("run", "-d", "--name", "net-b", *ON_BRIDGE, "--ip", "10.0.4.6/24", image, "sleep", "100",
             check=True).stdout.strip()
    assert bridge_ports() == {f"pv{a[:11]}", f"pv{b[:11]}"}
    rows = {r["name"]: r for r in json.loads(pish("ps", "--json", check=True).stdout)}
    assert (rows["net-a"]["address"], rows["net-b"]["address"]) == ("10.0.4.5/24", "10.0.4.6/24")

    # each sees its address on eth0, and they reach each other across the bridge
    addr = pish("exec", "net-a", "ip", "-o", "-4", "addr", "show", "dev", "eth0", check=True).stdout
    assert "inet 10.0.4.5/24" in addr
    for name, peer in (("net-a", "10.0.4.6"), ("net-b", "10.0.4.5")):
        proc = ping(pish, name, peer)
        assert proc.returncode == 0, f"{name} -> {peer}:\n{proc.stdout}{proc.stderr}"
        assert "1 packets received" in proc.stdout, proc.stdout

    # a third one, started while those two run, uses the bridge and leaves without tearing it down
    third = pish("run", "--name", "net-c", *ON_BRIDGE, "--ip", "10.0.4.7/24", image,
                 "ping", "-c1", "-W2", "10.0.4.5")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "removing bridge" not in third.stderr
    assert BRIDGE_PATH.is_dir()
    assert bridge_ports() == {f"pv{a[:11]}", f"pv{b[:11]}"}  # its own veth is gone, theirs are not
    assert ping(pish, "net-a", "10.0.4.6").returncode == 0  # and the first two still talk

    # the second to last out leaves it too; the last one out removes it
    pish("rm", "-f", "net-a", check=True)
    assert BRIDGE_PATH.is_dir()
    assert bridge_ports() == {f"pv{b[:11]}"}
    pish("rm", "-f", "net-b", check=True)
    assert not BRIDGE_PATH.exists()
    leaks.assert_clean()


def test_the_last_foreground_run_removes_the_bridge(pish, busybox_tar, leaks):
    fail_if_bridge_exists(RUN_BRIDGE)
    proc = pish("run", *ON_BRIDGE, "--ip", "10.0.4.8/24", str(busybox_tar), "sh", "-c",
                "test -d /sys/class/net/eth0 && echo eth0-here")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "eth0-here\n"
    assert f"[INFO] network: creating bridge {RUN_BRIDGE}" in proc.stderr
    assert f"[INFO] network: removing bridge {RUN_BRIDGE}" in proc.stderr
    assert not BRIDGE_PATH.exists()
    leaks.assert_clean()


def test_net_none_has_only_lo(pish, busybox_tar):
    proc = pish("run", "--log-level", "warning", "--net", "none", str(busybox_tar), "sh", "-c",
                "ls /sys/class/net; ip -o link show lo; ping -c1 -W2 127.0.0.1 >/dev/null && echo lo-works")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "lo"  # the only interface
    assert "UP" in lines[1].split("<", 1)[1].split(">", 1)[0].split(","), lines[1]  # brought up by pish
    assert lines[2] == "lo-works"
    assert len(lines) == 3, proc.stdout


def test_net_none_is_the_default(pish, busybox_tar):
    out = pish("run", "--log-level", "warning", str(busybox_tar), "ls", "/sys/class/net", check=True).stdout
    assert out.split() == ["lo"]
