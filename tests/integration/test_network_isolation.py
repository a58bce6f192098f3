"""User networks as docker's and podman's behave: names and aliases, isolation between networks,
``network connect`` / ``disconnect`` of a running container, IPv6 (issue 14).

What these tests may touch, so they can run beside other test runs on this machine: the networks
``pishi14a`` / ``pishi14b`` / ``pishi14c`` (10.0.141.0/24, 10.0.142.0/24, 10.0.143.0/24 and
fd14:14:14::/64) and host port 18614. Every address reached is in a namespace pish made for the test,
or the host's loopback; no packet leaves the machine. Each test checks, with the ``leaks`` fixture, that
no link, netns, mount, cgroup or record of its containers is left, and that pish's nftables tables hold
nothing of its networks afterwards.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.leaks import LeakCheck

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip (iproute2)"),
]

NET_A, SUBNET_A = "pishi14a", "10.0.141.0/24"
NET_B, SUBNET_B = "pishi14b", "10.0.142.0/24"
NET_6, SUBNET_6, SUBNET6_6 = "pishi14c", "10.0.143.0/24", "fd14:14:14::/64"
HOST_PORT = 18614
OURS = (NET_A, NET_B, NET_6, "10.0.141.", "10.0.142.", "10.0.143.", "fd14:14:14:", str(HOST_PORT))
Pish = Callable[..., "subprocess.CompletedProcess[str]"]


def nft_ours() -> list[str]:
    """The elements of pish's two nftables tables that name this module's networks, bridges or port."""
    from pish_drivers.network import nat, nat6

    found = []
    for table in (nat.TABLE, nat6.TABLE):
        for name, elems in nat.contents(table).items():
            found += [f"{table} {name} {e}" for e in elems if any(mark in str(e) for mark in OURS)]
    return found


@pytest.fixture
def nets(pish: Pish, leaks: LeakCheck) -> Iterator[LeakCheck]:
    """Skip if another run uses our bridges; afterwards, remove what is left and check that nothing of
    this test stays on the host (links, netns, mounts, nftables elements)."""
    for name in (NET_A, NET_B, NET_6):
        if Path("/sys/class/net", name).exists():
            pytest.skip(f"bridge {name} exists already: another test run is using it")
        leaks.add_bridge(name)
    if nft_ours():
        pytest.skip(f"pish's nftables tables hold elements of ours from an earlier run: {nft_ours()}")
    yield leaks
    ps = pish("ps", "-a", "-q").stdout.split()
    if ps:
        pish("rm", "-f", *ps, timeout=120)
    pish("gc")
    for name in (NET_A, NET_B, NET_6):
        pish("network", "rm", name)
    assert not ps, f"containers left: {ps}"
    leaks.assert_clean()
    assert nft_ours() == []


def on(net: str) -> tuple[str, ...]:
    return ("--network", net)


def sh(pish: Pish, name: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``sh -c script`` in the running container ``name``."""
    return pish("exec", name, "sh", "-c", script, timeout=30)


def address_of(pish: Pish, net: str, name: str, key: str = "address") -> str:
    members = json.loads(pish("network", "inspect", net, check=True).stdout)[0]["containers"]
    return str(next(m[key] for m in members.values() if m["name"] == name)).split("/")[0]


# -- 1. names and aliases ----------------------------------------------------------------------------


def test_containers_reach_each_other_by_name_and_alias(pish: Pish, busybox_tar: Path, nets: LeakCheck) -> None:
    img = str(busybox_tar)
    pish("network", "create", NET_A, "--subnet", SUBNET_A, check=True)
    pish("run", "-d", "--name", "web", "--network-alias", "db", "--network-alias", "db.internal", *on(NET_A),
         img, "httpd", "-f", "-p", "80", "-h", "/www", check=True)
    client = pish("run", "--name", "client", *on(NET_A), img, "sh", "-c",
                  "ping -c1 -W2 web && ping -c1 -W2 db && wget -qO- http://db.internal/ && cat /etc/hosts",
                  check=True, timeout=60)
    assert client.stdout.count("1 packets received") == 2, client.stdout
    assert "hello from pish" in client.stdout
    assert "10.0.141.2\tweb db db.internal\n" in client.stdout
    members = json.loads(pish("network", "inspect", NET_A, check=True).stdout)[0]["containers"]
    assert [m["aliases"] for m in members.values()] == [["db", "db.internal"]]

    bad = pish("run", "--network-alias", "no_such/alias", *on(NET_A), img, "true")
    assert bad.returncode == 125 and bad.stderr.strip().splitlines() == [
        "pish: invalid --network-alias 'no_such/alias': use a host name, e.g. db or db.internal"]
    pish("rm", "-f", "web", check=True)


# -- 2. isolation, connect, disconnect ---------------------------------------------------------------


def reaches(pish: Pish, name: str, address: str) -> bool:
    return sh(pish, name, f"ping -c1 -W1 {address}").returncode == 0


def test_networks_are_isolated_until_connect(pish: Pish, busybox_tar: Path, nets: LeakCheck) -> None:
    img = str(busybox_tar)
    pish("network", "create", NET_A, "--subnet", SUBNET_A, check=True)
    pish("network", "create", NET_B, "--subnet", SUBNET_B, check=True)
    pish("run", "-d", "--name", "a1", *on(NET_A), img, "sleep", "300", check=True)
    pish("run", "-d", "--name", "b1", *on(NET_B), img, "httpd", "-f", "-p", "80", "-h", "/www", check=True)
    b1 = address_of(pish, NET_B, "b1")

    # Two networks: a1's packets to b1 reach the host (a1's gateway) and are not forwarded.
    assert not reaches(pish, "a1", b1)
    assert not reaches(pish, "b1", address_of(pish, NET_A, "a1"))
    assert sum(NET_A in e and NET_B in e for e in nft_ours()) == 2  # isolated: both ways

    # connect: a1 gets eth1 on B, an address of B's, a line in B's hosts file; both ways work.
    pish("network", "connect", "--alias", "front", NET_B, "a1", check=True)
    a1_on_b = address_of(pish, NET_B, "a1")
    assert a1_on_b.startswith("10.0.142.")
    eth1 = sh(pish, "a1", "ip -4 addr show dev eth1").stdout
    assert f"{a1_on_b}/24" in eth1
    assert reaches(pish, "a1", b1)
    assert "hello from pish" in sh(pish, "a1", f"wget -qO- http://{b1}/").stdout
    assert sh(pish, "b1", "ping -c1 -W2 a1 && ping -c1 -W2 front").returncode == 0  # by name, from B
    assert sh(pish, "a1", "ping -c1 -W2 b1").returncode == 0  # and B's names in a1's /etc/hosts
    assert "default via 10.0.141.1 dev eth0" in sh(pish, "a1", "ip route").stdout  # A keeps the route

    refused = pish("network", "connect", NET_B, "a1")
    assert refused.returncode == 125 and "already connected to network pishi14b" in refused.stderr
    refused = pish("network", "disconnect", NET_A, "a1")
    assert refused.returncode == 125 and "is the one container a1 was started on" in refused.stderr

    # disconnect: eth1, its address and its hosts line go; the networks are apart again.
    pish("network", "disconnect", NET_B, "a1", check=True)
    assert sh(pish, "a1", "ip link show dev eth1").returncode != 0
    assert "a1" not in sh(pish, "b1", "cat /etc/hosts").stdout
    assert "b1" not in sh(pish, "a1", "cat /etc/hosts").stdout
    assert not reaches(pish, "a1", b1)
    assert [m["name"] for m in json.loads(pish("network", "inspect", NET_B).stdout)[0]["containers"].values()] \
        == ["b1"]

    # Connected again and removed while connected: rm releases the second network too.
    pish("network", "connect", NET_B, "a1", check=True)
    assert reaches(pish, "a1", b1)
    pish("rm", "-f", "a1", check=True)
    assert [m["name"] for m in json.loads(pish("network", "inspect", NET_B).stdout)[0]["containers"].values()] \
        == ["b1"]
    pish("rm", "-f", "b1", check=True)
    assert Path("/sys/class/net", NET_A).exists() and Path("/sys/class/net", NET_B).exists()  # until network rm
    assert sum(NET_A in e and NET_B in e for e in nft_ours()) == 2  # and still apart
    pish("network", "rm", NET_A, NET_B, check=True)
    assert not Path("/sys/class/net", NET_A).exists() and not Path("/sys/class/net", NET_B).exists()
    nets.assert_clean()
    assert nft_ours() == []


def test_gc_releases_a_connection_of_a_killed_supervisor(pish: Pish, busybox_tar: Path, pish_env: Any,
                                                         nets: LeakCheck) -> None:
    img = str(busybox_tar)
    pish("network", "create", NET_A, "--subnet", SUBNET_A, check=True)
    pish("network", "create", NET_B, "--subnet", SUBNET_B, check=True)
    cid = pish("run", "-d", "--name", "a1", *on(NET_A), img, "sleep", "300", check=True).stdout.strip()
    pish("network", "connect", NET_B, "a1", check=True)
    assert Path("/sys/class/net", NET_B).exists()
    record = json.loads((pish_env.root / "containers" / cid / "state.json").read_text())
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(record["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path("/proc", str(record["pid"])).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path("/sys/class/net", NET_B).exists()  # nobody released anything yet

    assert cid[:12] in pish("gc", check=True).stdout
    for net in (NET_A, NET_B):
        assert json.loads(pish("network", "inspect", net, check=True).stdout)[0]["containers"] == {}
        assert not any(cid[:11] in name for name in os.listdir("/sys/class/net"))  # no veth of its left
    pish("network", "rm", NET_A, NET_B, check=True)
    nets.assert_clean()


def test_connect_refusals_are_one_line(pish: Pish, busybox_tar: Path, nets: LeakCheck) -> None:
    img = str(busybox_tar)
    pish("network", "create", NET_A, "--subnet", SUBNET_A, check=True)
    pish("run", "-d", "--name", "lone", "--net", "none", img, "sleep", "300", check=True)
    for args, needle in (
        (("connect", NET_A, "lone"), "is not on a bridge network"),
        (("connect", "pishi14nope", "lone"), "network pishi14nope not found"),
        (("connect", NET_A, "nobody"), "no such container"),
        (("disconnect", NET_A, "lone"), "is not on a bridge network"),
        (("connect", "--alias", "a b", NET_A, "lone"), "invalid --network-alias"),
    ):
        proc = pish("network", *args)
        lines = [line for line in proc.stderr.splitlines() if not line.startswith("[")]
        assert proc.returncode == 125 and len(lines) == 1 and needle in lines[0], (args, proc.stderr)
    pish("rm", "-f", "lone", check=True)


# -- 3. IPv6 -----------------------------------------------------------------------------------------


def host_has_ipv6_loopback() -> bool:
    out = subprocess.run(["ip", "-6", "addr", "show", "lo"], capture_output=True, text=True, check=False).stdout
    return "::1/128" in out


def http_get_v6(port: int) -> str:
    with socket.create_connection(("::1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(not host_has_ipv6_loopback(), reason="the host has no IPv6 on lo (ip -6 addr show lo)")
def test_ipv6_network_ping6_and_a_port_on_loopback6(pish: Pish, busybox_tar: Path, nets: LeakCheck) -> None:
    img = str(busybox_tar)
    pish("network", "create", "--ipv6", "--subnet-v6", SUBNET6_6, "--subnet", SUBNET_6, NET_6, check=True)
    described = json.loads(pish("network", "inspect", NET_6, check=True).stdout)[0]
    assert (described["subnet6"], described["gateway6"]) == (SUBNET6_6, "fd14:14:14::1")
    pish("run", "-d", "--name", "srv", "-p", f"{HOST_PORT}:80", *on(NET_6), img,
         "httpd", "-f", "-p", "80", "-h", "/www", check=True)
    pish("run", "-d", "--name", "peer", *on(NET_6), img, "sleep", "300", check=True)
    srv6 = address_of(pish, NET_6, "srv", "address6")
    assert srv6 == "fd14:14:14::2"

    # The address is usable at once (no DAD), with a default route via the bridge.
    shown = sh(pish, "srv", "ip -6 addr show dev eth0; ip -6 route").stdout
    global_line = [line for line in shown.splitlines() if "fd14:14:14::2/64" in line]
    assert len(global_line) == 1 and "tentative" not in global_line[0], shown
    assert "default via fd14:14:14::1 dev eth0" in shown
    ping = sh(pish, "peer", f"ping -6 -c1 -W2 {srv6} && ping -6 -c1 -W2 srv")
    assert ping.returncode == 0 and ping.stdout.count("1 packets received") == 2, ping.stdout + ping.stderr

    # The published port answers on the host's [::1] (a proxy thread of srv's supervisor), and on 127.0.0.1.
    assert "hello from pish" in http_get_v6(HOST_PORT)
    with socket.create_connection(("127.0.0.1", HOST_PORT), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert b"hello from pish" in conn.recv(65536) + conn.recv(65536)
    assert any(f"{HOST_PORT}" in e and "fd14:14:14::2" in e for e in nft_ours())

    pish("rm", "-f", "srv", "peer", check=True)
    with pytest.raises(OSError):
        http_get_v6(HOST_PORT)  # the proxy went with its container
    pish("network", "rm", NET_6, check=True)  # and the bridge, its gateways and NAT66 with the network
    nets.assert_clean()
    assert nft_ours() == []


def test_ipv6_bad_input_is_one_line(pish: Pish) -> None:
    for args, needle in (
        (("--subnet-v6", "fd14::/129", "pishi14x"), "invalid --subnet-v6"),
        (("--subnet-v6", "ff02::/64", "pishi14x"), "not a unicast subnet"),
        (("--subnet-v6", "fd14:14:14::5/64", "pishi14x"), "invalid --subnet-v6"),
    ):
        proc = pish("network", "create", *args)
        assert proc.returncode == 125 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
    assert pish("network", "ls", "-q").stdout == ""


# -- the tables themselves, in a network namespace of the test's own ----------------------------------

IN_NETNS = r'''
import json, sys
from pish_drivers.network import libnft, nat, nat6

# A table as a pish older than isolation made it: no "isolated" set, no drop rule.
old = "\n".join(line for line in nat._RULESET.splitlines() if "isolated" not in line)
libnft.run(old)
nat.add_network(__import__("ipaddress").ip_network("10.9.1.0/24"), "x1")
nat.add_network(__import__("ipaddress").ip_network("10.9.2.0/24"), "x2")
forward = [o["rule"] for o in libnft.list_json("chain ip pish forward") if "rule" in o]
nat6.add_network(__import__("ipaddress").ip_network("fd09:1::/64"), "x1")
nat6.add_network(__import__("ipaddress").ip_network("fd09:2::/64"), "x2")
out = {"v4": nat.contents()["isolated"], "v6": nat.contents(nat6.TABLE)["isolated"],
       "first_rule": json.dumps(forward[0]["expr"]),
       "forwarding6": open(nat6.FORWARDING).read().strip()}
nat.remove_network("10.9.1.0/24", "x1")
out["after_one"] = nat.contents()["isolated"]
nat.remove_network("10.9.2.0/24", "x2")
nat6.remove_network("fd09:1::/64", "x1")
nat6.remove_network("fd09:2::/64", "x2")
out["left"] = [nat.contents(), nat.contents(nat6.TABLE)]
print(json.dumps(out))
'''


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_isolation_is_added_to_an_older_table_and_both_tables_go_with_their_last_network() -> None:
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", IN_NETNS], capture_output=True, text=True,
                          timeout=60, check=False, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert sorted(map(tuple, out["v4"])) == [("x1", "x2"), ("x2", "x1")]
    assert sorted(map(tuple, out["v6"])) == [("x1", "x2"), ("x2", "x1")]
    assert '"@isolated"' in out["first_rule"] and '{"drop": null}' in out["first_rule"]  # head of forward
    assert out["forwarding6"] == "1"  # in the test's namespace only
    assert out["after_one"] == []
    assert out["left"] == [{}, {}]


ADOPTED = r'''
import ipaddress, json, os, subprocess, sys
from pathlib import Path
from pyroute2 import IPRoute
from pish_core import paths
from pish_drivers.network import bridge, networks
from pish_drivers.network.netlink import Netlink

# A bridge of the host's (not pish's) that an --ipv6 network is named after: pish adds its gateways.
subprocess.run(["ip", "link", "add", "x6", "type", "bridge"], check=True)
cid = "c" * 64
paths.container_dir(cid).mkdir(parents=True)
net = networks.NetworkDef(name="x6", subnet=ipaddress.ip_network("10.9.6.0/24"), implicit=True,  # not kept
                          gateway=ipaddress.ip_address("10.9.6.1"),
                          subnet6=ipaddress.ip_network("fd09:6::/64"), gateway6=ipaddress.ip_address("fd09:6::1"))
gateway = ipaddress.IPv4Interface("10.9.6.1/24")

def addresses():
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname="x6")[0]
        return sorted(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index)
                      if not a.get_attr("IFA_ADDRESS").startswith("fe80"))

with Netlink() as nl:
    bridge._join_bridge(nl, net, gateway, cid)
joined = addresses()
bridge._leave_bridge("x6", cid, gateway, "fd09:6::/64")
print(json.dumps({"joined": joined, "left": addresses()}))
'''


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_the_last_container_out_takes_its_ipv6_gateway_off_a_bridge_pish_did_not_make(tmp_path: Path) -> None:
    """The IPv6 gateway pish adds to a host bridge went nowhere when the last container left (the IPv4 one
    was taken off): an address leaked on the host's bridge."""
    env = {**os.environ, "PISH_ROOT": str(tmp_path / "root"), "PISH_LIB": str(tmp_path / "lib")}
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", ADOPTED], capture_output=True, text=True,
                          timeout=60, check=False, cwd=Path(__file__).parents[2], env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["joined"] == ["10.9.6.1", "fd09:6::1"]
    assert out["left"] == []  # as the bridge was found
