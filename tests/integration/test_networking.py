"""Networks with real containers: names, NAT, published ports, IPAM at scale, bad input, gc.

What these tests may touch, so they can run beside other test runs on this machine: the networks
``pisht4a``/``pisht4b``/``pishp88`` (10.0.6.0/24, 10.0.7.0/24, 10.0.88.0/24), one test of the default ``pish0`` (10.88.0.0/16), and
an "upstream" network namespace the test makes itself, reached through a veth from the host. The
upstream takes the first of the documentation ranges TEST-NET-1/2/3 (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24) that no route of the host uses: on a VM whose own uplink is in TEST-NET-1 (as here), a
second 192.0.2.0/24 would shadow the real gateway. Every address a test reaches is in a namespace the
test or pish created; no packet leaves the machine.

The test tools (``ip``, ``busybox`` on the host) only look and build the test's own fixtures; pish
itself runs no command.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("busybox") is None,
                       reason="needs ip (iproute2) and busybox (busybox-static)"),
]

NET_A, SUBNET_A = "pisht4a", "10.0.6.0/24"
NET_B, SUBNET_B = "pisht4b", "10.0.7.0/24"
UPSTREAM_NS = f"pisht4up{os.getpid() % 100000}"
UPSTREAM_VETH = "pisht4u0"
HOST_PORT = 18080
NET_P, SUBNET_P = "pishp88", "10.0.88.0/24"  # -p IP:..., -p CPORT
LOOPBACK_PORT, NEAR_PORT = 18181, 18182
Pish = Callable[..., "subprocess.CompletedProcess[str]"]


# -- helpers -----------------------------------------------------------------------------------------


def link_exists(ifname: str) -> bool:
    return Path("/sys/class/net", ifname).exists()


def nft_contents() -> dict[str, list[Any]]:
    from pish_drivers.network import nat

    return nat.contents()


def one_line_refusal(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """pish's way to refuse: exit 125 and one line on stderr naming the problem."""
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("[")]
    assert proc.returncode == 125, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("pish: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def netns_exec(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", UPSTREAM_NS, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def our_nft() -> list[Any]:
    """The elements of pish's nftables table that belong to this module (others run tests meanwhile)."""
    found = nft_contents()
    return sorted((str(e) for name, elems in found.items() for e in elems
                   if any(mark in str(e) for mark in ("pisht4", "pishp", "10.0.6.", "10.0.7.", "10.0.88.",
                                                      str(HOST_PORT), str(LOOPBACK_PORT), str(NEAR_PORT)))))


def snapshot(pish: Pish) -> tuple[str, str, list[Any]]:
    """What a refused command must leave unchanged: networks, containers, our nftables elements."""
    return pish("network", "ls").stdout, pish("ps", "-a", "-q").stdout, our_nft()


def ours_left(subnets: tuple[str, ...] = (SUBNET_A, SUBNET_B, SUBNET_P)) -> list[str]:
    """Links, nftables elements and published test ports of this module still on the host."""
    left = [n for n in os.listdir("/sys/class/net") if n.startswith(("pisht4", "pishp")) and n != UPSTREAM_VETH]
    found = nft_contents()
    left += [f"nft subnet {s}" for s in found.get("subnets", []) if s in subnets]
    left += [f"nft port {p}" for p in found.get("tcp_ports", []) if p[0] == HOST_PORT]
    left += [f"nft port {p}" for p in found.get("tcp_ports", []) + found.get("tcp_addr_ports", [])
             if p[1][0].startswith("10.0.88.")]
    return left


@pytest.fixture
def clean(pish: Pish, pish_env: Any) -> Iterator[None]:
    """Refuse to start over leftovers; after the test, remove whatever it left and fail if it left any."""
    if ours_left():
        pytest.skip(f"left over from an earlier run: {ours_left()}")
    yield
    ps = pish("ps", "-a", "-q").stdout.split()
    if ps:
        pish("rm", "-f", *ps, timeout=300)
    pish("gc")
    made = pish("network", "ls", "-q").stdout.split()
    if made:  # their bridges stay up until `network rm`
        pish("network", "rm", *made)
    left = ours_left()
    for name in [n for n in left if not n.startswith("nft")]:
        subprocess.run(["ip", "link", "del", name], check=False)
    assert not ps, f"containers left running: {ps}"
    assert not left, f"left behind on the host: {left}"


@pytest.fixture
def upstream() -> Iterator[tuple[str, str]]:
    """A namespace standing for the world outside: (its address, the host's address on the link to it)."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                            check=True).stdout
    used = [ipaddress.ip_network(r.split()[0], strict=False) for r in routes.splitlines()
            if r and r.split()[0][0].isdigit()]
    subnet = next((s for s in map(ipaddress.ip_network, ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
                   if not any(s.overlaps(u) for u in used)), None)
    if subnet is None:
        pytest.skip("every TEST-NET range is routed on this host")
    far, near = f"{subnet[1]}", f"{subnet[254]}"

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

    run("ip", "netns", "add", UPSTREAM_NS)
    try:
        run("ip", "link", "add", UPSTREAM_VETH, "type", "veth", "peer", "name", "eth0", "netns", UPSTREAM_NS)
        run("ip", "addr", "add", f"{near}/24", "dev", UPSTREAM_VETH)
        run("ip", "link", "set", UPSTREAM_VETH, "up")
        run("ip", "-n", UPSTREAM_NS, "addr", "add", f"{far}/24", "dev", "eth0")
        run("ip", "-n", UPSTREAM_NS, "link", "set", "eth0", "up")
        run("ip", "-n", UPSTREAM_NS, "link", "set", "lo", "up")
        yield far, near
    finally:
        subprocess.run(["ip", "link", "del", UPSTREAM_VETH], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", UPSTREAM_NS], check=False, capture_output=True)


# -- names -------------------------------------------------------------------------------------------


def test_two_containers_reach_each_other_by_name(pish: Pish, busybox_tar: Path, clean: None) -> None:
    img = str(busybox_tar)
    pish("network", "create", NET_A, "--subnet", SUBNET_A, check=True)
    on_a = ("--net", "bridge", "--network", NET_A)
    pish("run", "-d", "--name", "web", *on_a, img, "httpd", "-f", "-p", "80", "-h", "/www", check=True)

    client = pish("run", "--name", "client", "--dns", "192.0.2.53", *on_a, img, "sh", "-c",
                  "ping -c1 -W2 web && wget -qO- http://web/ && cat /etc/hosts /etc/resolv.conf "
                  "&& ip route", check=True)
    assert "1 packets received" in client.stdout
    assert "hello from pish" in client.stdout
    assert "10.0.6.2\tweb\n" in client.stdout and "10.0.6.3\tclient\n" in client.stdout
    assert "nameserver 192.0.2.53\n" in client.stdout
    assert "default via 10.0.6.1 dev eth0" in client.stdout
    assert "[INFO] network: creating bridge" not in client.stderr  # web made it; client only joined

    # The hosts file is rewritten in place: web, running all along, sees a newcomer and sees it go.
    pish("run", "-d", "--name", "late", *on_a, img, "sleep", "100", check=True)
    assert "late" in pish("exec", "web", "cat", "/etc/hosts", check=True).stdout
    assert pish("exec", "web", "ping", "-c1", "-W2", "late", check=True).returncode == 0
    pish("rm", "-f", "late", check=True)
    hosts_now = pish("exec", "web", "cat", "/etc/hosts", check=True).stdout
    assert "late" not in hosts_now and "client" not in hosts_now and "10.0.6.2\tweb" in hosts_now

    inspect = json.loads(pish("network", "inspect", NET_A, check=True).stdout)[0]
    assert [c["name"] for c in inspect["containers"].values()] == ["web"]
    pish("rm", "-f", "web", check=True)
    assert link_exists(NET_A)  # a network of `network create` keeps its bridge, as docker's do ...
    assert json.loads(pish("network", "inspect", NET_A, check=True).stdout)[0]["containers"] == {}
    pish("network", "rm", NET_A, check=True)
    assert not link_exists(NET_A)  # ... until `network rm`
    assert pish("network", "ls", "-q").stdout == ""


def test_network_create_makes_the_bridge_and_rm_removes_it(pish: Pish, busybox_tar: Path, clean: None) -> None:
    """As docker's: the bridge, its gateway and NAT exist from `network create` to `network rm`, so the first
    container only plugs in (it used to make them, and the last one out removed them)."""
    created = pish("network", "create", "--log-level", "info", NET_A, "--subnet", SUBNET_A, check=True)
    assert created.stdout == f"{NET_A}\n"
    assert f"creating bridge {NET_A} with gateway 10.0.6.1/24" in created.stderr
    assert link_exists(NET_A) and ours_left() == [NET_A, f"nft subnet {SUBNET_A}"]
    run = pish("run", "--net", "bridge", "--network", NET_A, str(busybox_tar), "ip", "-o", "-4", "addr", "show",
               "eth0", check=True)
    assert "10.0.6.2/24" in run.stdout
    assert "creating bridge" not in run.stderr and "removing bridge" not in run.stderr
    assert ours_left() == [NET_A, f"nft subnet {SUBNET_A}"]  # still up with nobody on it
    removed = pish("network", "rm", "--log-level", "info", NET_A, check=True)
    assert f"removing bridge {NET_A}" in removed.stderr
    assert ours_left() == [] and pish("network", "ls", "-q").stdout == ""


def test_the_bridge_keeps_its_mac_when_the_container_with_the_lowest_one_leaves(pish: Pish, busybox_tar: Path,
                                                                                clean: None) -> None:
    """A bridge without a MAC of its own takes the lowest of its ports': when that container left, the
    gateway's MAC changed under every other container's ARP entry (their traffic out went nowhere until the
    entry went stale). It has one now, from the gateway's address, as docker gives its bridges one."""
    img = str(busybox_tar)
    pish("network", "create", NET_A, "--subnet", SUBNET_A, check=True)
    on_a = ("--net", "bridge", "--network", NET_A)
    low = pish("run", "-d", *on_a, img, "sleep", "100", check=True).stdout.strip()  # 10.0.6.2: 02:42:0a:00:06:02
    pish("run", "-d", "--name", "high", *on_a, img, "sleep", "100", check=True)
    mac = Path("/sys/class/net", NET_A, "address").read_text().strip()
    assert mac == "02:42:0a:00:06:01"  # the gateway's, 10.0.6.1
    seen = pish("exec", "high", "sh", "-c", "ping -c1 -W2 10.0.6.1 >/dev/null; ip neigh show 10.0.6.1", check=True)
    assert mac in seen.stdout
    pish("rm", "-f", low, check=True)
    assert Path("/sys/class/net", NET_A, "address").read_text().strip() == mac
    pish("rm", "-f", "high", check=True)
    pish("network", "rm", NET_A, check=True)


def test_network_create_over_a_link_that_is_no_bridge_is_refused(pish: Pish, clean: None) -> None:
    """A link of the host with the network's name: refused in one line, and the definition is not kept
    (joining such a network would have plugged containers into somebody's veth)."""
    subprocess.run(["ip", "link", "add", NET_A, "type", "veth", "peer", "name", f"{NET_A}p"], check=True)
    try:
        refused = pish("network", "create", NET_A, "--subnet", SUBNET_A)
        one_line_refusal(refused, f"{NET_A} exists on the host but is not a bridge")
        assert pish("network", "ls", "-q").stdout == ""
        assert SUBNET_A not in nft_contents().get("subnets", [])
    finally:
        subprocess.run(["ip", "link", "del", NET_A], check=False)


# -- outbound NAT ------------------------------------------------------------------------------------


UPSTREAM_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000)); s.listen(1); s.settimeout(20)
print("ready", flush=True)
c, peer = s.accept(); c.recv(4096)
c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 9\\r\\n\\r\\nupstream\\n"); c.close()
print(peer[0], flush=True)
"""


def test_outbound_nat_shows_the_hosts_address(pish: Pish, busybox_tar: Path, clean: None,
                                              upstream: tuple[str, str]) -> None:
    far, near = upstream
    created = pish("network", "create", "--log-level", "info", NET_A, "--subnet", SUBNET_A, check=True)
    server = subprocess.Popen(["ip", "netns", "exec", UPSTREAM_NS, sys.executable, "-c", UPSTREAM_SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        run = pish("run", "--net", "bridge", "--network", NET_A, str(busybox_tar),
                   "wget", "-qO-", f"http://{far}:9000/", timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout == "upstream\n"
        seen = server.communicate(timeout=20)[0].strip()
    finally:
        server.kill()
        server.wait()
    assert seen == near, f"the upstream saw {seen}, not the host's address {near}"
    assert "[INFO] network: masquerading 10.0.6.0/24" in created.stderr  # made with the network, as docker does


# -- published ports ---------------------------------------------------------------------------------


def test_published_port_from_the_host_and_from_another_namespace(
    pish: Pish, busybox_tar: Path, clean: None, upstream: tuple[str, str],
) -> None:
    _, near = upstream
    img = str(busybox_tar)
    pish("network", "create", NET_A, "--subnet", SUBNET_A, check=True)
    cid = pish("run", "-d", "--net", "bridge", "--network", NET_A, "-p", f"{HOST_PORT}:80", img,
               "httpd", "-f", "-p", "80", "-h", "/www", check=True).stdout.strip()
    assert [HOST_PORT, ["10.0.6.2", 80]] in nft_contents()["tcp_ports"]

    assert "hello from pish" in fetch(f"http://127.0.0.1:{HOST_PORT}/")  # the host's loopback
    assert "hello from pish" in fetch(f"http://{near}:{HOST_PORT}/")  # the host's own address
    other = netns_exec("busybox", "wget", "-qO-", f"http://{near}:{HOST_PORT}/")  # "another host"
    assert other.returncode == 0 and "hello from pish" in other.stdout, other.stderr

    # The same host port again: refused at once, nothing changed.
    before = snapshot(pish)
    again = pish("run", "-d", "--net", "bridge", "--network", NET_A, "-p", f"{HOST_PORT}:8080", img, "true")
    one_line_refusal(again, f"host port {HOST_PORT}/tcp is already published")
    assert snapshot(pish) == before

    pish("rm", "-f", cid, check=True)
    with pytest.raises(OSError):
        fetch(f"http://127.0.0.1:{HOST_PORT}/")
    assert ours_left() == [NET_A, f"nft subnet {SUBNET_A}"]  # the network's, until `network rm`
    pish("network", "rm", NET_A, check=True)
    assert ours_left() == []


def test_a_port_published_on_one_address_only(pish: Pish, busybox_tar: Path, clean: None,
                                              upstream: tuple[str, str]) -> None:
    """``-p 127.0.0.1:PORT:80``: the host's loopback reaches it; the host's other address does not, from
    the host or from another namespace, while ``-p NEAR:PORT2:80`` on that address does."""
    _, near = upstream
    img = str(busybox_tar)
    pish("network", "create", NET_P, "--subnet", SUBNET_P, check=True)
    cid = pish("run", "-d", "--net", "bridge", "--network", NET_P, "-p", f"127.0.0.1:{LOOPBACK_PORT}:80",
               "-p", f"{near}:{NEAR_PORT}:80", img, "httpd", "-f", "-p", "80", "-h", "/www",
               check=True).stdout.strip()
    published = nft_contents()["tcp_addr_ports"]
    assert [["127.0.0.1", LOOPBACK_PORT], ["10.0.88.2", 80]] in published
    assert [[near, NEAR_PORT], ["10.0.88.2", 80]] in published

    assert "hello from pish" in fetch(f"http://127.0.0.1:{LOOPBACK_PORT}/")
    with pytest.raises(OSError):
        fetch(f"http://{near}:{LOOPBACK_PORT}/")  # the host's other address, from the host
    other = netns_exec("busybox", "wget", "-qO-", f"http://{near}:{LOOPBACK_PORT}/")
    assert other.returncode != 0 and "hello from pish" not in other.stdout  # ... and from another netns
    control = netns_exec("busybox", "wget", "-qO-", f"http://{near}:{NEAR_PORT}/")
    assert control.returncode == 0 and "hello from pish" in control.stdout, control.stderr
    with pytest.raises(OSError):
        fetch(f"http://127.0.0.1:{NEAR_PORT}/")  # published on near only

    ports = json.loads(pish("inspect", cid, check=True).stdout)[0]["ports"]
    assert ports == [f"127.0.0.1:{LOOPBACK_PORT}->80/tcp", f"{near}:{NEAR_PORT}->80/tcp"]
    assert f"127.0.0.1:{LOOPBACK_PORT}->80/tcp" in pish("ps", check=True).stdout

    # The port on every address clashes with the one on 127.0.0.1: refused, nothing changed.
    before = snapshot(pish)
    again = pish("run", "-d", "--net", "bridge", "--network", NET_P, "-p", f"{LOOPBACK_PORT}:80", img, "true")
    one_line_refusal(again, f"host port {LOOPBACK_PORT}/tcp is already published")
    assert snapshot(pish) == before

    pish("rm", "-f", cid, check=True)
    with pytest.raises(OSError):
        fetch(f"http://127.0.0.1:{LOOPBACK_PORT}/")
    pish("network", "rm", NET_P, check=True)
    assert ours_left() == []


def test_a_port_pish_picks(pish: Pish, busybox_tar: Path, pish_env: Any, clean: None) -> None:
    """``-p 80``: a host port from the kernel's ephemeral range, shown by inspect and ps, serving the
    container; journaled, so ``pish gc`` releases it after a SIGKILL."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    img = str(busybox_tar)
    pish("network", "create", NET_P, "--subnet", SUBNET_P, check=True)
    cid = pish("run", "-d", "--net", "bridge", "--network", NET_P, "-p", "80", "-p", "127.0.0.1::80", img,
               "httpd", "-f", "-p", "80", "-h", "/www", check=True).stdout.strip()
    every, loopback = json.loads(pish("inspect", cid, check=True).stdout)[0]["ports"]
    assert every.startswith("0.0.0.0:") and every.endswith("->80/tcp")
    assert loopback.startswith("127.0.0.1:") and loopback.endswith("->80/tcp")
    port = int(every.split(":")[1].split("-")[0])
    port2 = int(loopback.split(":")[1].split("-")[0])
    assert low <= port <= high and low <= port2 <= high and port != port2
    assert [port, ["10.0.88.2", 80]] in nft_contents()["tcp_ports"]
    row = next(r for r in json.loads(pish("ps", "--json", check=True).stdout) if r["id"] == cid)
    assert row["ports"] == [every, loopback]
    assert "hello from pish" in fetch(f"http://127.0.0.1:{port}/")
    assert "hello from pish" in fetch(f"http://127.0.0.1:{port2}/")

    record = json.loads((pish_env.root / "containers" / cid / "state.json").read_text())
    assert sorted(r["host_port"] for r in record["resources"] if r["what"] == "port") == sorted([port, port2])
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(record["pid"], signal.SIGKILL)
    time.sleep(0.2)
    assert cid[:12] in pish("gc", check=True).stdout
    assert ours_left() == [NET_P, f"nft subnet {SUBNET_P}"]  # no port left: only the network's own
    with pytest.raises(OSError):
        fetch(f"http://127.0.0.1:{port}/")
    pish("network", "rm", NET_P, check=True)
    assert ours_left() == []


def test_bad_publish_is_refused_in_one_line_and_changes_nothing(pish: Pish, busybox_tar: Path,
                                                                clean: None) -> None:
    img = str(busybox_tar)
    pish("network", "create", NET_P, "--subnet", SUBNET_P, check=True)
    on_p = ("--net", "bridge", "--network", NET_P)
    cases = [
        ("1.2.3.4:8080:80", "1.2.3.4 is not an IPv4 address of this host"),
        (":80", "invalid -p ':80'"),
        ("70000:80", "invalid -p '70000:80': ports go from 1 to 65535"),
    ]
    for value, message in cases:
        before = snapshot(pish)
        one_line_refusal(pish("run", "-d", *on_p, "-p", value, img, "true"), message)
        assert snapshot(pish) == before, value
        assert ours_left() == [NET_P, f"nft subnet {SUBNET_P}"]  # the network's own, nothing more
    pish("network", "rm", NET_P, check=True)


# -- IPAM at scale -----------------------------------------------------------------------------------


def test_a_hundred_containers_get_a_hundred_addresses(pish: Pish, busybox_tar: Path, clean: None) -> None:
    """100 real containers (``pish run -d``, 8 at a time, so IPAM is raced for real) on one network."""
    pish("network", "create", NET_B, "--subnet", SUBNET_B, check=True)

    def start(i: int) -> str:
        return pish("run", "-d", "--name", f"many{i}", "--net", "bridge", "--network", NET_B,
                    str(busybox_tar), "sleep", "300", check=True, timeout=120).stdout.strip()

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(start, range(100)))
    rows = json.loads(pish("ps", "--json", check=True).stdout)
    addresses = {r["address"] for r in rows if r["name"].startswith("many")}
    assert len(addresses) == 100
    assert {ipaddress.ip_interface(a).ip for a in addresses} <= set(ipaddress.ip_network(SUBNET_B).hosts())
    assert len(json.loads(pish("network", "inspect", NET_B, check=True).stdout)[0]["containers"]) == 100

    pish("rm", "-f", *ids, check=True, timeout=600)
    assert json.loads(pish("network", "inspect", NET_B, check=True).stdout)[0]["containers"] == {}
    assert link_exists(NET_B)  # until `network rm`
    pish("network", "rm", NET_B, check=True)
    assert not link_exists(NET_B)


# -- bad input ---------------------------------------------------------------------------------------


def test_bad_input_is_refused_in_one_line_and_changes_nothing(pish: Pish, busybox_tar: Path,
                                                              clean: None) -> None:
    img = str(busybox_tar)
    pish("network", "create", NET_A, "--subnet", SUBNET_A, check=True)
    cid = pish("run", "-d", "--name", "holder", "--net", "bridge", "--network", NET_A,
               "--ip", "10.0.6.9/24", img, "sleep", "100", check=True).stdout.strip()
    cases = [
        (("network", "create", NET_B, "--subnet", "10.0.6.128/25"), "overlaps network pisht4a"),
        (("network", "create", NET_B, "--subnet", SUBNET_B, "--gateway", "10.0.8.1"),
         "gateway 10.0.8.1 is not a usable address of subnet 10.0.7.0/24"),
        (("network", "create", NET_A, "--subnet", SUBNET_B), "network pisht4a already exists"),
        (("run", "--net", "bridge", "--network", NET_A, "--ip", "10.0.6.9/24", img, "true"),
         "--ip 10.0.6.9 is already in use on network pisht4a"),
        (("run", "--net", "bridge", "--network", NET_A, "--ip", "10.0.9.9/24", img, "true"),
         "--ip 10.0.9.9 is outside the pool of network pisht4a"),
        (("run", "--net", "bridge", "--network", "pisht4nope", img, "true"), "network pisht4nope not found"),
        (("network", "rm", NET_A), "network pisht4a is in use by container(s) holder"),
        (("run", "-p", "80/sctp", "--net", "bridge", "--network", NET_A, img, "true"), "invalid -p '80/sctp'"),
    ]
    for args, message in cases:
        before = snapshot(pish)
        one_line_refusal(pish(*args), message)
        assert snapshot(pish) == before, args
    pish("rm", "-f", cid, check=True)
    pish("network", "rm", NET_A, check=True)


# -- the default network, and gc ---------------------------------------------------------------------


def test_the_default_network_is_made_on_first_use(pish: Pish, busybox_tar: Path, clean: None) -> None:
    if link_exists("pish0"):
        pytest.skip("pish0 is in use on this host")
    run = pish("run", "--net", "bridge", str(busybox_tar), "ip", "-o", "-4", "addr", "show", "eth0", check=True)
    assert "10.88.0.2/16" in run.stdout
    assert "creating bridge pish0 with gateway 10.88.0.1/16" in run.stderr
    assert not link_exists("pish0")
    assert "10.88.0.0/16" in pish("network", "ls", check=True).stdout
    pish("network", "rm", "pish0", check=True)
    assert "10.88.0.0/16" not in nft_contents().get("subnets", [])


def test_network_create_of_the_default_network_keeps_its_bridge_coming_and_going(pish: Pish, busybox_tar: Path,
                                                                                  clean: None) -> None:
    """`network create pish0` (a subnet of one's own for the default network): no bridge yet; as ever, its
    first container makes it and its last removes it (it was made and then never removed)."""
    if link_exists("pish0"):
        pytest.skip("pish0 is in use on this host")
    pish("network", "create", "pish0", "--subnet", "10.0.66.0/24", check=True)
    assert not link_exists("pish0")
    run = pish("run", "--net", "bridge", str(busybox_tar), "ip", "-o", "-4", "addr", "show", "eth0", check=True)
    assert "10.0.66.2/24" in run.stdout and "creating bridge pish0" in run.stderr
    assert not link_exists("pish0")
    pish("network", "rm", "pish0", check=True)
    assert "10.0.66.0/24" not in nft_contents().get("subnets", [])


def test_gc_releases_what_a_killed_supervisor_held(pish: Pish, busybox_tar: Path, pish_env: Any,
                                                   clean: None) -> None:
    pish("network", "create", NET_A, "--subnet", SUBNET_A, check=True)
    cid = pish("run", "-d", "--net", "bridge", "--network", NET_A, "-p", f"{HOST_PORT}:80",
               str(busybox_tar), "sleep", "100", check=True).stdout.strip()
    record = json.loads((pish_env.root / "containers" / cid / "state.json").read_text())
    assert [r["what"] for r in record["resources"] if r["kind"] == "network"] == ["attachment", "port"]
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(record["pid"], signal.SIGKILL)  # it would die with its supervisor (PDEATHSIG) anyway
    time.sleep(0.2)
    assert link_exists(NET_A) and ours_left()  # still held: nobody released anything

    assert cid[:12] in pish("gc", check=True).stdout
    assert ours_left() == [NET_A, f"nft subnet {SUBNET_A}"]  # the network's own: no veth, no port
    assert json.loads(pish("network", "inspect", NET_A, check=True).stdout)[0]["containers"] == {}
    pish("network", "rm", NET_A, check=True)
    assert ours_left() == []
