"""The pure logic of issue 14's user networks, without root: IPv6 IPAM, isolation pairs, the names of a
second interface, aliases and IPv6 lines in a network's hosts file, the connections journal."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from pish_core import names, paths
from pish_core.errors import SpecError
from pish_drivers.network import bridge, connections, ipam, nat, networks

Net6, Addr6 = ipaddress.IPv6Network, ipaddress.IPv6Address


@pytest.fixture(autouse=True)
def pish_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PISH_ROOT", str(tmp_path / "run"))
    monkeypatch.setenv("PISH_LIB", str(tmp_path / "lib"))
    monkeypatch.setattr(networks, "host_routes", list)
    monkeypatch.setattr(networks, "host_routes6", list)


def container() -> str:
    cid = names.new_id()
    paths.container_dir(cid).mkdir(parents=True)
    return cid


# -- IPv6 IPAM ---------------------------------------------------------------------------------------


def test_a_generated_subnet_is_a_ula_64_clear_of_the_taken_ones() -> None:
    for _ in range(20):
        subnet = ipam.random_ula([])
        assert subnet.prefixlen == 64 and subnet.subnet_of(Net6("fd00::/8"))
    with pytest.raises(SpecError, match="--subnet-v6"):
        ipam.random_ula([Net6("fd00::/8")])


def test_v6_addresses_go_lowest_first_after_the_gateway() -> None:
    subnet = Net6("fd14:14:14::/64")
    assert ipam.gateway6(subnet) == Addr6("fd14:14:14::1")
    assert ipam.next_free6(subnet, [], "n") == Addr6("fd14:14:14::2")
    assert ipam.next_free6(subnet, [Addr6("fd14:14:14::2"), Addr6("fd14:14:14::4")], "n") == Addr6("fd14:14:14::3")
    small = Net6("fd14::/120")
    taken = [Addr6(int(small.network_address) + i) for i in range(2, 256)]
    with pytest.raises(ipam.PoolExhausted):
        ipam.next_free6(small, taken, "n")


@pytest.mark.parametrize(("text", "needle"), [
    ("fd14::/129", "invalid --subnet-v6"), ("fd14::5/64", "host bits set"), ("10.0.0.0/24", "invalid --subnet-v6"),
    ("fd14::/32", "from /48 to /120"), ("ff02::/64", "not a unicast subnet"), ("fe80::/64", "not a unicast"),
    # ::/64 was taken: its gateway is ::1, the host's loopback, put on a bridge; ::ffff:0:0/96 is IPv4's
    ("::/64", "not a unicast"), ("::ffff:0:0/96", "not a unicast"), ("::a00:0/120", "not a unicast"),
])
def test_bad_v6_subnets_are_refused(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle.replace("/", ".")):
        ipam.parse_subnet6(text)


def test_an_ipv6_network_refuses_an_overlapping_one(monkeypatch: pytest.MonkeyPatch) -> None:
    networks.create("t14a", ipaddress.IPv4Network("10.0.141.0/24"), subnet6=Net6("fd14:14:14::/64"))
    with pytest.raises(SpecError, match="overlaps network t14a"):
        networks.create("t14b", ipaddress.IPv4Network("10.0.142.0/24"), subnet6=Net6("fd14:14:14::/48"))
    monkeypatch.setattr(networks, "host_routes6", lambda: [("eth0", Net6("fd00::/64"))])
    with pytest.raises(SpecError, match="overlaps a route of the host on eth0"):
        networks.create("t14b", ipaddress.IPv4Network("10.0.142.0/24"), subnet6=Net6("fd00::/64"))
    made = networks.create("t14b", ipaddress.IPv4Network("10.0.142.0/24"), ipv6=True)
    assert made.subnet6 is not None and made.gateway6 == made.subnet6.network_address + 1
    assert networks.get("t14b") == made  # the IPv6 part survives the file


# -- names in the hosts file -------------------------------------------------------------------------


def test_aliases_and_v6_addresses_are_in_the_hosts_file() -> None:
    networks.create("t14a", ipaddress.IPv4Network("10.0.141.0/24"), subnet6=Net6("fd14:14:14::/64"))
    web, client = container(), container()
    net, ip = networks.allocate("t14a", web, "web", "web", aliases=("db", "db.internal"))
    networks.allocate("t14a", client, "client", "client")
    assert net.allocations[str(ip)]["address6"] == "fd14:14:14::2"
    text = paths.hosts_file("t14a").read_text()
    assert "10.0.141.2\tweb db db.internal\nfd14:14:14::2\tweb db db.internal\n" in text
    assert "10.0.141.3\tclient\nfd14:14:14::3\tclient\n" in text
    networks.release("t14a", web)
    text = paths.hosts_file("t14a").read_text()
    assert "db" not in text and "client" in text
    assert networks.allocation_of(networks.require("t14a"), client) is not None


def test_a_containers_own_hosts_file_lists_every_network_it_is_on() -> None:
    networks.create("t14a", ipaddress.IPv4Network("10.0.141.0/24"))
    networks.create("t14b", ipaddress.IPv4Network("10.0.142.0/24"))
    a1, a2, b1 = container(), container(), container()
    networks.allocate("t14a", a1, "a1", "a1")
    mount = networks.container_hosts_mount(a1, "t14a")
    networks.allocate("t14b", b1, "b1", "b1")
    networks.container_hosts_mount(b1, "t14b")
    # On one network, a container's /etc/hosts is that network's file: a join writes one file.
    linked = Path(mount.source)
    assert linked.samefile(paths.hosts_file("t14a")) and not networks.has_own_hosts_file(a1)
    networks.allocate("t14a", a2, "a2", "a2")
    assert "10.0.141.3\ta2\n" in linked.read_text() and "b1" not in linked.read_text()

    mounted: list[str] = []  # pish network connect: a1 gets a file of its own first, mounted over the link
    networks.own_hosts_file(a1, lambda new: mounted.append(new.read_text()))
    own = networks.own_hosts_path(a1)
    assert mounted == [own.read_text()] and "10.0.141.3\ta2\n" in mounted[0]
    assert networks.has_own_hosts_file(a1) and linked.samefile(paths.hosts_file("t14a"))  # the link stays
    inode = own.stat().st_ino
    networks.allocate("t14b", a1, "a1", "a1", aliases=("front",), own_hosts=True)  # ... then B's address
    assert "10.0.142.2\tb1\n" in own.read_text() and "10.0.142.3\ta1 front\n" in own.read_text()
    assert "10.0.142.3\ta1 front\n" in paths.etc_hosts(b1).read_text()
    assert "b1" not in paths.hosts_file("t14a").read_text()  # a2 does not see B's names
    networks.allocate("t14a", container(), "a3", "a3")  # a1's own file follows its first network too
    assert "a3" in own.read_text()
    networks.release("t14b", a1)  # disconnect: gone from both, the file rewritten in place
    assert "b1" not in own.read_text() and "a1" not in paths.etc_hosts(b1).read_text()
    assert "a2" in own.read_text() and own.stat().st_ino == inode


# -- isolation and second interfaces -----------------------------------------------------------------


def test_isolation_pairs_keep_a_new_bridge_apart_from_each_other_one_both_ways() -> None:
    assert nat.isolation_pairs("b", ["a", "b", "c"]) == ['"b" . "a"', '"a" . "b"', '"b" . "c"', '"c" . "b"']
    assert nat.isolation_pairs("a", ["a"]) == []
    assert nat._plain({"concat": ["a", "b"]}) == ["a", "b"]


def test_second_interfaces_and_their_host_ends() -> None:
    cid = names.new_id()
    assert bridge._next_ifname(set()) == "eth1" and bridge._next_ifname({"eth1", "eth3"}) == "eth2"
    assert names.veth_host(cid) == "pv" + cid[:11]
    assert names.veth_host(cid, 1) == "pv" + cid[:11] + "1"
    assert len(names.veth_host(cid, 99)) == names.IFNAMSIZ
    with pytest.raises(SpecError, match="at most 99"):
        names.veth_host(cid, 100)


def test_the_connections_journal_releases_newest_first_and_then_closes() -> None:
    cid = container()
    released: list[str] = []

    def release(record: dict[str, Any]) -> None:
        released.append(f"{record['what']}:{record.get('n')}")

    with connections.opened(cid) as conns:
        conns.add("b", "address", n=1, container_ifname="eth1")
        conns.add("b", "bridge", n=1)
        conns.add("c", "address", n=2, container_ifname="eth2")
        assert conns.ifnames() == {"eth1", "eth2"}
    with connections.opened(cid) as conns:  # written through: another process sees it
        assert list(conns.networks) == ["b", "c"]
        conns.release("b", release)
    assert released == ["bridge:1", "address:1"]
    connections.release_all(cid, release)
    assert released[-1] == "address:2"
    with connections.opened(cid) as conns:
        assert conns.closed and conns.networks == {}
    connections.release_all(cid, release)  # idempotent
    assert len(released) == 3
    connections.reopen(cid)  # the container is started again: it may be connected again
    with connections.opened(cid) as conns:
        assert not conns.closed
