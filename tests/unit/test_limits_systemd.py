"""The systemd limits driver without systemd: names, how the limits become unit properties, the D-Bus
client against a fake systemd (tests/helpers/fake_systemd.py) over both of systemd's sockets, and the
whole apply/release with the fake playing the cgroup tree in a tmp dir. No root needed.

The real thing runs in tests/integration/test_limits_systemd.py (a systemd host: the Debian 12 VM).
"""
from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.fake_systemd import FakeSystemd, private_bus

from pish_core import names
from pish_core.drivers import RunContext
from pish_core.errors import DriverError, SpecError
from pish_core.spec import ContainerSpec, DeviceLimit, DriverChoice, Process, Resources
from pish_core.state import Journal
from pish_drivers.limits import systemd, systemd_dbus
from pish_drivers.limits.systemd import INFINITY, SystemdLimits, bitmask, unit_properties
from pish_drivers.limits.systemd_dbus import Manager

CID = "ab" * 32


def make_spec(**resources: Any) -> ContainerSpec:
    return ContainerSpec(id=CID, name="sd-fake", image="none", process=Process(args=("true",)),
                         hostname="sd-fake", limits=DriverChoice("systemd"), resources=Resources(**resources))


def props_of(spec: ContainerSpec, version: int = 252) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    props, writes = unit_properties(spec, 4242, version)
    return dict(props), writes


# -- names and properties ---------------------------------------------------------------------------


def test_names() -> None:
    assert names.systemd_scope(CID) == f"pish-{CID}.scope"
    assert names.systemd_slice() == "pish.slice"


@pytest.mark.parametrize(("cpus", "mask"), [("0", b"\x01"), ("0-2,5", b"\x27"), ("9", b"\x00\x02"),
                                            ("1,8-9", b"\x02\x03")])
def test_cpu_lists_become_systemd_bitmasks(cpus: str, mask: bytes) -> None:
    assert bitmask(cpus) == mask


def test_the_scope_and_its_limits_as_properties() -> None:
    props, writes = props_of(make_spec(memory=48 << 20, cpus=0.5, pids_limit=20, cpuset_cpus="0-1"))
    assert props["PIDs"] == ("au", [4242])
    assert props["Slice"] == ("s", "pish.slice")
    assert props["Delegate"] == ("b", True)
    assert props["DefaultDependencies"] == ("b", False)
    assert props["CollectMode"] == ("s", "inactive-or-failed")
    assert "OOMPolicy" not in props  # scopes take it from systemd 253 on
    assert props["MemoryMax"] == ("t", 48 << 20)
    assert props["CPUQuotaPerSecUSec"] == ("t", 500_000)  # = cpu.max "50000 100000"
    assert props["CPUQuotaPeriodUSec"] == ("t", 100_000)
    assert props["TasksMax"] == ("t", 20)
    assert props["AllowedCPUs"] == ("ay", b"\x03")
    assert writes == []


def test_no_pids_limit_is_no_limit_not_systemds_default() -> None:
    props, _ = props_of(make_spec())
    assert props["TasksMax"] == ("t", INFINITY)
    assert "MemoryMax" not in props and "CPUQuotaPerSecUSec" not in props


def test_an_older_systemd_gets_files_for_what_it_lacks() -> None:
    props, writes = props_of(make_spec(cpus=1.5, cpuset_cpus="1", cpuset_mems="0"), version=241)
    assert "AllowedCPUs" not in props and "AllowedMemoryNodes" not in props
    assert "CPUQuotaPeriodUSec" not in props and props["CPUQuotaPerSecUSec"] == ("t", 1_500_000)
    assert writes == [("cpuset.cpus", "1"), ("cpuset.mems", "0")]
    newer, _ = props_of(make_spec(), version=255)
    assert newer["OOMPolicy"] == ("s", "continue")


def test_docker_flags_map_to_properties_as_cgroupv2_writes_them() -> None:
    spec = make_spec(memory=64 << 20, memory_swap=96 << 20, memory_reservation=32 << 20, cpu_shares=512,
                     blkio_weight=500, device_limits=(DeviceLimit(4095, 1048575, "rbps", 1 << 20),))
    props, writes = props_of(spec)
    assert props["MemorySwapMax"] == ("t", 32 << 20)  # swap alone
    assert props["MemoryLow"] == ("t", 32 << 20)
    assert props["CPUWeight"] == ("t", 20)
    assert props["IOWeight"] == ("t", 4950)
    assert writes == [("io.max", "4095:1048575 rbps=1048576")]  # no such device node: the file, by numbers
    unlimited, _ = props_of(make_spec(memory=64 << 20, memory_swap=-1))
    assert unlimited["MemorySwapMax"] == ("t", INFINITY)


def test_a_device_limit_names_the_device_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd, "device_path", lambda major, minor: f"/dev/fake{major}")
    props, writes = props_of(make_spec(device_limits=(DeviceLimit(8, 0, "wiops", 100),
                                                      DeviceLimit(9, 0, "wiops", 50))))
    assert props["IOWriteIOPSMax"] == ("a(st)", [("/dev/fake8", 100), ("/dev/fake9", 50)])
    assert writes == []


def test_limit_extras_become_properties_where_systemd_has_one() -> None:
    extra = (("memory", "memory.high", "100000000"), ("pids", "pids.max", "max"),
             ("io", "io.weight", "default 50"),
             ("memory", "memory.oom.group", "1"), ("memory", "memory.high", "50%"))
    props, writes = unit_properties(make_spec(extra=extra), 1, 252)
    assert ("MemoryHigh", ("t", 100_000_000)) in props
    assert ("TasksMax", ("t", INFINITY)) in props
    assert ("IOWeight", ("t", 50)) in props
    assert writes == [("memory.oom.group", "1"), ("memory.high", "50%")]  # the kernel judges these


@pytest.mark.parametrize(("path", "scope", "slice_unit"), [
    ("", f"pish-{CID}.scope", f"pish-{CID}.slice"),
    ("system.slice:cri-containerd:abc", "cri-containerd-abc.scope", "system.slice"),
    ("kubepods-besteffort.slice:crio:x1", "crio-x1.scope", "kubepods-besteffort.slice"),
    (":libpod:abc", "libpod-abc.scope", "system.slice"),
    ("machine.slice::abc", "abc.scope", "machine.slice"),
])
def test_an_oci_cgroups_path_names_the_scope_as_runc_reads_it(path: str, scope: str, slice_unit: str) -> None:
    spec = make_spec().with_changes(cgroups_path=path)
    assert systemd.scope_and_slice(spec, user=False) == (scope, slice_unit)


@pytest.mark.parametrize("path", ["system.slice:pre:x.slice", "a/b.slice:p:n", "sys:p:n", "p:n", "a:b:c:d",
                                  "system.slice:p:a/b"])
def test_a_bad_cgroups_path_is_refused(path: str) -> None:
    with pytest.raises(SpecError, match="cgroupsPath"):
        systemd.scope_and_slice(make_spec().with_changes(cgroups_path=path), user=False)


def test_slices_nest_at_each_dash() -> None:
    assert systemd.slice_path("pish.slice") == "pish.slice"
    assert systemd.slice_path("kubepods-besteffort-pod1.slice") == \
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
    assert systemd.slice_path("-.slice") == ""


def test_the_log_line_shows_the_limits() -> None:
    props, _ = unit_properties(make_spec(memory=48 << 20, cpuset_cpus="0,2"), 1, 252)
    assert systemd.summary(props) == "MemoryMax=50331648 AllowedCPUs=0,2 TasksMax=infinity"


# -- the host check and the journal's records -------------------------------------------------------


def test_check_says_why_not_here() -> None:
    why = SystemdLimits.check()
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd is PID 1 here")
    assert why == "systemd is not PID 1 here (no /run/systemd/system)"
    assert not systemd.booted()


@pytest.mark.parametrize("unit", ["ssh.service", "pish-x.scope", f"pish-{CID}.service",
                                  f"../pish-{CID}.scope"])
def test_release_refuses_what_is_not_a_container_scope(unit: str) -> None:
    with pytest.raises(DriverError, match="not a pish container scope"):
        SystemdLimits().release({"unit": unit, "bus": "system"})


@pytest.mark.parametrize("path", ["/sys/fs/cgroup/system.slice/ssh.service",
                                  f"/tmp/pish.slice/pish-{CID}.scope",
                                  f"/sys/fs/cgroup/pish.slice/../pish.slice/pish-{CID}.scope"])
def test_release_refuses_a_cgroup_that_is_not_the_scopes(path: str) -> None:
    with pytest.raises(DriverError, match="not a pish container scope"):
        SystemdLimits().release({"unit": f"pish-{CID}.scope", "bus": "system", "path": path})


def test_a_given_scope_may_be_anywhere_below_the_cgroup_root() -> None:
    record = {"unit": "crio-x1.scope", "bus": "system", "given": True,
              "path": "/sys/fs/cgroup/kubepods.slice/kubepods-x.slice/crio-x1.scope"}
    assert systemd._owned_path(record, systemd._owned_unit(record)) == Path(record["path"])
    with pytest.raises(DriverError, match="not a pish container scope"):
        systemd._owned_unit({**record, "unit": "ssh.service"})
    with pytest.raises(DriverError, match="not a pish container scope"):
        systemd._owned_unit({**record, "given": False})


# -- the D-Bus client against a fake systemd --------------------------------------------------------


@pytest.fixture(params=["direct", "bus"])
def fake(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    """A fake systemd, reached as /run/systemd/private (``direct``) or on a bus of our own (``bus``)."""
    fake = FakeSystemd(tmp_path / "cgroup")
    (tmp_path / "cgroup").mkdir()
    private = tmp_path / "private"
    bus_socket = tmp_path / "bus"
    monkeypatch.setattr(systemd_dbus, "addresses",
                        lambda user: [(str(bus_socket), False), (str(private), True)])
    if request.param == "direct":
        with fake.serve_direct(private):
            yield fake
    else:
        if shutil.which("dbus-daemon") is None:
            pytest.skip("no dbus-daemon here (apt install dbus)")
        with private_bus(tmp_path) as address, fake.serve_on_bus(address):
            yield fake


def test_manager_calls(fake: FakeSystemd) -> None:
    unit = names.systemd_scope(CID)
    with Manager() as manager:
        assert manager.version() == 252
        job = manager.start_transient_unit(unit, [("PIDs", ("au", [1]))], [("pish.slice", [])])
        assert manager.wait_job(job) == "done"
        assert manager.unit_property(unit, "Scope", "ControlGroup") == f"/pish.slice/{unit}"
        with pytest.raises(systemd_dbus.BusError) as info:
            manager.start_transient_unit(unit, [])
        assert info.value.name == systemd_dbus.UNIT_EXISTS
        assert str(info.value) == f"systemd: StartTransientUnit: Unit {unit} already exists."
        manager.kill_unit(unit, signal.SIGKILL)
        assert manager.wait_job(manager.stop_unit(unit)) == "done"
        with pytest.raises(systemd_dbus.BusError) as info:
            manager.reset_failed_unit(unit)
        assert info.value.name == systemd_dbus.NO_SUCH_UNIT
    assert fake.calls[-1] == ("ResetFailedUnit", (unit,))


def test_no_answer_is_a_one_line_error(fake: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd_dbus, "CALL_TIMEOUT", 0.5)
    with Manager() as manager:
        fake.answer = False
        with pytest.raises(DriverError, match=r"^systemd: no answer from the system's systemd in time "
                                              r"\(the answer to GetUnit\)$"):
            manager.unit_property("x.scope", "Scope", "ControlGroup")


def test_no_socket_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(systemd_dbus, "addresses", lambda user: [(str(tmp_path / "none"), False)])
    with pytest.raises(DriverError, match="^systemd: no D-Bus socket to reach the system's systemd"):
        Manager()


# -- the driver against the fake --------------------------------------------------------------------


class FakeJournal(Journal):
    def __init__(self) -> None:  # no state record, no lock
        self.records: list[dict[str, Any]] = []

    def add(self, kind: str, driver: str, what: str, **data: Any) -> dict[str, Any]:
        record = {"kind": kind, "driver": driver, "what": what, **data}
        self.records.append(record)
        return record

    def update(self, record: dict[str, Any], **data: Any) -> None:
        record.update(data)

    def drop(self, record: dict[str, Any]) -> None:
        self.records.remove(record)


@pytest.fixture
def driver(fake: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> SystemdLimits:
    monkeypatch.setattr(systemd, "CGROUP_ROOT", fake.root)
    # A BPF program attaches to a real cgroup only (tests/integration/test_bpfdevices_kernel.py): record it.
    monkeypatch.setattr(systemd, "allow_devices",
                        lambda cgroup, privileged: fake.device_programs.append(cgroup))
    return SystemdLimits()


SCOPE, SLICE = names.systemd_scope(CID), names.systemd_container_slice(CID)


def test_apply_makes_the_scope_and_release_stops_it(fake: FakeSystemd, driver: SystemdLimits) -> None:
    spec = make_spec(memory=48 << 20, cpus=0.5, extra=(("io", "io.latency", "8:0 target=10"),))
    journal = FakeJournal()
    cgroup = fake.root / "pish.slice" / SLICE / SCOPE
    with driver.apply(RunContext(spec, journal), 4242) as group:
        assert journal.records == [{"kind": "limits", "driver": "systemd", "what": "scope", "unit": SCOPE,
                                    "bus": "system", "path": str(cgroup), "slice": SLICE}]
        assert set(fake.units) == {SCOPE, SLICE, "pish.slice"}
        assert fake.units["pish.slice"]["StopWhenUnneeded"] == ("b", True)
        assert fake.units[SLICE] == {"Description": ("s", "pish container sd-fake")}
        assert fake.units[SCOPE]["Slice"] == ("s", SLICE)
        assert fake.units[SCOPE]["MemoryMax"] == ("t", 48 << 20)
        assert (cgroup / "io.latency").read_text() == "8:0 target=10"  # no property for it: written
        assert fake.device_programs == [cgroup]
        (cgroup / "cgroup.procs").write_text("4242\n")
        assert driver.group(journal.records[0]).pids() == [4242]  # found again, as `pish-oci ps` does
        assert group.stats() == {"memory_bytes": 4096, "cpu_ns": 1_500_000, "pids": 1, "memory_limit": 48 << 20}
        assert not group.oom_killed()
        (cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
        assert group.oom_killed()
    assert journal.records == [] and fake.units == {}
    assert not (fake.root / "pish.slice").exists()
    calls = fake.calls[[call for call, _ in fake.calls].index("KillUnit"):]
    assert calls == [("KillUnit", (SCOPE, "all", signal.SIGKILL)), ("StopUnit", (SLICE, "replace")),
                     ("ResetFailedUnit", (SCOPE,)), ("ResetFailedUnit", (SLICE,))]


def test_a_second_container_finds_pish_slice_made(fake: FakeSystemd, driver: SystemdLimits) -> None:
    first, second = make_spec(), make_spec().with_changes(id="cd" * 32)
    with driver.apply(RunContext(first, FakeJournal()), 1):
        with driver.apply(RunContext(second, FakeJournal()), 2):
            units = {names.systemd_scope("ab" * 32), names.systemd_scope("cd" * 32),
                     names.systemd_container_slice("ab" * 32), names.systemd_container_slice("cd" * 32)}
            assert set(fake.units) == {*units, "pish.slice"}
        assert "pish.slice" in fake.units
    assert fake.units == {}
    starts = [body for call, body in fake.calls if call == "StartTransientUnit"]
    # the second is refused with pish.slice, then made with its own slice alone
    second_slice = names.systemd_container_slice("cd" * 32)
    assert [[name for name, _ in body[3]] for body in starts] == [
        ["pish.slice", SLICE], ["pish.slice", second_slice], [second_slice]]


def test_an_oom_kill_is_seen_after_systemd_removed_the_scope(fake: FakeSystemd,
                                                             driver: SystemdLimits) -> None:
    cgroup = fake.root / "pish.slice" / SLICE / SCOPE
    with driver.apply(RunContext(make_spec(memory=16 << 20), FakeJournal()), 1) as group:
        (cgroup.parent / "memory.events").write_text("oom 1\noom_kill 1\n")  # counted up the tree
        shutil.rmtree(cgroup)  # what systemd does once the scope is empty
        assert group.oom_killed()


def test_release_of_units_systemd_already_collected(fake: FakeSystemd, driver: SystemdLimits) -> None:
    driver.release({"unit": SCOPE, "bus": "system", "slice": SLICE,
                    "path": str(fake.root / "pish.slice" / SLICE / SCOPE)})
    assert [call for call, _ in fake.calls] == ["KillUnit", "StopUnit"]  # NoSuchUnit both: nothing to do


def test_a_failed_stop_is_a_one_line_error(fake: FakeSystemd, driver: SystemdLimits) -> None:
    journal = FakeJournal()
    fake.stop_result = "failed"
    failed = r"^systemd: systemd could not stop pish-(ab)+\.slice \(failed\); try `pish gc` later$"
    with pytest.raises(DriverError, match=failed), driver.apply(RunContext(make_spec(), journal), 1):
        pass
    assert len(journal.records) == 1  # kept for `pish gc`


def test_validate_refuses_a_controller_the_host_lacks(fake: FakeSystemd, driver: SystemdLimits) -> None:
    (fake.root / "cgroup.controllers").write_text("memory pids")
    (fake.root / "cpuset.cpus.effective").write_text("0-1")
    driver.validate(make_spec(memory=1 << 20, pids_limit=5))
    with pytest.raises(SpecError, match="^systemd: controller cpu is not available on this host$"):
        driver.validate(make_spec(cpus=0.5))
    (fake.root / "cgroup.controllers").write_text("cpu cpuset memory pids")
    with pytest.raises(SpecError, match="outside this host's CPUs"):
        driver.validate(make_spec(cpuset_cpus="5"))
