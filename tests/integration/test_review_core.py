"""Regression tests from a review of the core runtime: descriptors leaking into containers, `pish gc` and
`pish rm` when a release fails or when two of them clean the same container at once."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import pish_command
from helpers.containers import run_detached

pytestmark = [pytest.mark.integration, pytest.mark.leak_check]

EXTRA_FD = 42  # a descriptor the caller of pish has open, as a shell's `42>file` would leave it


def _pish_with_extra_fd(pish_env: Any, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pish ARGS...`` started with one more open descriptor than stdio, number EXTRA_FD."""
    fd = os.open(tmp_path / "extra", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.dup2(fd, EXTRA_FD)
        return subprocess.run([*pish_command(), *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **pish_env.env}, pass_fds=(EXTRA_FD,), check=False)
    finally:
        os.close(EXTRA_FD)
        os.close(fd)


def _fds(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def _record(pish_env: Any, cid: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((pish_env.root / "containers" / cid / "state.json").read_text())
    return record


def test_foreground_container_gets_only_stdio(pish_env, busybox_tar, tmp_path, leaks):
    """runc closes every descriptor above 2 before exec; pish passed on whatever it had inherited."""
    proc = _pish_with_extra_fd(pish_env, tmp_path, "run", "--log-level", "warning", str(busybox_tar),
                               "ls", "/proc/self/fd")
    assert proc.returncode == 0, proc.stderr
    fds = {int(fd) for fd in proc.stdout.split()}
    assert EXTRA_FD not in fds
    assert len(fds - {0, 1, 2}) <= 1, fds  # ls's own descriptor of the directory it lists
    leaks.assert_clean()


def test_detached_container_and_supervisor_get_only_stdio(pish, pish_env, busybox_tar, tmp_path, leaks):
    """Neither the container's PID 1 nor its supervisor keeps a descriptor of whoever ran `pish run -d`."""
    proc = _pish_with_extra_fd(pish_env, tmp_path, "run", "-d", str(busybox_tar), "sleep", "100")
    assert proc.returncode == 0, proc.stderr
    cid = proc.stdout.strip()
    record = _record(pish_env, cid)
    try:
        assert _fds(record["pid"]) == {0, 1, 2}
        assert EXTRA_FD not in _fds(record["supervisor_pid"])
    finally:
        pish("rm", "-f", cid, check=True)
    leaks.assert_clean()


def _kill_supervisor(pish_env: Any, cid: str) -> None:
    """SIGKILL a detached container's supervisor, as a crash would: its journal is all that is left."""
    record = _record(pish_env, cid)
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{record['pid']}") and time.monotonic() < deadline:
        time.sleep(0.02)  # PID 1 dies with it (PDEATHSIG)


def _add_failing_resource(pish_env: Any, cid: str) -> None:
    """Append a journal entry whose release fails (a cgroup the driver refuses to touch): it is the
    last acquired, so it is the first released."""
    path = pish_env.root / "containers" / cid / "state.json"
    record = json.loads(path.read_text())
    record["resources"].append({"kind": "limits", "driver": "cgroupv1", "what": "cgroup",
                                "paths": ["/sys/fs/cgroup/memory/not-pish/x"]})
    path.write_text(json.dumps(record))


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4].startswith(path) for line in f)


def test_gc_goes_on_after_a_failing_release(pish, pish_env, busybox_tar, leaks):
    """One release that fails must neither keep the container's other resources nor the other dead
    containers from being cleaned up; the failing entry stays in the journal and gc says so."""
    a = run_detached(pish, "--name", "a", "--memory", "64m", str(busybox_tar), "sleep", "100")
    b = run_detached(pish, "--name", "b", "--memory", "64m", str(busybox_tar), "sleep", "100")
    for cid in (a, b):
        _kill_supervisor(pish_env, cid)
    _add_failing_resource(pish_env, a)
    _add_failing_resource(pish_env, b)

    proc = pish("gc")
    assert proc.returncode == 125, proc.stderr
    assert "Traceback" not in proc.stderr
    for cid in (a, b):
        left = _record(pish_env, cid)["resources"]
        assert [r.get("paths") for r in left] == [["/sys/fs/cgroup/memory/not-pish/x"]], left
        assert not _mounted(str(pish_env.lib / "containers" / cid))
        assert not Path(f"/sys/fs/cgroup/memory/pish/{cid}").exists()
    for cid in (a, b):  # once the entry is dropped (say an operator fixed it), gc finishes the job
        path = pish_env.root / "containers" / cid / "state.json"
        record = json.loads(path.read_text())
        record["resources"] = []
        path.write_text(json.dumps(record))
    pish("gc", check=True)
    leaks.assert_clean()


def test_rm_waits_for_a_collector_instead_of_deleting_its_journal(pish, pish_env, busybox_tar, leaks,
                                                                  monkeypatch):
    """`pish rm` of a dead container while `pish gc` (or another `pish rm`) is releasing it: the record must
    not be deleted under the collector, which would then fail half-way and leave the rest for good."""
    from pish_core import lifecycle, state
    from pish_drivers.isolation.unshare import UnshareIsolation

    cid = run_detached(pish, "--memory", "64m", str(busybox_tar), "sleep", "100")
    _kill_supervisor(pish_env, cid)

    in_release = threading.Event()
    original = UnshareIsolation.release

    def slow_release(self: UnshareIsolation, record: dict[str, Any]) -> None:
        in_release.set()
        time.sleep(0.5)  # a release that takes a while (a cgroup slow to empty, a busy mount)
        original(self, record)

    monkeypatch.setattr(UnshareIsolation, "release", slow_release)
    errors: list[BaseException] = []

    def collector() -> None:
        try:
            lifecycle.collect(cid)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    # The interleaving: rm finds the supervisor lock free, then the collector takes it.
    real_alive = state.supervisor_alive
    thread = threading.Thread(target=collector)

    def alive_then_collector_starts(c: str) -> bool:
        result = real_alive(c)
        if thread.ident is None:
            thread.start()
            assert in_release.wait(10)
        return result

    monkeypatch.setattr(state, "supervisor_alive", alive_then_collector_starts)
    with contextlib.suppress(Exception):
        lifecycle.remove(cid)
    thread.join(30)
    assert not errors, errors
    assert not (pish_env.root / "containers" / cid).exists()
    leaks.assert_clean()


def test_rm_f_never_signals_a_stale_supervisor_pid(pish, pish_env, busybox_tar, leaks):
    """`pish rm -f` while something else holds the supervisor lock for a moment (`pish logs -f`, `ps` or
    another `rm` probing it, a `gc` collecting): the supervisor may be long gone and its pid reused by
    another process, which must not get the SIGTERM meant for the supervisor."""
    from pish_core import state

    cid = run_detached(pish, str(busybox_tar), "true")
    deadline = time.monotonic() + 10
    while _record(pish_env, cid)["status"] != "stopped" or state.supervisor_alive(cid):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    bystander = subprocess.Popen(["sleep", "100"])  # a process that got the dead supervisor's pid
    try:
        path = pish_env.root / "containers" / cid / "state.json"
        record = json.loads(path.read_text())
        record["supervisor_pid"] = bystander.pid
        path.write_text(json.dumps(record))
        fd = state.try_lock(cid)  # the prober
        assert fd is not None
        try:
            rm = subprocess.Popen([*pish_command(), "rm", "-f", cid], env={**os.environ, **pish_env.env},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(1)
        finally:
            os.close(fd)
        _, err = rm.communicate(timeout=60)
        assert rm.returncode == 0, err
        assert bystander.poll() is None, "the bystander got the supervisor's signal"
    finally:
        bystander.kill()
        bystander.wait()
    leaks.assert_clean()


def test_gc_never_removes_a_container_being_created(pish_env, monkeypatch):
    """`pish gc` finding a new container's directory before its creator has taken the supervisor lock
    and written the record must leave it alone, not delete it under the creator."""
    from pish_core import lifecycle, names, paths, state

    real = state.try_lock
    gc_runs: list[threading.Thread] = []
    cleaned: list[list[str]] = []

    def gc_in_between(cid: str, wait: bool = False) -> int | None:
        if not gc_runs:  # the creator's call, right after its mkdir: a `pish gc` runs now
            gc_runs.append(threading.Thread(target=lambda: cleaned.append(lifecycle.gc())))
            gc_runs[0].start()
            time.sleep(0.3)
        return real(cid, wait) if wait else real(cid)

    monkeypatch.setattr(state, "try_lock", gc_in_between)
    record = state.ContainerState(id=names.new_id(), name="being-created", image="img", command=["true"])
    journal = state.create(record)
    try:
        gc_runs[0].join(30)
        assert cleaned == [[]]
        assert paths.state_file(record.id).exists()
    finally:
        journal.close()
        state.remove(record.id)


def test_sigterm_to_a_supervisor_after_release_keeps_the_exit_status(pish, pish_env, busybox_tar, tmp_path,
                                                                      leaks):
    """A SIGTERM that reaches a detached supervisor after everything is released but before the record
    says `stopped` must not kill it then: the container's exit status would be lost (shown `dead`)."""
    stages = tmp_path / "stages"
    env = {"PISH_TEST_STAGES": str(stages), "PISH_TEST_STAGE_DELAY": "0.3"}
    proc = subprocess.run([*pish_command(), "run", "-d", "--net", "none", "--name", "term-late", str(busybox_tar),
                           "sh", "-c", "exit 3"], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **pish_env.env, **env})
    assert proc.returncode == 0, proc.stderr
    cid = proc.stdout.strip()
    deadline = time.monotonic() + 30
    while "released" not in (stages.read_text() if stages.exists() else ""):
        assert time.monotonic() < deadline, "the supervisor never reached the 'released' stage"
        time.sleep(0.02)
    os.kill(_record(pish_env, cid)["supervisor_pid"], signal.SIGTERM)  # inside the 0.3 s after 'released'
    deadline = time.monotonic() + 30
    while _record(pish_env, cid)["status"] != "stopped":
        assert time.monotonic() < deadline, _record(pish_env, cid)
        time.sleep(0.05)
    assert _record(pish_env, cid)["exit_code"] == 3
    pish("rm", "term-late", check=True)
    leaks.assert_clean()
