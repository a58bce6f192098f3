"""Containers that outlive the command, through the CLI: run -d, ps, exec, logs, stop, kill, rm, create/start.

Every test starts real containers from the busybox image under a private ``PISH_ROOT`` / ``PISH_LIB``
(the ``pish_env`` fixture) and ends with the ``leaks`` check: no mount, cgroup, link, netns, state
record, layer or /tmp/pish* dir may outlive the test.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import pish_command
from helpers.containers import ID_RE, ps_json, run_detached, wait_for
from helpers.leaks import LIFECYCLE_BRIDGE

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(bridge=LIFECYCLE_BRIDGE, at_teardown=True)]

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer")

# sh as PID 1 ignores SIGTERM (PID 1 gets only the signals it handles), so `stop` has to SIGKILL it.
WRITER = "echo hello-from-pish; echo to-stderr >&2; echo secret-42 > /data.txt; sleep 100"


# -- helpers -----------------------------------------------------------------------------------------


def run_sh(pish: Callable[..., Any], image: Path, script: str, *options: str) -> str:
    """``pish run -d --net none [OPTIONS...] IMAGE sh -c SCRIPT``: return the 64-hex id it prints."""
    return run_detached(pish, "--net", "none", *options, str(image), "sh", "-c", script)


def ps_table(pish: Callable[..., Any], *flags: str) -> list[dict[str, str]]:
    """``pish ps [FLAGS]`` parsed by the header's column positions."""
    lines = pish("ps", *flags, check=True).stdout.splitlines()
    header = lines[0]
    columns = ["CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS", "CREATED", "ADDRESS"]
    starts = [header.index(c) for c in columns]
    rows = []
    for line in lines[1:]:
        cells = [line[s:e].strip() for s, e in zip(starts, [*starts[1:], None])]
        rows.append(dict(zip(columns, cells)))
    return rows




def traces(pish_env: Any, cid: str) -> dict[str, bool]:
    """Which host traces of container ``cid`` exist: state dir, writable layer, cgroup dirs, overlay mount."""
    layer = pish_env.lib / "containers" / cid
    with open("/proc/self/mountinfo") as f:
        mounted = any(str(layer) in line.split()[4] for line in f)
    found = {
        "state dir": (pish_env.root / "containers" / cid).exists(),
        "layer dir": layer.exists(),
        "overlay mount": mounted,
    }
    for controller in CGROUP_CONTROLLERS:
        found[f"cgroup {controller}"] = (CGROUP_ROOT / controller / "pish" / cid).is_dir()
    return found


# -- the whole life of one container ----------------------------------------------------------------


def test_run_detached_ps_exec_logs_stop_rm(pish, pish_env, busybox_tar, leaks):
    cid = run_sh(pish, busybox_tar, WRITER, "--name", "lc1")

    # ps shows it running: the table, --json and -q
    rows = [r for r in ps_table(pish) if r["NAME"] == "lc1"]
    assert len(rows) == 1
    assert rows[0]["CONTAINER ID"] == cid[:12]
    assert rows[0]["STATUS"] == "running"
    assert rows[0]["IMAGE"] == busybox_tar.name
    assert rows[0]["COMMAND"].startswith("sh -c echo hello")
    row = ps_json(pish)[cid]
    assert row["name"] == "lc1" and row["status"] == "running" and row["image"] == str(busybox_tar)
    assert pish("ps", "-q", check=True).stdout.split() == [cid[:12]]

    # every trace exists while it runs (so the checks after rm mean something)
    assert all(traces(pish_env, cid).values()), traces(pish_env, cid)

    # exec sees the file the container wrote; the exit status passes through
    wait_for(lambda: pish("exec", "lc1", "cat", "/data.txt").stdout == "secret-42\n", what="/data.txt")
    assert pish("exec", "lc1", "sh", "-c", "exit 5").returncode == 5
    missing = pish("exec", "lc1", "/no/such/command")
    assert missing.returncode == 127 and missing.stderr.startswith("pish: "), missing.stderr
    out = pish("exec", "-e", "FOO=bar", "-w", "/etc", "lc1", "sh", "-c", 'echo "$FOO $(pwd) $$"', check=True)
    foo, cwd, pid = out.stdout.split()
    assert (foo, cwd) == ("bar", "/etc")
    assert int(pid) > 1  # in the container's pid namespace, beside its PID 1
    # PID 1 is the container's command (busybox sh execs its last command: sleep)
    assert pish("exec", "lc1", "cat", "/proc/1/cmdline", check=True).stdout.split("\0")[0] in ("sh", "sleep")
    assert pish("exec", "lc1", "hostname", check=True).stdout.strip() == "lc1"

    # logs shows its stdout and stderr
    logs = pish("logs", "lc1", check=True).stdout
    assert "hello-from-pish\n" in logs and "to-stderr\n" in logs

    # inspect: JSON with spec, state, pids and the resources held
    info = json.loads(pish("inspect", "lc1", check=True).stdout)
    assert len(info) == 1 and info[0]["id"] == cid and info[0]["state"] == "running"
    assert info[0]["pid"] in info[0]["pids"]
    assert {r["kind"] for r in info[0]["resources"]} >= {"storage", "isolation", "limits"}

    # stop: sh ignores SIGTERM, so SIGKILL comes after -t 1; the exit status is recorded
    started = time.monotonic()
    stop = pish("stop", "-t", "1", "lc1", timeout=30)
    print(f"pish stop -t 1 took {time.monotonic() - started:.2f} s")
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() == "lc1"
    assert cid not in ps_json(pish)  # no longer running...
    assert ps_json(pish, "-a")[cid]["status"] == "exited (137)"  # ...but listed with -a, killed by SIGKILL
    exited = [r for r in ps_table(pish, "-a") if r["NAME"] == "lc1"]
    assert exited[0]["STATUS"] == "exited (137)"
    assert pish("logs", "lc1", check=True).stdout == logs  # the log outlives the process

    # the exited container holds no host resource any more but its record and its writable layer (kept
    # until rm, as docker keeps it, so that `pish start` runs it again on the same files)
    left = traces(pish_env, cid)
    assert left.pop("state dir") is True
    assert left.pop("layer dir") is True and left.pop("overlay mount") is True
    assert not any(left.values()), left
    held = json.loads(pish("inspect", cid, check=True).stdout)[0]["resources"]
    assert [(r["kind"], r["kept"]) for r in held] == [("storage", True)]

    # rm removes every trace
    rm = pish("rm", "lc1", check=True)
    assert rm.stdout.strip() == "lc1"
    assert not any(traces(pish_env, cid).values()), traces(pish_env, cid)
    assert cid not in ps_json(pish, "-a")


def test_stop_a_container_that_handles_sigterm(pish, busybox_tar, leaks):
    """A PID 1 with a SIGTERM handler exits by itself; stop records its own exit status."""
    cid = run_sh(pish, busybox_tar, "trap 'exit 3' TERM; echo ready; while :; do sleep 0.1; done",
                       "--name", "lc-term")
    wait_for(lambda: "ready" in pish("logs", cid).stdout, what="the trap to be set")
    assert pish("stop", "-t", "20", "lc-term", timeout=60).returncode == 0
    assert ps_json(pish, "-a")[cid]["status"] == "exited (3)"
    pish("rm", "lc-term", check=True)


def test_kill_sends_a_signal(pish, busybox_tar, leaks):
    cid = run_sh(pish, busybox_tar, "trap 'exit 7' USR1; echo ready; while :; do sleep 0.1; done",
                       "--name", "lc-kill")
    wait_for(lambda: "ready" in pish("logs", cid).stdout, what="the trap to be set")
    assert pish("kill", "-s", "USR1", "lc-kill", check=True).stdout.strip() == "lc-kill"
    wait_for(lambda: ps_json(pish, "-a")[cid]["status"] == "exited (7)", what="exit 7 after SIGUSR1")

    cid2 = run_sh(pish, busybox_tar, "sleep 100", "--name", "lc-kill9")
    pish("kill", "lc-kill9", check=True)  # SIGKILL by default
    wait_for(lambda: ps_json(pish, "-a")[cid2]["status"] == "exited (137)", what="exit 137 after SIGKILL")
    pish("rm", "lc-kill", "lc-kill9", check=True)


def test_rm_force_of_a_running_container(pish, pish_env, busybox_tar, leaks):
    cid = run_sh(pish, busybox_tar, "sleep 100", "--name", "lc-force")
    assert all(traces(pish_env, cid).values())
    assert pish("rm", "-f", "lc-force", check=True).stdout.strip() == "lc-force"
    assert not any(traces(pish_env, cid).values()), traces(pish_env, cid)


# -- create + start ----------------------------------------------------------------------------------
#
# `pish create` does not return until the container is started (see test_create_returns_when_created):
# the container's blocked PID 1 inherits the write end of the starter's report pipe. The create + start
# tests therefore run `pish create` in the background and find the container in `ps -a`, so they still
# show the created -> running states.


def create_in_background(pish, pish_env, tmp_path, name: str, *args: str) -> tuple[subprocess.Popen, str]:
    """Start ``pish create --name NAME ARGS...``; return it and the id once ``ps -a`` shows it created."""
    out, err = tmp_path / f"create-{name}.out", tmp_path / f"create-{name}.err"
    with open(out, "w") as o, open(err, "w") as e:  # files, not pipes: nothing can hold them open
        proc = subprocess.Popen([*pish_command(), "create", "--name", name, *args], stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, env={**os.environ, **pish_env.env})
    found: list[str] = []

    def created() -> bool:
        assert proc.poll() in (None, 0), f"pish create failed: {err.read_text()}"
        found[:] = [cid for cid, row in ps_json(pish, "-a").items()
                    if row["name"] == name and row["status"] == "created"]
        return bool(found)

    wait_for(created, what=f"container {name} to be created")
    return proc, found[0]


def test_create_then_start(pish, pish_env, busybox_tar, tmp_path, leaks):
    creating, cid = create_in_background(pish, pish_env, tmp_path, "lc-created", "--net", "none",
                                         str(busybox_tar), "sh", "-c", "echo started; sleep 100")
    try:
        assert cid not in ps_json(pish)  # plain ps lists running containers only
        assert [r["STATUS"] for r in ps_table(pish, "-a") if r["NAME"] == "lc-created"] == ["created"]
        assert pish("logs", "lc-created", check=True).stdout == ""  # its command has not run yet
        assert all(traces(pish_env, cid).values())  # but everything it needs is in place
        assert json.loads(pish("inspect", cid, check=True).stdout)[0]["state"] == "created"
        assert pish("exec", "lc-created", "true").returncode == 125  # nothing runs in it yet

        assert pish("start", "lc-created", check=True).stdout.strip() == "lc-created"
        assert ps_json(pish)[cid]["status"] == "running"
        wait_for(lambda: pish("logs", cid).stdout == "started\n", what="the command's output")
        assert pish("exec", "lc-created", "true").returncode == 0
        assert creating.wait(timeout=30) == 0  # the `pish create` is done now, and printed the id
        assert (tmp_path / "create-lc-created.out").read_text() == cid + "\n"
        row = ps_json(pish)[cid]
        # starting a running container changes nothing and is no error, as with docker
        assert pish("start", "lc-created", check=True).stdout.strip() == "lc-created"
        assert ps_json(pish)[cid] == row
    finally:
        pish("rm", "-f", "lc-created")
        with contextlib.suppress(subprocess.TimeoutExpired):
            creating.wait(timeout=30)
    assert not any(traces(pish_env, cid).values())


def test_rm_force_of_a_created_container(pish, pish_env, busybox_tar, tmp_path, leaks):
    creating, cid = create_in_background(pish, pish_env, tmp_path, "lc-created-rm", "--net", "none",
                                         str(busybox_tar), "sleep", "100")
    try:
        pish("rm", "-f", cid, check=True)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            creating.wait(timeout=30)
    assert not any(traces(pish_env, cid).values())
    assert ps_json(pish, "-a") == {}


def test_create_returns_when_created(pish, pish_env, busybox_tar, tmp_path, leaks):
    """`pish create` prints the id and returns once the container is created, as docker create does."""
    out, err = tmp_path / "create.out", tmp_path / "create.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([*pish_command(), "create", "--name", "lc-returns", "--net", "none",
                                 str(busybox_tar), "sleep", "100"], stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, env={**os.environ, **pish_env.env})
    try:
        try:
            code = proc.wait(timeout=15)  # a safety net: it takes well under a second when it works
        except subprocess.TimeoutExpired:
            status = ps_json(pish, "-a")
            pytest.fail(f"`pish create` had not returned after 15 s; ps -a: "
                        f"{[(r['name'], r['status']) for r in status.values()]}")
        assert code == 0, err.read_text()
        assert ID_RE.fullmatch(out.read_text().strip())
    finally:
        proc.kill()
        proc.wait()
        pish("rm", "-f", "lc-returns")


# -- --rm --------------------------------------------------------------------------------------------


def test_rm_flag_removes_the_container_when_it_exits(pish, pish_env, busybox_tar, leaks):
    quick = run_sh(pish, busybox_tar, "echo bye", "--rm")
    wait_for(lambda: not (pish_env.root / "containers" / quick).exists(), what="--rm to remove the record")
    assert quick not in ps_json(pish, "-a")

    slow = run_sh(pish, busybox_tar, "sleep 100", "--rm", "--name", "lc-autorm")
    assert ps_json(pish)[slow]["status"] == "running"
    pish("stop", "-t", "1", "lc-autorm", check=True)
    wait_for(lambda: not (pish_env.root / "containers" / slow).exists(), what="--rm after stop")
    assert ps_json(pish, "-a") == {}
    assert not any(traces(pish_env, slow).values())


# -- names and ids -----------------------------------------------------------------------------------


def test_generated_names_ids_and_prefixes(pish, busybox_tar, leaks):
    ids = [run_sh(pish, busybox_tar, "sleep 100") for _ in range(3)]
    assert len(set(ids)) == 3
    rows = ps_json(pish)
    names = [rows[cid]["name"] for cid in ids]
    assert len(set(names)) == 3, names
    for name in names:
        assert re.fullmatch(r"[a-z]+_[a-z]+(_[0-9]+)?", name), name

    # ps prints 12-character ids
    assert sorted(pish("ps", "-q", check=True).stdout.split()) == sorted(cid[:12] for cid in ids)
    table_ids = [r["CONTAINER ID"] for r in ps_table(pish)]
    assert sorted(table_ids) == sorted(cid[:12] for cid in ids)

    # a container answers to its name, its full id, its short id and any unique prefix
    target = ids[0]
    others = ids[1:]
    unique = next(n for n in range(1, 13) if not any(o.startswith(target[:n]) for o in others))
    for ref in (names[0], target, target[:12], target[:unique]):
        info = json.loads(pish("inspect", ref, check=True).stdout)
        assert [i["id"] for i in info] == [target], ref
        assert pish("exec", ref, "true").returncode == 0, ref
    pish("rm", "-f", target[:unique], check=True)
    assert target not in ps_json(pish, "-a")

    pish("rm", "-f", *others, check=True)
