"""A detached container's supervisor is small while its command runs (issue 13): it has exec'd
``pish_core/monitor.py`` under ``python -S -I``, which imports only what the list below allows, and it
becomes the full pish again when the command ends, to record the exit and release everything.
Imports and what the process maps are behaviours; its memory is measured by bench/lifecycle, not here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.containers import ps_json, run_detached, wait_for

import pish_core.monitor

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(at_teardown=True)]

MONITOR = Path(pish_core.monitor.__file__)

#: what the monitor may import beyond the interpreter's own start-up (``-S``: no site): the C module
#: ``_signal``, not ``signal`` and its enum. (A -t container's monitor imports _socket, select, fcntl and
#: termios too, in ``serve_pty``.)
ALLOWED = {"_signal"}  # and os, which every python imports


def test_monitor_imports_only_the_allowed_modules() -> None:
    code = (f"import sys; path = {str(MONITOR)!r}; "
            "exec(compile(open(path).read(), path, 'exec'), {'__name__': 'not_main'}); "
            "print(' '.join(sys.modules))")
    bare = subprocess.run([sys.executable, "-S", "-I", "-c", "import os, sys; print(' '.join(sys.modules))"],
                          capture_output=True, text=True, check=True).stdout.split()
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    extra = set(out) - set(bare) - ALLOWED
    assert not extra, f"the monitor imports {sorted(extra)}: each costs every running container memory"


def _supervisor(pish_env, cid: str) -> int:
    record = json.loads((pish_env.root / "containers" / cid / "state.json").read_text())
    assert record["status"] == "running"
    return int(record["supervisor_pid"])


def _argv(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def _maps(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[-1] for line in f if len(line.split()) >= 6}


@pytest.mark.parametrize("tty", [False, True], ids=["plain", "tty"])
def test_running_supervisor_is_the_monitor_then_pish_again(pish, pish_env, busybox_tar, leaks, tty):
    flags = ["-t"] if tty else []
    cid = run_detached(pish, "--net", "none", *flags, "--name", "mon", str(busybox_tar), "sh", "-c", "sleep 100")
    try:
        pid = _supervisor(pish_env, cid)
        # `run -d` returns once the command runs; the supervisor execs its monitor just after
        wait_for(lambda: str(MONITOR).encode() in _argv(pid), what="the supervisor to exec its monitor")
        argv = _argv(pid)
        assert b"-S" in argv and b"-I" in argv, argv
        mapped = _maps(pid)
        assert not [m for m in mapped if "site-packages" in m or "_native" in m], \
            "the monitor maps pish's packages or native module"
        # the lock is held across the exec: the container has a live supervisor
        assert ps_json(pish)[cid]["status"] == "running"
        pish("stop", "-t", "1", "mon", check=True)
        after = ps_json(pish, "-a")[cid]
        assert after["status"] == "exited (137)"
        record = json.loads((pish_env.root / "containers" / cid / "state.json").read_text())
        assert [r["kind"] for r in record["resources"]] == ["storage"], record["resources"]  # kept until rm
        assert record["exit_code"] == 137
    finally:
        pish("rm", "-f", "mon")


def test_killed_monitor_leaves_what_gc_undoes(pish, pish_env, busybox_tar, leaks):
    """SIGKILL of the monitor: its container dies with it (PDEATHSIG), and `pish gc` undoes the journal."""
    cid = run_detached(pish, "--net", "none", "--name", "mon-kill", str(busybox_tar), "sleep", "100")
    pid = _supervisor(pish_env, cid)
    wait_for(lambda: str(MONITOR).encode() in _argv(pid), what="the supervisor to exec its monitor")
    container = json.loads((pish_env.root / "containers" / cid / "state.json").read_text())["pid"]
    os.kill(pid, 9)
    deadline = time.monotonic() + 10  # a safety net, not a timing check
    while Path(f"/proc/{container}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{container}").exists(), "the container outlived its monitor"
    assert ps_json(pish, "-a")[cid]["status"] == "dead"
    pish("gc", check=True)
    assert cid not in ps_json(pish, "-a")
