"""Bad requests to the lifecycle commands: one line on stderr (``pish: ...``), exit 125, nothing changed.

"Nothing changed" is checked three ways around each bad command: the host snapshot (mounts, cgroups,
links, netns, records, layers, /tmp/pish*: what of it this test can have made), every container record
byte for byte, and the main process of every container.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.containers import run_detached
from helpers.leaks import LIFECYCLE_BRIDGE, LeakCheck

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(bridge=LIFECYCLE_BRIDGE, at_teardown=True)]

# -- helpers -----------------------------------------------------------------------------------------


def run_sleeper(pish: Callable[..., Any], image: Path, *options: str) -> str:
    """``pish run -d --net none [OPTIONS...] IMAGE sleep 100``: return the 64-hex id it prints."""
    return run_detached(pish, "--net", "none", *options, str(image), "sleep", "100")


def world(pish_env: Any, leaks: LeakCheck) -> dict[str, Any]:
    """Everything a bad command must leave alone."""
    records = {}
    for entry in sorted((pish_env.root / "containers").glob("*/state.json")):
        records[entry.parent.name] = entry.read_bytes()
    pids = {}
    for cid, raw in records.items():
        pid = json.loads(raw).get("pid")
        pids[cid] = (pid, pid is not None and Path(f"/proc/{pid}").exists())
    return {"host": leaks.leftovers(), "records": records, "pids": pids}


@pytest.fixture
def unchanged(pish, pish_env, leaks) -> Callable[..., Any]:
    """``unchanged(*args, match=REGEX)``: run ``pish ARGS``, check it fails as a bad request should, and
    that nothing changed; return the CompletedProcess."""

    def check(*args: str, match: str) -> Any:
        before = world(pish_env, leaks)
        proc = pish(*args, timeout=60)
        after = world(pish_env, leaks)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 125, f"pish {' '.join(args)}: exit {proc.returncode}; stderr {proc.stderr!r}"
        assert len(lines) == 1, f"pish {' '.join(args)}: wanted one line on stderr, got {proc.stderr!r}"
        assert lines[0].startswith("pish: "), lines[0]
        assert re.search(match, lines[0]), f"{lines[0]!r} does not match {match!r}"
        assert "Traceback" not in proc.stderr
        assert proc.stdout == "", f"pish {' '.join(args)} printed {proc.stdout!r}"
        assert after == before, f"pish {' '.join(args)} changed something"
        return proc

    return check




# -- the cases ---------------------------------------------------------------------------------------


def test_rm_of_a_running_container_needs_force(pish, busybox_tar, unchanged, cleanup, leaks):
    cleanup.append("bad-running")
    cid = run_sleeper(pish, busybox_tar, "--name", "bad-running")
    unchanged("rm", "bad-running", match=r"bad-running.*(running|-f)")
    unchanged("rm", cid[:12], match=r"bad-running.*(running|-f)")
    assert json.loads(pish("ps", "--json", check=True).stdout)[0]["status"] == "running"
    pish("rm", "-f", "bad-running", check=True)


def test_second_rm(pish, busybox_tar, unchanged, leaks):
    cid = run_sleeper(pish, busybox_tar, "--name", "bad-twice")
    pish("stop", "-t", "1", "bad-twice", check=True)
    pish("rm", "bad-twice", check=True)
    unchanged("rm", "bad-twice", match=r"no such container: bad-twice")
    unchanged("rm", "-f", "bad-twice", match=r"no such container")
    unchanged("rm", cid, match=r"no such container")


def test_unknown_name(pish, busybox_tar, unchanged, cleanup, leaks):
    cleanup.append("bad-bystander")
    run_sleeper(pish, busybox_tar, "--name", "bad-bystander")  # something that must stay as it is
    unchanged("rm", "no-such-thing", match=r"no such container: no-such-thing")
    unchanged("rm", "-f", "no-such-thing", match=r"no such container: no-such-thing")
    unchanged("exec", "no-such-thing", "true", match=r"no such container: no-such-thing")
    unchanged("exec", "-i", "no-such-thing", "true", match=r"no such container")
    unchanged("stop", "no-such-thing", match=r"no such container")
    unchanged("kill", "no-such-thing", match=r"no such container")
    unchanged("logs", "no-such-thing", match=r"no such container")
    unchanged("inspect", "no-such-thing", match=r"no such container")
    unchanged("start", "no-such-thing", match=r"no such container")
    unchanged("exec", "g" * 12, "true", match=r"no such container")  # not hex: a name, not a prefix


def test_exec_into_a_stopped_container(pish, busybox_tar, unchanged, cleanup, leaks):
    cleanup.append("bad-stopped")
    cid = run_sleeper(pish, busybox_tar, "--name", "bad-stopped")
    pish("stop", "-t", "1", "bad-stopped", check=True)
    unchanged("exec", "bad-stopped", "true", match=r"bad-stopped is not running")
    unchanged("exec", cid[:12], "cat", "/etc/passwd", match=r"is not running")
    unchanged("kill", "bad-stopped", match=r"is not running")
    assert json.loads(pish("ps", "-a", "--json", check=True).stdout)[0]["status"] == "exited (137)"


def test_two_runs_with_one_name(pish, busybox_tar, unchanged, cleanup, leaks):
    cleanup.append("bad-dup")
    cid = run_sleeper(pish, busybox_tar, "--name", "bad-dup")
    unchanged("run", "-d", "--net", "none", "--name", "bad-dup", str(busybox_tar), "sleep", "100",
              match=r"name 'bad-dup' is already in use by " + cid[:12])
    unchanged("run", "--net", "none", "--name", "bad-dup", str(busybox_tar), "true",  # the foreground too
              match=r"already in use")
    rows = json.loads(pish("ps", "-a", "--json", check=True).stdout)
    assert [(r["id"], r["name"]) for r in rows] == [(cid, "bad-dup")]

    # an exited container keeps its name until it is removed, as docker's does
    pish("stop", "-t", "1", "bad-dup", check=True)
    unchanged("run", "-d", "--net", "none", "--name", "bad-dup", str(busybox_tar), "sleep", "100",
              match=r"already in use")


def test_ambiguous_id_prefix(pish, busybox_tar, unchanged, cleanup, leaks):
    """Ids are random: start containers until two share their first hex digit (a few do it: 16 digits)."""
    by_first: dict[str, list[str]] = {}
    for _ in range(17):  # 17 ids over 16 digits: two must share one
        cid = run_sleeper(pish, busybox_tar)
        cleanup.append(cid)
        by_first.setdefault(cid[0], []).append(cid)
        if len(by_first[cid[0]]) == 2:
            break
    first, second = by_first[cid[0]]
    prefix = os.path.commonprefix([first, second])
    assert prefix
    for cmd in (("rm", "-f"), ("rm",), ("exec",), ("stop", "-t", "1"), ("kill",), ("inspect",), ("logs",)):
        args = [*cmd, prefix]
        if cmd == ("exec",):
            args += ["true"]
        unchanged(*args, match=rf"prefix '{prefix}' is ambiguous")
    # one more digit (where they differ) is unique again
    assert pish("exec", first[: len(prefix) + 1], "true").returncode == 0
    running = json.loads(pish("ps", "--json", check=True).stdout)
    assert {first, second} <= {r["id"] for r in running}


@pytest.mark.parametrize("flags, match", [
    (("-w", "rel"), r"invalid -w 'rel': .*absolute"),
    (("--memory", "1"), r"invalid --memory '1': .*minimum.* 6m"),
    (("--memory", "5m"), r"invalid --memory '5m'"),
    (("--memory", "99999999999999999999t"), r"invalid --memory '99999999999999999999t': too large"),
    (("--userns", "0:0:65536"), r"--userns 0:0:65536: maps the host's root"),
    (("--userns", "0:0:4294967295"), r"--userns '?0:0:4294967295'?: maps (the host's root|every id)"),
])
def test_flags_a_fault_campaign_found(pish, busybox_tar, unchanged, flags, match, leaks):
    """Each refused before anything is made, in the foreground and detached, naming its flag."""
    unchanged("run", "--net", "none", *flags, str(busybox_tar), "true", match=match)
    unchanged("run", "-d", "--net", "none", *flags, str(busybox_tar), "true", match=match)
    unchanged("create", "--net", "none", *flags, str(busybox_tar), "true", match=match)


def test_exec_with_a_relative_workdir(pish, busybox_tar, unchanged, cleanup, leaks):
    cleanup.append("bad-workdir")
    run_sleeper(pish, busybox_tar, "--name", "bad-workdir")
    unchanged("exec", "-w", "tmp", "bad-workdir", "pwd", match=r"invalid -w 'tmp': .*absolute")
    assert pish("exec", "-w", "/tmp", "bad-workdir", "pwd", check=True).stdout == "/tmp\n"


def test_flags_at_their_limits_still_run(pish, busybox_tar, leaks):
    out = pish("run", "--net", "none", "--memory", "6m", "-w", "/tmp", str(busybox_tar), "pwd", check=True)
    assert out.stdout == "/tmp\n"


def test_userns_of_the_host_root_with_privileged(busybox_tar, unchanged, leaks):
    """--privileged lets a mapping reach host root; the whole identity map is still no namespace at all
    (the kernel refuses id-mapped mounts with it): one line naming the flag, not a bare EPERM from init."""
    unchanged("run", "--net", "none", "--privileged", "--userns", "0:0:4294967295", str(busybox_tar), "true",
              match=r"invalid --userns '0:0:4294967295': maps every id to itself")
