"""cgroupv2 against a fake cgroup2 hierarchy in a tmp dir: which files it writes, and in what order.

The fake plays the kernel's part where a plain directory differs from cgroupfs: ``mkdir`` fills the new
cgroup with the files its parent's ``cgroup.subtree_control`` grants, and ``rmdir`` removes a cgroup with
its files in it. No root needed.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pish_core import names
from pish_core.drivers import RunContext
from pish_core.errors import DriverError, SpecError
from pish_core.spec import ContainerSpec, DriverChoice, Process, Resources
from pish_core.state import Journal
from pish_drivers.limits.cgroupv2 import CgroupV2Limits

CORE_FILES = {
    "cgroup.procs": "",
    "cgroup.kill": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.subtree_control": "",
    "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
}
CONTROLLER_FILES = {
    "memory": {
        "memory.max": "max",
        "memory.current": "4096",
        "memory.swap.max": "max",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        "memory.low": "0",
    },
    "cpu": {"cpu.max": "max 100000", "cpu.weight": "100"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "pids": {"pids.max": "max", "pids.current": "1"},
    "io": {"io.max": "", "io.weight": "default 100"},
}


class FakeKernel:
    """mkdir and rmdir as cgroupfs does them, for paths below ``root``; the real ones elsewhere."""

    def __init__(self, root: Path, controllers: str) -> None:
        self.root = root
        self.device_programs: list[Path] = []
        self.real_mkdir, self.real_rmdir = os.mkdir, os.rmdir
        self.real_mkdir(root)
        self._fill(root, {"cgroup.controllers": controllers, "cgroup.subtree_control": ""})
        self._fill(root, {"cpuset.cpus.effective": "0-3"})

    @staticmethod
    def _fill(cgroup: Path, files: dict[str, str]) -> None:
        for name, text in files.items():
            (cgroup / name).write_text(text)
            if name in ("memory.current", "pids.current", "cgroup.events", "cpu.stat", "memory.events"):
                (cgroup / name).chmod(0o444)

    def _ours(self, path: Any) -> bool:
        return self.root in Path(path).parents

    def mkdir(self, path: Any, mode: int = 0o777, **kw: Any) -> None:
        self.real_mkdir(path, mode, **kw)
        if self._ours(path):
            cgroup = Path(path)
            granted = [c.lstrip("+") for c in (cgroup.parent / "cgroup.subtree_control").read_text().split()]
            self._fill(cgroup, {**CORE_FILES, "cgroup.controllers": " ".join(granted)})
            for controller in granted:
                self._fill(cgroup, CONTROLLER_FILES[controller])

    def rmdir(self, path: Any, **kw: Any) -> None:
        if not self._ours(path):
            return self.real_rmdir(path, **kw)
        cgroup = Path(path)
        if not cgroup.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if (
            any(p.is_dir() for p in cgroup.iterdir())
            or "populated 1" in (cgroup / "cgroup.events").read_text()
        ):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        for file in cgroup.iterdir():  # cgroupfs drops a cgroup's files with it
            file.unlink()
        return self.real_rmdir(cgroup)


class FakeJournal(Journal):
    """Records like pish_core.state.Journal (its ``held`` is used as is), in memory, and checks that nothing
    exists yet when a record is added."""

    def __init__(self) -> None:  # no state record, no lock
        self.records: list[dict[str, Any]] = []

    def add(self, kind: str, driver: str, what: str, **data: Any) -> dict[str, Any]:
        for path in data.get("paths", []):
            assert not Path(path).exists(), "journal the cgroup before creating it"
        record = {"kind": kind, "driver": driver, "what": what, **data}
        self.records.append(record)
        return record

    def drop(self, record: dict[str, Any]) -> None:
        self.records.remove(record)


def make_spec(**resources: Any) -> ContainerSpec:
    return ContainerSpec(
        id=names.new_id(),
        name="v2-fake",
        image="none",
        process=Process(args=("true",)),
        hostname="v2-fake",
        limits=DriverChoice("cgroupv2"),
        resources=Resources(**resources),
    )


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    from pish_drivers.limits import cgroupv2

    fake = FakeKernel(tmp_path / "cgroup", "cpuset cpu io memory pids")
    monkeypatch.setattr(os, "mkdir", fake.mkdir)
    monkeypatch.setattr(os, "rmdir", fake.rmdir)
    # A BPF program attaches to a real cgroup only (tests/integration/test_bpfdevices_kernel.py): record it.
    monkeypatch.setattr(cgroupv2, "allow_devices", lambda cgroup, privileged: fake.device_programs.append(cgroup))
    return fake


def driver(kernel: FakeKernel) -> CgroupV2Limits:
    return CgroupV2Limits({"root": str(kernel.root)})


def test_apply_writes_the_limits_and_release_removes_the_cgroup(kernel: FakeKernel) -> None:
    spec = make_spec(
        memory=32 << 20,
        cpus=0.5,
        cpuset_cpus="1-2",
        pids_limit=64,
        extra=(("memory", "memory.swap.max", "0"),),
    )
    limits, journal = driver(kernel), FakeJournal()
    limits.validate(spec)
    cgroup = kernel.root / "pish" / spec.id
    with limits.apply(RunContext(spec, journal), 4242) as group:  # type: ignore[arg-type]
        assert journal.records == [
            {"kind": "limits", "driver": "cgroupv2", "what": "cgroup", "paths": [str(cgroup)]}
        ]
        assert (kernel.root / "cgroup.subtree_control").read_text() == "+memory +cpu +cpuset +pids"
        assert (kernel.root / "pish" / "cgroup.subtree_control").read_text() == "+memory +cpu +cpuset +pids"
        assert (cgroup / "memory.max").read_text() == str(32 << 20)
        assert (cgroup / "cpu.max").read_text() == "50000 100000"
        assert (cgroup / "cpuset.cpus").read_text() == "1-2"
        assert (cgroup / "pids.max").read_text() == "64"
        assert (cgroup / "memory.swap.max").read_text() == "0"
        assert (cgroup / "cgroup.procs").read_text() == "4242"
        assert kernel.device_programs == [cgroup]
        assert group.stats() == {"memory_bytes": 4096, "cpu_ns": 1_500_000, "pids": 1, "memory_limit": 32 << 20}
        assert not group.oom_killed()
        (cgroup / "memory.events").chmod(0o644)
        (cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
        assert group.oom_killed()
    assert not cgroup.exists()
    assert not (kernel.root / "pish").exists(), "the parent goes with its last container"
    assert journal.records == []


def test_the_parent_stays_while_another_container_uses_it(kernel: FakeKernel) -> None:
    first, second = make_spec(), make_spec()
    limits = driver(kernel)
    with limits.apply(RunContext(first, FakeJournal()), 1):  # type: ignore[arg-type]
        with limits.apply(RunContext(second, FakeJournal()), 2):  # type: ignore[arg-type]
            pass
        assert (kernel.root / "pish" / first.id).is_dir()
    assert not (kernel.root / "pish").exists()


def test_docker_resource_flags_map_to_v2_files(kernel: FakeKernel) -> None:
    from pish_core.spec import DeviceLimit

    spec = make_spec(memory=64 << 20, memory_swap=96 << 20, memory_reservation=32 << 20, cpu_shares=512,
                     cpuset_mems="0", blkio_weight=500,
                     device_limits=(DeviceLimit(253, 0, "rbps", 1 << 20), DeviceLimit(253, 0, "wiops", 100)))
    with driver(kernel).apply(RunContext(spec, FakeJournal()), 4242):  # type: ignore[arg-type]
        cgroup = kernel.root / "pish" / spec.id
        assert (kernel.root / "cgroup.subtree_control").read_text() == "+memory +cpu +cpuset +io +pids"
        assert (cgroup / "memory.swap.max").read_text() == str(32 << 20)  # swap alone, not memory + swap
        assert (cgroup / "memory.low").read_text() == str(32 << 20)
        assert (cgroup / "cpu.weight").read_text() == "20"  # runc's conversion of 512 shares
        assert (cgroup / "cpuset.mems").read_text() == "0"
        assert (cgroup / "io.weight").read_text() == "default 4950"
        assert (cgroup / "io.max").read_text() == "253:0 wiops=100"  # the fake keeps the last write only


def test_default_shares_and_weights_convert_as_runc_does() -> None:
    from pish_drivers.limits.cgroupv2 import cpu_weight, io_weight

    assert cpu_weight(2) == 1 and cpu_weight(262144) == 10000 and cpu_weight(1024) == 39
    assert io_weight(10) == 1 and io_weight(1000) == 10000


def test_no_limits_enables_only_the_accounting_controllers(kernel: FakeKernel) -> None:
    spec, journal = make_spec(), FakeJournal()
    with driver(kernel).apply(RunContext(spec, journal), 77) as group:  # type: ignore[arg-type]
        assert (kernel.root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"  # figures, as runc
        assert (kernel.root / "pish" / spec.id / "cgroup.procs").read_text() == "77"
        assert group.stats() == {"cpu_ns": 1_500_000, "memory_bytes": 4096, "pids": 1}
        assert not group.oom_killed()
    assert not (kernel.root / "pish" / spec.id).exists()


def test_release_uses_cgroup_kill_and_waits_for_populated_0(kernel: FakeKernel) -> None:
    spec = make_spec()
    cgroup = kernel.root / "pish" / spec.id
    os.mkdir(kernel.root / "pish")
    os.mkdir(cgroup)
    (cgroup / "cgroup.procs").write_text("4242\n")
    (cgroup / "cgroup.events").write_text("populated 1\nfrozen 0\n")

    kills: list[str] = []
    real_write = os.write

    def fake_write(fd: int, data: bytes) -> int:
        # The kernel's part: writing 1 to cgroup.kill empties the cgroup.
        if os.readlink(f"/proc/self/fd/{fd}") == str(cgroup / "cgroup.kill"):
            kills.append(data.decode())
            (cgroup / "cgroup.events").write_text("populated 0\nfrozen 0\n")
        return real_write(fd, data)

    record = {"kind": "limits", "driver": "cgroupv2", "what": "cgroup", "paths": [str(cgroup)]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "write", fake_write)
        driver(kernel).release(dict(record))
    assert kills == ["1"]
    assert not cgroup.exists()
    driver(kernel).release(dict(record))  # again: already gone is fine


def test_release_without_cgroup_kill_sigkills_each_pid(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec()
    cgroup = kernel.root / "pish" / spec.id
    os.mkdir(kernel.root / "pish")
    os.mkdir(cgroup)
    (cgroup / "cgroup.kill").unlink()  # Linux < 5.14
    (cgroup / "cgroup.procs").write_text("4242\n4343\n")

    killed: list[tuple[int, int]] = []

    def fake_kill(pid: int, sig: int) -> None:
        killed.append((pid, sig))
        (cgroup / "cgroup.procs").write_text("")  # both died

    monkeypatch.setattr(os, "kill", fake_kill)
    driver(kernel).release({"paths": [str(cgroup)]})
    assert sorted(killed) == [(4242, signal.SIGKILL), (4343, signal.SIGKILL)]
    assert not cgroup.exists()


def test_a_failed_write_releases_what_was_made(kernel: FakeKernel) -> None:
    spec = make_spec(extra=(("memory", "memory.nope", "1"),))
    journal = FakeJournal()
    with (
        pytest.raises(DriverError, match="memory.nope"),
        driver(kernel).apply(RunContext(spec, journal), 4242),  # type: ignore[arg-type]
    ):
        pass
    assert not (kernel.root / "pish" / spec.id).exists()
    assert journal.records == []


def test_validate_refuses_a_missing_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(tmp_path / "cgroup", "hugetlb")  # like this host's unified hierarchy
    limits = CgroupV2Limits({"root": str(fake.root)})
    limits.validate(make_spec())
    with pytest.raises(SpecError, match="cgroupv2: controller memory is not available on this host"):
        limits.validate(make_spec(memory=1 << 20))
    with pytest.raises(SpecError, match="controller pids is not available"):
        limits.validate(make_spec(pids_limit=10))
    with pytest.raises(SpecError, match="controller cpu is not available"):
        limits.validate(make_spec(extra=(("cpu", "cpu.weight", "50"),)))


def test_validate_checks_keys_and_cpus(kernel: FakeKernel) -> None:
    limits = driver(kernel)
    with pytest.raises(SpecError, match="outside this host's CPUs"):
        limits.validate(make_spec(cpuset_cpus="7"))
    with pytest.raises(SpecError, match="more than this host's 4 CPUs"):
        limits.validate(make_spec(cpus=8.0))
    # Once pish/ exists with the memory controller, keys are checked against its files.
    os.mkdir(kernel.root / "pish")
    (kernel.root / "pish" / "cgroup.controllers").write_text("memory")
    FakeKernel._fill(kernel.root / "pish", CONTROLLER_FILES["memory"])
    limits.validate(make_spec(extra=(("memory", "memory.swap.max", "0"),)))
    with pytest.raises(SpecError, match="memory has no setting memory.bogus"):
        limits.validate(make_spec(extra=(("memory", "memory.bogus", "1"),)))
    with pytest.raises(SpecError, match="read-only"):
        limits.validate(make_spec(extra=(("memory", "memory.current", "1"),)))


def test_validate_refuses_a_root_that_is_not_cgroup2(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a cgroup2 hierarchy"):
        CgroupV2Limits({"root": str(tmp_path)}).validate(make_spec())


def test_release_refuses_a_path_that_is_not_a_container_cgroup(kernel: FakeKernel) -> None:
    with pytest.raises(DriverError, match="refusing"):
        driver(kernel).release({"paths": [str(kernel.root)]})
    with pytest.raises(DriverError, match="refusing"):
        driver(kernel).release({"paths": [str(kernel.root / "pish")]})
    assert kernel.root.is_dir()


def test_unknown_option_is_refused() -> None:
    with pytest.raises(SpecError, match="no option 'rot'"):
        CgroupV2Limits({"rot": "/x"})
