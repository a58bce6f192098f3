"""IPAM without root: the address arithmetic (``ipam``) and the locked store of networks (``networks``).

The store tests point PISH_ROOT/PISH_LIB at a temp dir; a "container" there is only its state directory,
which is all the store looks at to tell a live allocation from a stale one.
"""
from __future__ import annotations

import ipaddress
import multiprocessing
import os
from pathlib import Path

import pytest

from pish_core import names, paths
from pish_core.errors import SpecError
from pish_drivers.network import hosts, ipam, networks

Net, Addr = ipaddress.IPv4Network, ipaddress.IPv4Address


# -- ipam: pure arithmetic ---------------------------------------------------------------------------


def test_usable_skips_the_network_and_broadcast_addresses() -> None:
    r = ipam.usable(Net("10.0.6.0/24"))
    assert (Addr(r[0]), Addr(r[-1]), len(r)) == (Addr("10.0.6.1"), Addr("10.0.6.254"), 254)
    assert ipam.default_gateway(Net("10.0.6.0/24")) == Addr("10.0.6.1")


def test_next_free_is_the_lowest_free_and_skips_the_gateway() -> None:
    subnet, gw = Net("10.0.6.0/24"), Addr("10.0.6.1")
    assert ipam.next_free(subnet, gw, [], "n") == Addr("10.0.6.2")
    taken = [Addr("10.0.6.2"), Addr("10.0.6.4")]
    assert ipam.next_free(subnet, gw, taken, "n") == Addr("10.0.6.3")
    assert ipam.next_free(subnet, Addr("10.0.6.2"), [Addr("10.0.6.1")], "n") == Addr("10.0.6.3")


def test_a_hundred_allocations_are_distinct_and_the_pool_runs_out() -> None:
    subnet, gw = Net("10.0.6.0/25"), Addr("10.0.6.1")
    taken: list[Addr] = []
    for _ in range(125):  # 126 usable, one is the gateway
        taken.append(ipam.next_free(subnet, gw, taken, "n"))
    assert len(set(taken)) == 125 and gw not in taken
    with pytest.raises(ipam.PoolExhausted, match="network n has no free address left in 10.0.6.0/25"):
        ipam.next_free(subnet, gw, taken, "n")


@pytest.mark.parametrize(("address", "message"), [
    ("10.0.7.5", "outside the pool"),
    ("10.0.6.0", "outside the pool"),  # the network's own address
    ("10.0.6.255", "outside the pool"),  # broadcast
    ("10.0.6.1", "is the gateway"),
    ("10.0.6.9", "already in use on network n"),
])
def test_check_request_refuses(address: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ipam.check_request(Net("10.0.6.0/24"), Addr("10.0.6.1"), [Addr("10.0.6.9")], Addr(address), "n")


def test_check_gateway_and_parse_subnet() -> None:
    ipam.check_gateway(Net("10.0.6.0/24"), Addr("10.0.6.254"))
    for gw in ("10.0.7.1", "10.0.6.0", "10.0.6.255"):
        with pytest.raises(SpecError, match="is not a usable address of subnet"):
            ipam.check_gateway(Net("10.0.6.0/24"), Addr(gw))
    assert ipam.parse_subnet("10.0.6.0/24") == Net("10.0.6.0/24")
    for bad in ("10.0.6.7/24", "10.0.6.0/31", "nope", "10.0.6.0/33"):
        with pytest.raises(SpecError, match="invalid subnet"):
            ipam.parse_subnet(bad)


def test_overlapping_and_pick_subnet() -> None:
    others = [("a", Net("10.0.6.0/24")), ("b", Net("10.0.8.0/22"))]
    assert ipam.overlapping(Net("10.0.6.128/25"), others) == "a"
    assert ipam.overlapping(Net("10.0.0.0/8"), others) == "a"
    assert ipam.overlapping(Net("10.0.7.0/24"), others) is None
    taken = [Net("10.89.0.0/24"), Net("10.89.1.0/25")]
    assert ipam.pick_subnet(Net("10.89.0.0/16"), 24, taken) == Net("10.89.2.0/24")


# -- networks: the store under a lock ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def pish_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PISH_ROOT", str(tmp_path / "run"))
    monkeypatch.setenv("PISH_LIB", str(tmp_path / "lib"))
    # No host route may get in the way of these subnets, whatever this machine routes.
    monkeypatch.setattr(networks, "host_routes", list)


def container() -> str:
    cid = names.new_id()
    paths.container_dir(cid).mkdir(parents=True)
    return cid


def test_create_refuses_overlaps_bad_gateways_and_taken_names() -> None:
    net = networks.create("t4a", Net("10.0.6.0/24"))
    assert (net.gateway, net.implicit) == (Addr("10.0.6.1"), False)
    with pytest.raises(SpecError, match=r"subnet 10.0.6.0/25 overlaps network t4a \(10.0.6.0/24\)"):
        networks.create("t4b", Net("10.0.6.0/25"))
    with pytest.raises(SpecError, match="gateway 10.0.8.1 is not a usable address"):
        networks.create("t4b", Net("10.0.7.0/24"), Addr("10.0.8.1"))
    with pytest.raises(SpecError, match="network t4a already exists"):
        networks.create("t4a", Net("10.0.9.0/24"))
    with pytest.raises(SpecError, match="invalid network name"):
        networks.create("much-too-long-name", Net("10.0.9.0/24"))
    assert networks.create("t4c").subnet == Net("10.89.0.0/24")  # no --subnet: a free /24 of the pool
    assert [n.name for n in networks.list_all()] == ["t4a", "t4c"]


def test_create_refuses_a_subnet_the_host_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(networks, "host_routes", lambda: [("eth0", Net("10.0.6.0/24"))])
    with pytest.raises(SpecError, match="overlaps a route of the host on eth0"):
        networks.create("t4a", Net("10.0.0.0/16"))


def test_a_hundred_containers_then_the_pool_is_empty() -> None:
    networks.create("t4a", Net("10.0.6.0/24"))
    ids = [container() for _ in range(100)]
    got = [networks.allocate("t4a", cid, f"c{i}", f"c{i}")[1] for i, cid in enumerate(ids)]
    assert len(set(got)) == 100 and got[0] == Addr("10.0.6.2") and got[-1] == Addr("10.0.6.101")
    assert len(networks.require("t4a").allocations) == 100
    hosts_text = paths.hosts_file("t4a").read_text()
    assert "10.0.6.2\tc0\n" in hosts_text and "10.0.6.101\tc99\n" in hosts_text
    for cid in ids:
        assert len(networks.release("t4a", cid)) == 1
        assert networks.release("t4a", cid) == []  # idempotent
    assert networks.require("t4a").allocations == {}
    assert not paths.hosts_file("t4a").exists()


def test_released_addresses_are_reused_lowest_first_and_requests_honoured() -> None:
    networks.create("t4a", Net("10.0.6.0/24"))
    a, b, c = container(), container(), container()
    assert networks.allocate("t4a", a, "a", "a")[1] == Addr("10.0.6.2")
    assert networks.allocate("t4a", b, "b", "b", Addr("10.0.6.50"))[1] == Addr("10.0.6.50")
    with pytest.raises(SpecError, match="already in use"):
        networks.allocate("t4a", c, "c", "c", Addr("10.0.6.50"))
    networks.release("t4a", a)
    assert networks.allocate("t4a", c, "c", "c")[1] == Addr("10.0.6.2")
    assert networks.allocate("t4a", c, "c", "c")[1] == Addr("10.0.6.2")  # asked twice: same answer


def test_stale_allocations_are_freed_and_rm_is_refused_while_in_use() -> None:
    networks.create("t4a", Net("10.0.6.0/24"))
    live, dead = container(), container()
    networks.allocate("t4a", live, "live", "live")
    networks.allocate("t4a", dead, "dead", "dead")
    os.rmdir(paths.container_dir(dead))  # its record is gone: the address is free again
    with pytest.raises(SpecError, match=r"network t4a is in use by container\(s\) live"):
        networks.remove("t4a")
    assert list(networks.require("t4a").allocations) == ["10.0.6.2"]
    networks.release("t4a", live)
    networks.remove("t4a")
    assert networks.get("t4a") is None


def test_allocations_are_runtime_state_and_the_definition_stays_on_disk() -> None:
    """A join wrote the whole network, allocations and all, to its definition in PISH_LIB (renaming over
    a file on ext4 flushes it: ~1 ms of a ~6 ms attach); the allocations live as long as the containers,
    so they are kept in PISH_ROOT beside them, and the definition is written once."""
    import json

    networks.create("t4a", Net("10.0.6.0/24"))
    definition = paths.network_file("t4a").read_text()
    cid = container()
    networks.allocate("t4a", cid, "a", "a")
    assert paths.network_file("t4a").read_text() == definition and "allocations" not in definition
    assert json.loads(paths.network_allocations("t4a").read_text())["10.0.6.2"]["container"] == cid
    paths.network_allocations("t4a").unlink()  # a reboot: /run is empty again, the definition stays
    assert networks.require("t4a").allocations == {}
    networks.remove("t4a")
    assert not paths.network_file("t4a").exists() and not paths.network_allocations("t4a").exists()


def test_a_definition_written_with_its_allocations_is_still_read() -> None:
    """Networks defined before the allocations moved out of the definition keep their containers."""
    import json

    networks.create("t4a", Net("10.0.6.0/24"))
    paths.network_allocations("t4a").unlink()
    cid = container()
    data = json.loads(paths.network_file("t4a").read_text())
    data["allocations"] = {"10.0.6.7": {"container": cid, "name": "old", "hostname": "old", "aliases": []}}
    paths.network_file("t4a").write_text(json.dumps(data))
    assert list(networks.require("t4a").allocations) == ["10.0.6.7"]
    assert networks.allocate("t4a", container(), "b", "b")[1] == Addr("10.0.6.2")
    assert sorted(networks.require("t4a").allocations) == ["10.0.6.2", "10.0.6.7"]


def test_a_join_appends_its_hosts_line_and_a_leave_rewrites_the_file() -> None:
    """Each join rewrote every member's line (the 100th join wrote 100 lines); now it appends its own,
    in place (the file is every member's /etc/hosts: same inode). A leave writes the file whole, by address."""
    networks.create("t4a", Net("10.0.6.0/24"))
    a, b, c = container(), container(), container()
    networks.allocate("t4a", a, "a", "a", Addr("10.0.6.9"))
    path = paths.hosts_file("t4a")
    inode = path.stat().st_ino
    with open(path, "a") as f:
        f.write("# kept\n")  # a rewrite would drop it
    networks.allocate("t4a", b, "b", "b", aliases=["bee"])
    networks.allocate("t4a", c, "c", "c")
    text = path.read_text()
    assert text.endswith("10.0.6.9\ta\n# kept\n10.0.6.2\tb bee\n10.0.6.3\tc\n") and path.stat().st_ino == inode
    networks.release("t4a", c)
    assert path.read_text().endswith("10.0.6.2\tb bee\n10.0.6.9\ta\n") and path.stat().st_ino == inode


def test_default_and_implicit_networks() -> None:
    a, b = container(), container()
    net, address = networks.allocate("pish0", a, "a", "a")
    assert (net.subnet, net.gateway, address) == (Net("10.88.0.0/16"), Addr("10.88.0.1"), Addr("10.88.0.2"))
    net, address = networks.allocate("t4i", b, "b", "b", Addr("10.0.61.1"), Net("10.0.61.0/24"))
    assert (net.implicit, net.gateway, address) == (True, Addr("10.0.61.254"), Addr("10.0.61.1"))
    networks.release("t4i", b)
    assert networks.get("t4i") is None  # an implicit network goes with its last container
    with pytest.raises(SpecError, match="network t4nope not found"):
        networks.allocate("t4nope", b, "b", "b")
    with pytest.raises(SpecError, match="network t4nope not found"):
        networks.usable_by("t4nope", None)


def _allocate_in_child(args: tuple[str, str, str]) -> str:
    root, lib, cid = args
    os.environ.update(PISH_ROOT=root, PISH_LIB=lib)
    networks.host_routes = list  # type: ignore[assignment]
    return str(networks.allocate("t4a", cid, cid[:8], cid[:8])[1])


def test_parallel_allocations_never_collide() -> None:
    networks.create("t4a", Net("10.0.6.0/24"))
    ids = [container() for _ in range(40)]
    jobs = [(os.environ["PISH_ROOT"], os.environ["PISH_LIB"], cid) for cid in ids]
    with multiprocessing.get_context("fork").Pool(8) as pool:
        got = pool.map(_allocate_in_child, jobs)
    assert len(set(got)) == 40


def test_hosts_file_is_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    hosts.write_hosts(path, [("10.0.6.2", ["web", "web"]), ("10.0.6.3", ["db", "db.local"])])
    inode = path.stat().st_ino
    assert path.read_text().endswith("10.0.6.2\tweb\n10.0.6.3\tdb db.local\n")
    hosts.write_hosts(path, [("10.0.6.2", ["web"])])
    assert path.stat().st_ino == inode and path.read_text().endswith("localhost ip6-loopback\n10.0.6.2\tweb\n")


def test_resolv_conf_drops_loopback_nameservers(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text("# comment\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nsearch example.test\n")
    assert hosts.resolv_conf_text([], host) == "nameserver 10.255.255.53\nsearch example.test\n"
    assert hosts.resolv_conf_text(["192.0.2.53"], host) == "nameserver 192.0.2.53\nsearch example.test\n"
    host.write_text("nameserver 127.0.0.53\n")
    assert hosts.resolv_conf_text([], host) == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
