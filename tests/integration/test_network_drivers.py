"""The network drivers against the real kernel, without containers.

A "fake container" here is ``unshare -n sleep 30``: a process in a network namespace of its own, which
is all a network driver ever sees of a container. The drivers themselves use no system tools; these
tests use ``ip``, ``nsenter`` and ``ping`` to look at what the drivers did.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pish_core import names, paths, state
from pish_core.drivers import RunContext
from pish_core.errors import SpecError
from pish_core.spec import ContainerSpec, DriverChoice, NetworkSpec, Process
from pish_drivers.network.bridge import BridgeNetwork
from pish_drivers.network.host import HostNetwork
from pish_drivers.network.none import NoNetwork

BRIDGE = "pishtest0"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                       reason="needs unshare and nsenter (util-linux)"),
]

FakeContainer = tuple[RunContext, int]


# -- helpers -----------------------------------------------------------------------------------------


def link_exists(ifname: str) -> bool:
    return Path("/sys/class/net", ifname).exists()


def link_is_up(ifname: str) -> bool:
    flags = int(Path("/sys/class/net", ifname, "flags").read_text(), 16)
    return bool(flags & 0x1)


def ping_command() -> list[str]:
    if shutil.which("ping"):
        return ["ping"]
    if shutil.which("busybox"):
        return ["busybox", "ping"]
    pytest.skip("needs ping (apt-get install iputils-ping) or busybox")


def ping_from(pid: int, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", *ping_command(), "-c1", "-W2", address],
        check=False, capture_output=True, text=True, timeout=10,
    )


def ip_inside(pid: int, *args: str) -> str:
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", *args],
                          capture_output=True, text=True, check=True).stdout


def users_file() -> Path:
    return paths.networks_dir() / f"{BRIDGE}.json"


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def pish_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PISH_ROOT", str(tmp_path / "run"))
    monkeypatch.setenv("PISH_LIB", str(tmp_path / "lib"))


@pytest.fixture
def no_leftovers() -> Iterator[list[str]]:
    """Refuse to start over an existing test bridge; after the test, check and clean the host.

    Yields a list the test appends its container ids to, so their veths can be checked too.
    """
    if link_exists(BRIDGE):
        pytest.skip(f"{BRIDGE} already exists on this host; remove it with `ip link del {BRIDGE}`")
    ids: list[str] = []
    yield ids
    leftovers = [n for n in [BRIDGE, *(names.veth_host(cid) for cid in ids)] if link_exists(n)]
    for ifname in leftovers:
        subprocess.run(["ip", "link", "del", ifname], check=False)
    assert not leftovers, f"left behind on the host: {leftovers}"


@pytest.fixture
def fake_container(no_leftovers: list[str]) -> Iterator[Callable[..., FakeContainer]]:
    """Make fake containers: a process in a new netns, a spec on the test bridge, a state record."""
    procs: list[subprocess.Popen[bytes]] = []

    def make(ip: str | None, net: str = "bridge") -> FakeContainer:
        proc = subprocess.Popen(["unshare", "-n", "sleep", "30"])
        procs.append(proc)
        home = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{proc.pid}/ns/net") == home:  # unshare has not unshared yet
            assert time.monotonic() < deadline, "unshare -n did not make a network namespace"
            time.sleep(0.005)
        cid = names.new_id()
        no_leftovers.append(cid)
        spec = ContainerSpec(
            id=cid,
            name=f"nettest-{names.short_id(cid)}",
            image="none",
            process=Process(args=("sleep", "30")),
            hostname="nettest",
            net=DriverChoice(net),
            network=NetworkSpec(network=BRIDGE, ip=ipaddress.IPv4Interface(ip) if ip else None),
        )
        journal = state.create(state.ContainerState(id=cid, name=spec.name, image=spec.image,
                                                    command=list(spec.process.args)))
        return RunContext(spec=spec, journal=journal), proc.pid

    yield make
    for proc in procs:
        proc.kill()
        proc.wait()


# -- bridge ------------------------------------------------------------------------------------------


def test_two_containers_on_one_bridge_talk_and_the_last_one_out_removes_it(
    fake_container: Callable[..., FakeContainer],
) -> None:
    driver = BridgeNetwork()
    a, pid_a = fake_container("10.0.61.5/24")
    b, pid_b = fake_container("10.0.61.6/24")
    c, pid_c = fake_container("10.0.61.7/24")
    veth_a, veth_b, veth_c = (names.veth_host(ctx.id) for ctx in (a, b, c))

    with contextlib.ExitStack() as stack:
        att_a = stack.enter_context(driver.attach(a, pid_a))
        stack.enter_context(driver.attach(b, pid_b))
        assert (att_a.ifname, att_a.address, att_a.network) == ("eth0", "10.0.61.5/24", BRIDGE)

        # The bridge is up with both host ends in it; the bookkeeping says pish made it for a and b.
        assert link_is_up(BRIDGE)
        for veth in (veth_a, veth_b):
            assert Path("/sys/class/net", veth, "master").resolve().name == BRIDGE
            assert link_is_up(veth)
        assert json.loads(users_file().read_text()) == {"created_by_pish": True, "users": [a.id, b.id], "kept": False}
        # Each journal holds one record for the attachment, written before anything was taken.
        assert [(r["what"], r.get("veth")) for r in a.journal.state.resources] == [("attachment", veth_a)]
        assert state.ContainerState.load(a.id).resources == a.journal.state.resources

        # Inside: lo and eth0 up, eth0 with its address; and a reaches b across the bridge.
        assert "127.0.0.1/8" in ip_inside(pid_a, "addr", "show", "dev", "lo")
        assert "10.0.61.5/24" in ip_inside(pid_a, "addr", "show", "dev", "eth0")
        assert ",UP" in ip_inside(pid_a, "link", "show", "dev", "eth0")
        result = ping_from(pid_a, "10.0.61.6")
        assert result.returncode == 0, result.stdout + result.stderr

        # A third comes and goes while a and b hold the bridge: the bridge stays, c's veth goes.
        with driver.attach(c, pid_c):
            assert json.loads(users_file().read_text())["users"] == [a.id, b.id, c.id]
            assert link_exists(veth_c)
        assert not link_exists(veth_c)
        assert c.journal.state.resources == []
        assert link_exists(BRIDGE) and link_is_up(BRIDGE)
        assert json.loads(users_file().read_text())["users"] == [a.id, b.id]
        assert ping_from(pid_b, "10.0.61.5").returncode == 0

    # The last one out: bridge, veths and bookkeeping are gone, and so are the journal entries.
    assert not any(link_exists(n) for n in (BRIDGE, veth_a, veth_b, veth_c))
    assert not users_file().exists()
    assert a.journal.state.resources == [] and b.journal.state.resources == []
    assert state.ContainerState.load(b.id).resources == []


def test_release_twice_is_harmless(fake_container: Callable[..., FakeContainer]) -> None:
    driver = BridgeNetwork()
    ctx, pid = fake_container("10.0.61.5/24")
    with driver.attach(ctx, pid):
        records = [dict(r) for r in ctx.journal.state.resources]
    assert not link_exists(BRIDGE)
    for record in reversed(records):
        driver.release(record)
        driver.release(record)
    assert not link_exists(BRIDGE) and not users_file().exists()


def test_gc_releases_from_another_process(fake_container: Callable[..., FakeContainer]) -> None:
    """A run killed while attached leaves a journal; another process undoes it from the records alone."""
    driver = BridgeNetwork()
    ctx, pid = fake_container("10.0.61.5/24")
    attachment = driver.attach(ctx, pid)
    attachment.__enter__()  # ... and never exits, as if pish were killed here
    assert link_exists(BRIDGE) and link_exists(names.veth_host(ctx.id))

    gc = textwrap.dedent(f"""
        from pish_core import state
        from pish_drivers.network.bridge import BridgeNetwork
        for record in reversed(state.ContainerState.load({ctx.id!r}).resources):
            BridgeNetwork().release(record)
    """)
    subprocess.run([sys.executable, "-c", gc], check=True, timeout=30)
    assert not link_exists(BRIDGE) and not link_exists(names.veth_host(ctx.id))
    assert not users_file().exists()

    attachment.__exit__(None, None, None)  # releasing again is harmless


def test_bridge_refuses_an_unknown_network_without_an_address(
    fake_container: Callable[..., FakeContainer],
) -> None:
    """Without --ip the network must exist (or be the default pish0): its subnet says where to look.
    With --ip, as in the tests above, a missing network is made from the address's subnet."""
    ctx, _ = fake_container(None)
    with pytest.raises(SpecError, match=rf"network {BRIDGE} not found: create it with `pish network create"):
        BridgeNetwork().validate(ctx.spec)


# -- none and host -----------------------------------------------------------------------------------


def test_none_brings_lo_up_without_importing_pyroute2(
    fake_container: Callable[..., FakeContainer],
) -> None:
    ctx, pid = fake_container(None, net="none")
    assert ping_from(pid, "127.0.0.1").returncode != 0  # lo starts down in a new netns

    script = textwrap.dedent(f"""
        import sys
        from pish_core import state
        from pish_core.drivers import RunContext
        from pish_core.spec import ContainerSpec, DriverChoice, NetworkSpec, Process
        from pish_drivers.network.none import NoNetwork
        spec = ContainerSpec(id={ctx.id!r}, name={ctx.spec.name!r}, image="none",
                             process=Process(args=("sleep",)), hostname="nettest",
                             net=DriverChoice("none"), network=NetworkSpec(network={BRIDGE!r}))
        ctx = RunContext(spec, state.Journal(state.ContainerState.load(spec.id), -1))
        with NoNetwork().attach(ctx, {pid}) as attachment:
            assert attachment.address is None
        print("pyroute2" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "a --net none run imported pyroute2"

    result = ping_from(pid, "127.0.0.1")
    assert result.returncode == 0, result.stdout + result.stderr


def test_none_and_host_refuse_an_address(fake_container: Callable[..., FakeContainer]) -> None:
    ctx, _ = fake_container("10.0.61.5/24", net="none")
    for driver in (NoNetwork(), HostNetwork()):
        with pytest.raises(SpecError, match="--ip needs --net bridge"):
            driver.validate(ctx.spec)


def test_host_does_nothing(fake_container: Callable[..., FakeContainer]) -> None:
    ctx, pid = fake_container(None, net="host")
    assert HostNetwork.shares_host_netns
    before = sorted(os.listdir("/sys/class/net"))
    with HostNetwork().attach(ctx, pid) as attachment:
        assert attachment.ifname is None and attachment.address is None
    assert sorted(os.listdir("/sys/class/net")) == before
    assert ctx.journal.state.resources == []
