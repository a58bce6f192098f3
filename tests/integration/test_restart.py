"""Containers that run again (issue 14): ``pish start`` of an exited container, ``pish restart``, and
``--restart`` policies carried out by the supervisor with docker's back-off.

Real containers from the busybox image under a private ``PISH_ROOT``/``PISH_LIB``; the ``leaks`` check
ends every test (an exited container keeps its root filesystem until ``pish rm``: nothing may outlive rm).
Times are never asserted, only orders and counts; the back-off is seen in the order of the gaps between
events, which double (100, 200, 400 ms) while a container start here takes a few tens of ms.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.containers import ps_json, refused, run_detached, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(at_teardown=True)]




def events_of(pish: Any, name: str) -> list[dict[str, Any]]:
    """Every kept event of container ``name`` so far, oldest first (``pish events --since 0 --until now``)."""
    out = pish("events", "--since", "0", "--until", f"{time.time():.3f}", "--format", "json",
               "--filter", f"container={name}", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]






def layer(pish_env: Any, cid: str) -> Path:
    return Path(pish_env.lib) / "containers" / cid


# -- start of an exited container, restart ----------------------------------------------------------


def test_start_runs_an_exited_container_again_on_its_own_files(pish, pish_env, busybox_tar, cleanup):
    cleanup.append("rs-again")
    cid = run_detached(pish, "--net", "none", "--name", "rs-again", str(busybox_tar),
                       "sh", "-c", "echo run >> /runs; wc -l < /runs; exit 3")
    assert pish("wait", "rs-again", check=True).stdout == "3\n"
    assert ps_json(pish, "-a")[cid]["status"] == "exited (3)"
    assert layer(pish_env, cid).is_dir()  # the writable layer outlives the process, as docker's

    assert pish("gc", check=True).stdout == ""  # an exited container's kept root filesystem is not debris
    first = json.loads(pish("inspect", cid, check=True).stdout)[0]

    assert pish("start", "rs-again", check=True).stdout == "rs-again\n"
    assert pish("wait", cid, check=True).stdout == "3\n"
    # the same container: id, name, spec; the file the first run wrote is still there
    assert pish("logs", "rs-again", check=True).stdout.split() == ["1", "2"]
    again = json.loads(pish("inspect", cid, check=True).stdout)[0]
    assert (again["id"], again["name"], again["spec"]) == (first["id"], first["name"], first["spec"])
    assert again["started"] > first["started"]
    actions = [e["Action"] for e in events_of(pish, "rs-again")]
    assert actions == ["create", "start", "die", "start", "die"], actions

    pish("rm", "rs-again", check=True)
    assert not layer(pish_env, cid).exists()
    assert [e["Action"] for e in events_of(pish, cid)][-1] == "destroy"


def test_restart_command(pish, busybox_tar, cleanup):
    cleanup.append("rs-cmd")
    cid = run_detached(pish, "--net", "none", "--name", "rs-cmd", str(busybox_tar),
                       "sh", "-c", "date +%s%N >> /starts; sleep 100")
    wait_for(lambda: pish("exec", "rs-cmd", "cat", "/starts").stdout.count("\n") == 1, what="the first start")
    pid = json.loads(pish("inspect", cid, check=True).stdout)[0]["pid"]

    assert pish("restart", "-t", "1", "rs-cmd", check=True, timeout=60).stdout == "rs-cmd\n"
    row = ps_json(pish)[cid]
    assert row["status"] == "running" and row["name"] == "rs-cmd"
    info = json.loads(pish("inspect", cid, check=True).stdout)[0]
    assert info["pid"] != pid
    wait_for(lambda: pish("exec", "rs-cmd", "cat", "/starts").stdout.count("\n") == 2, what="the second start")
    actions = [e["Action"] for e in events_of(pish, "rs-cmd")]
    assert actions == ["create", "start", "kill", "kill", "die", "stop", "start", "restart"], actions

    # a created container is started, not restarted; an unknown one is one line
    refused(pish, "restart", "rs-nope", match="no such container")


def test_start_refuses_what_cannot_start(pish, busybox_tar, cleanup):
    refused(pish, "start", "rs-missing", match="no such container: rs-missing")
    cleanup.append("rs-running")
    cid = run_detached(pish, "--net", "none", "--name", "rs-running", str(busybox_tar), "sleep", "100")
    pid = json.loads(pish("inspect", cid, check=True).stdout)[0]["pid"]
    assert pish("start", "rs-running", check=True).stdout == "rs-running\n"  # running: nothing to do
    assert json.loads(pish("inspect", cid, check=True).stdout)[0]["pid"] == pid
    cleanup.append("rs-autorm")
    auto = run_detached(pish, "--net", "none", "--rm", "--name", "rs-autorm", str(busybox_tar), "sleep", "100")
    assert pish("rm", "-f", auto, check=True)
    refused(pish, "start", "rs-autorm", match="no such container")


# -- --restart policies -----------------------------------------------------------------------------


def test_on_failure_3_runs_4_times_with_a_growing_back_off(pish, pish_env, busybox_tar, cleanup):
    cleanup.append("rs-fail")
    cid = run_detached(pish, "--net", "none", "--name", "rs-fail", "--restart", "on-failure:3", str(busybox_tar),
                       "sh", "-c", "echo ran >> /runs; exit 2")
    assert pish("wait", "rs-fail", check=True, timeout=60).stdout == "2\n"  # the last of the four runs

    events = events_of(pish, "rs-fail")
    actions = [e["Action"] for e in events]
    assert actions == ["create"] + ["start", "die", "restart"] * 3 + ["start", "die"], actions
    assert all(e["Actor"]["Attributes"]["exitCode"] == "2" for e in events if e["Action"] == "die")
    assert [e["Actor"]["Attributes"]["restartCount"] for e in events if e["Action"] == "restart"] == ["1", "2", "3"]
    # the back-off: the wait between a death and the next restart doubles, so no gap is shorter than
    # the one before (100, 200, 400 ms against a few ms of noise)
    stamps = [e["timeNano"] for e in events]
    gaps = [stamps[i + 1] - stamps[i] for i, a in enumerate(actions) if a == "die" and i + 1 < len(actions)]
    assert len(gaps) == 3 and gaps == sorted(gaps), gaps
    print("die -> restart gaps (ms):", [round(g / 1e6) for g in gaps])

    info = json.loads(pish("inspect", cid, check=True).stdout)[0]
    assert info["RestartCount"] == 3 and info["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert ps_json(pish, "-a")[cid]["restart_count"] == 3
    assert ps_json(pish, "-a")[cid]["status"] == "exited (2)"
    pish("start", "rs-fail", check=True)  # a new start: the same files, the policy counts from 0 again
    assert pish("wait", "rs-fail", check=True, timeout=60).stdout == "2\n"
    assert pish("exec", "rs-fail", "true").returncode == 125
    assert len([e for e in events_of(pish, "rs-fail") if e["Action"] == "start"]) == 8
    pish("rm", "rs-fail", check=True)


def test_on_failure_does_not_restart_a_success(pish, busybox_tar, cleanup):
    cleanup.append("rs-ok")
    run_detached(pish, "--net", "none", "--name", "rs-ok", "--restart", "on-failure", str(busybox_tar), "true")
    assert pish("wait", "rs-ok", check=True).stdout == "0\n"
    assert [e["Action"] for e in events_of(pish, "rs-ok")] == ["create", "start", "die"]


def test_always_restarts_until_stop(pish, busybox_tar, cleanup):
    """``always`` restarts even a success; ``ps`` shows it restarting; ``stop`` ends it for good."""
    cleanup.append("rs-always")
    cid = run_detached(pish, "--net", "none", "--name", "rs-always", "--restart", "always", str(busybox_tar),
                       "sh", "-c", "sleep 0.2; exit 0")
    wait_for(lambda: ps_json(pish, "-a")[cid]["restart_count"] >= 2, what="two restarts")
    seen = {ps_json(pish, "-a")[cid]["status"] for _ in range(40)}
    assert seen <= {"running", "restarting (0)", "created"}, seen  # created: a new run being set up
    assert pish("stop", "-t", "1", "rs-always", check=True, timeout=60).stdout == "rs-always\n"
    row = ps_json(pish, "-a")[cid]
    assert row["status"].startswith("exited ("), row
    count = row["restart_count"]
    assert pish("wait", "rs-always", check=True).stdout.strip().isdigit()  # its supervisor has ended
    assert ps_json(pish, "-a")[cid]["restart_count"] == count  # and it was not started again
    assert events_of(pish, "rs-always")[-1]["Action"] == "stop"


def test_unless_stopped_ends_with_kill(pish, busybox_tar, cleanup):
    cleanup.append("rs-unless")
    cid = run_detached(pish, "--net", "none", "--name", "rs-unless", "--restart", "unless-stopped",
                       str(busybox_tar), "sleep", "100")
    assert pish("kill", "rs-unless", check=True).stdout == "rs-unless\n"
    assert pish("wait", "rs-unless", check=True).stdout == "137\n"  # the supervisor ended: no restart
    assert ps_json(pish, "-a")[cid]["restart_count"] == 0
    # a later start clears the user's stop: the policy applies again
    pish("start", "rs-unless", check=True)
    pid = json.loads(pish("inspect", cid, check=True).stdout)[0]["pid"]
    os.kill(pid, 9)  # not the user's pish kill: a crash, which the policy restarts
    wait_for(lambda: ps_json(pish, "-a")[cid]["restart_count"] == 1 and ps_json(pish, "-a")[cid]["status"] == "running",
             what="the restart after a crash")


def test_rm_force_while_restarting(pish, pish_env, busybox_tar, cleanup):
    cleanup.append("rs-rmf")
    cid = run_detached(pish, "--net", "none", "--name", "rs-rmf", "--restart", "always", str(busybox_tar),
                       "sh", "-c", "exit 1")
    wait_for(lambda: ps_json(pish, "-a")[cid]["restart_count"] >= 3, what="three restarts")
    assert pish("rm", "-f", "rs-rmf", check=True, timeout=60).stdout == "rs-rmf\n"
    assert cid not in ps_json(pish, "-a")
    assert not layer(pish_env, cid).exists()


@pytest.mark.parametrize(("flags", "match"), [
    (("-d", "--restart", "sometimes"), r"invalid --restart 'sometimes'"),
    (("-d", "--restart", "on-failure:-1"), r"invalid --restart 'on-failure:-1'"),
    (("-d", "--restart", "on-failure:x"), r"invalid --restart 'on-failure:x'"),
    (("-d", "--restart", "always:3"), r"only on-failure takes"),
    (("-d", "--rm", "--restart", "always"), r"--restart always and --rm conflict"),
    (("--restart", "always"), r"--restart always needs -d"),
])
def test_bad_restart_values(pish, pish_env, busybox_tar, leaks, flags, match):
    refused(pish, "run", *flags, "--net", "none", str(busybox_tar), "true", match=match)
    assert not (Path(pish_env.root) / "containers").exists() or not os.listdir(Path(pish_env.root) / "containers")
    refused(pish, "create", "--restart", "nope", "--net", "none", str(busybox_tar), "true", match="invalid --restart")


def test_a_start_that_fails_leaves_the_container_exited_to_start_again(pish, busybox_tar, cleanup, tmp_path):
    """A second run whose set-up fails (its volume's directory gone) leaves an exited container with its
    files, as docker's: it was left 'creating' with no supervisor (dead), and `pish gc` then deleted it."""
    src = tmp_path / "vol"
    src.mkdir()
    cleanup.append("rs-fails")
    cid = run_detached(pish, "--net", "none", "--name", "rs-fails", "-v", f"{src}:/data", str(busybox_tar),
                       "sh", "-c", "echo run >> /runs; exit 0")
    assert pish("wait", "rs-fails", check=True).stdout == "0\n"
    src.rmdir()
    failed = pish("start", "rs-fails")
    assert failed.returncode != 0 and failed.stderr.startswith("pish: "), failed.stderr
    assert ps_json(pish, "-a")[cid]["status"].startswith("exited"), ps_json(pish, "-a")[cid]
    pish("gc", check=True)
    assert cid in ps_json(pish, "-a")
    src.mkdir()
    assert pish("start", "rs-fails", check=True).stdout == "rs-fails\n"
    assert pish("wait", "rs-fails", check=True).stdout == "0\n"
    pish("cp", "rs-fails:/runs", str(tmp_path / "runs"), check=True)
    assert (tmp_path / "runs").read_text() == "run\nrun\n"  # the same files, run twice
    pish("rm", "rs-fails", check=True)


def test_a_failed_start_that_mounted_the_kept_layer_again_keeps_it(pish, pish_env, busybox_tar, cleanup, tmp_path):
    """A kept overlay no longer mounted (rootless: it went with the first supervisor's namespace; here
    unmounted by hand) is mounted again by the next start; when that start then failed, the new mount's
    release deleted the layer: every file the container wrote was lost."""
    import subprocess

    src = tmp_path / "vol"
    src.mkdir()
    cleanup.append("rs-remount")
    cid = run_detached(pish, "--net", "none", "--name", "rs-remount", "-v", f"{src}:/data", str(busybox_tar),
                       "sh", "-c", "echo run >> /runs")
    assert pish("wait", "rs-remount", check=True).stdout == "0\n"
    subprocess.run(["umount", str(layer(pish_env, cid) / "merged")], check=True)
    src.rmdir()
    assert pish("start", "rs-remount").returncode != 0
    assert (layer(pish_env, cid) / "upper" / "runs").read_text() == "run\n"
    src.mkdir()
    assert pish("start", "rs-remount", check=True).stdout == "rs-remount\n"
    assert pish("wait", "rs-remount", check=True).stdout == "0\n"
    pish("cp", "rs-remount:/runs", str(tmp_path / "runs"), check=True)
    assert (tmp_path / "runs").read_text() == "run\nrun\n"
    pish("rm", "rs-remount", check=True)
    assert not layer(pish_env, cid).exists()
