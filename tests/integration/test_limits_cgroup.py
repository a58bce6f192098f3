"""The limits drivers against the real cgroup filesystems, with a plain `sleep` as the "container".

No container is started: we fork a process, put it in a cgroup, and check what the kernel shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pish_core import names, state
from pish_core.drivers import Group, RunContext
from pish_core.errors import SpecError
from pish_core.spec import ContainerSpec, Process, Resources
from pish_drivers.limits.cgroupv1 import CgroupV1Limits
from pish_drivers.limits.cgroupv2 import CgroupV2Limits

pytestmark = [
    pytest.mark.integration,
    pytest.mark.hostkind,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]
needs_v1 = pytest.mark.skipif(CgroupV1Limits.check() is not None, reason=str(CgroupV1Limits.check()))
needs_v2 = pytest.mark.skipif(CgroupV2Limits.check() is not None, reason=str(CgroupV2Limits.check()))

V1 = Path("/sys/fs/cgroup")


def make_spec(**resources: Any) -> ContainerSpec:
    return ContainerSpec(
        id=names.new_id(),
        name="limits-test",
        image="none",
        process=Process(args=("sleep", "30")),
        hostname="limits-test",
        resources=Resources(**resources),
    )


_journals: list[state.Journal] = []


@pytest.fixture(autouse=True)
def pish_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PISH_ROOT", str(tmp_path / "run"))
    yield
    while _journals:
        close = getattr(_journals.pop(), "close", None)  # lets go of the supervisor lock, if it holds one
        if close is not None:
            close()


def context(spec: ContainerSpec) -> RunContext:
    """A real state record as the runtime writes it, whose journal the driver fills."""
    journal = state.create(
        state.ContainerState(id=spec.id, name=f"t{spec.id[:12]}", image="none", command=[])
    )
    _journals.append(journal)
    return RunContext(spec, journal)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


@contextlib.contextmanager
def v1_applied(spec: ContainerSpec, pid: int) -> Iterator[Group]:
    """``CgroupV1Limits().apply``, with ``pid`` then moved in as a container's init moves itself once
    released (``Group.join_files``)."""
    with CgroupV1Limits().apply(context(spec), pid) as group:
        for file in group.join_files:
            Path(file).write_text(str(pid))
        yield group


def read(path: Path) -> str:
    return path.read_text().strip()


def pids_in(cgroup: Path) -> list[int]:
    return [int(p) for p in read(cgroup / "cgroup.procs").split()]


@needs_v1
def test_cgroupv1_sets_limits_adds_the_pid_and_cleans_up(sleeper: subprocess.Popen[bytes]) -> None:
    spec = make_spec(
        memory=32 << 20,
        cpus=0.5,
        cpuset_cpus="0",
        pids_limit=64,
        extra=(("memory", "memory.swappiness", "0"),),
    )
    limits, ctx = CgroupV1Limits(), context(spec)
    limits.validate(spec)
    controllers = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices")  # devices: the allowlist
    dirs = {c: V1 / c / "pish" / spec.id for c in controllers}
    with limits.apply(ctx, sleeper.pid) as group:
        # The container's init moves itself in once released (Group.join_files); this test is its init.
        assert list(group.join_files) == [str(d / "tasks") for d in dirs.values()]
        for file in group.join_files:
            Path(file).write_text(str(sleeper.pid))
        on_disk = state.ContainerState.load(spec.id).resources
        paths = [str(d) for d in dirs.values()]
        assert on_disk == [{"kind": "limits", "driver": "cgroupv1", "what": "cgroup", "paths": paths}]
        assert read(dirs["memory"] / "memory.limit_in_bytes") == str(32 << 20)
        assert read(dirs["memory"] / "memory.swappiness") == "0"
        assert read(dirs["cpu"] / "cpu.cfs_period_us") == "100000"
        assert read(dirs["cpu"] / "cpu.cfs_quota_us") == "50000"
        assert read(dirs["cpuset"] / "cpuset.cpus") == "0"
        assert read(dirs["cpuset"] / "cpuset.mems") != ""
        assert read(dirs["pids"] / "pids.max") == "64"
        for cgroup in dirs.values():
            assert pids_in(cgroup) == [sleeper.pid]
        stats = group.stats()
        assert stats["pids"] == 1 and stats["cpu_ns"] >= 0 and stats["memory_bytes"] >= 0
        assert not group.oom_killed()
        record = dict(on_disk[0])
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    for cgroup in dirs.values():
        assert not cgroup.exists()
        assert cgroup.parent.is_dir(), "the shared pish/ parent stays"
    assert state.ContainerState.load(spec.id).resources == []
    limits.release(record)  # released twice: nothing left, no error
    limits.release(record)


@needs_v1
def test_cgroupv1_kills_everything_a_process_forked() -> None:
    spec = make_spec(pids_limit=20)
    proc = subprocess.Popen(
        ["sh", "-c", "read x; sleep 30 & sleep 30 & sleep 30 & wait"], stdin=subprocess.PIPE
    )
    pids = V1 / "pids" / "pish" / spec.id
    try:
        with v1_applied(spec, proc.pid):
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
            deadline = time.monotonic() + 5
            while read(pids / "pids.current") != "4" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert read(pids / "pids.current") == "4"
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert not pids.exists()
    finally:
        proc.kill()
        proc.wait()


@needs_v1
def test_cgroupv1_reports_an_oom_kill() -> None:
    eat = "import sys; sys.stdin.read(1); b = b'x' * (256 << 20); print(len(b))"
    proc = subprocess.Popen([sys.executable, "-c", eat], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        with v1_applied(make_spec(memory=32 << 20), proc.pid) as group:
            assert proc.stdin is not None
            proc.stdin.write(b"x")
            proc.stdin.close()
            assert proc.wait(timeout=20) == -signal.SIGKILL
            assert group.oom_killed()
    finally:
        proc.kill()
        proc.wait()


@needs_v1
def test_cgroupv1_release_from_another_process_after_a_crash(sleeper: subprocess.Popen[bytes]) -> None:
    """What `pish gc` does: a run dies inside apply(); another process undoes the journal record."""
    spec = make_spec(memory=64 << 20)
    crash = textwrap.dedent(
        f"""
        import os
        from pish_core import state
        from pish_core.drivers import RunContext
        from pish_core.spec import ContainerSpec, Process, Resources
        from pish_drivers.limits.cgroupv1 import CgroupV1Limits
        spec = ContainerSpec(id={spec.id!r}, name="crash", image="none", process=Process(args=("sleep",)),
                             hostname="crash", resources=Resources(memory={64 << 20}))
        journal = state.create(state.ContainerState(id=spec.id, name="crash", image="none", command=[]))
        held = CgroupV1Limits().apply(RunContext(spec, journal), {sleeper.pid})
        for file in held.__enter__().join_files:  # keep `held`: a dropped generator would clean up when collected
            open(file, "w").write("{sleeper.pid}")  # as the container's init joins, once released
        os._exit(0)  # no cleanup at all, as after a SIGKILL
        """
    )
    subprocess.run([sys.executable, "-c", crash], check=True)
    memory = V1 / "memory" / "pish" / spec.id
    assert pids_in(memory) == [sleeper.pid]
    (record,) = json.loads(
        (Path(os.environ["PISH_ROOT"]) / "containers" / spec.id / "state.json").read_text()
    )["resources"]
    CgroupV1Limits().release(record)
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    for path in record["paths"]:
        assert not Path(path).exists()


@needs_v1
def test_cgroupv1_validate_refuses_bad_limits_before_creating_anything() -> None:
    limits = CgroupV1Limits()
    spec = make_spec(extra=(("memory", "memory.bogus", "1"),))
    with pytest.raises(SpecError, match="memory has no setting memory.bogus"):
        limits.validate(spec)
    with pytest.raises(SpecError, match="controller nosuch is not mounted"):
        limits.validate(make_spec(extra=(("nosuch", "nosuch.key", "1"),)))
    with pytest.raises(SpecError, match="read-only"):
        limits.validate(make_spec(extra=(("memory", "memory.usage_in_bytes", "1"),)))
    with pytest.raises(SpecError, match="outside this host's CPUs"):
        limits.validate(make_spec(cpuset_cpus=str((os.cpu_count() or 1) + 3)))
    limits.validate(
        make_spec(memory=32 << 20, cpuset_cpus="0", extra=(("memory", "memory.swappiness", "0"),))
    )
    assert not (V1 / "memory" / "pish" / spec.id).exists()


@needs_v2
def test_cgroupv2_moves_the_pid_and_kills_it_on_exit(sleeper: subprocess.Popen[bytes]) -> None:
    limits = CgroupV2Limits()  # the real hierarchy: /sys/fs/cgroup/unified on this hybrid host
    spec = make_spec()
    limits.validate(spec)
    cgroup = limits.root / "pish" / spec.id
    with limits.apply(context(spec), sleeper.pid) as group:
        assert pids_in(cgroup) == [sleeper.pid]
        assert "populated 1" in (cgroup / "cgroup.events").read_text()
        assert "cpu_ns" in group.stats()
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert not cgroup.exists()
    assert state.ContainerState.load(spec.id).resources == []


@needs_v2
def test_cgroupv2_refuses_limits_whose_controller_is_elsewhere() -> None:
    limits = CgroupV2Limits()
    available = read(limits.root / "cgroup.controllers").split()
    if "memory" in available:
        pytest.skip("this host's cgroup2 hierarchy has the memory controller")
    with pytest.raises(SpecError, match="cgroupv2: controller memory is not available on this host"):
        limits.validate(make_spec(memory=32 << 20))


@needs_v1
def test_cgroupv1_puts_the_pid_in_itself_where_the_init_may_not(sleeper: subprocess.Popen[bytes]) -> None:
    """An OCI hook gets the container's pid before the init is released, so it must already be in its
    cgroup then: the driver writes the pid itself, as before, and leaves the init nothing to join."""
    from pish_core.spec import Hook

    spec = make_spec(memory=32 << 20).with_changes(hooks=(("prestart", Hook("/bin/true")),))
    with CgroupV1Limits().apply(context(spec), sleeper.pid) as group:
        assert not group.join_files
        assert pids_in(V1 / "memory" / "pish" / spec.id) == [sleeper.pid]
