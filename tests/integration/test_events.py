"""``pish events`` (issue 14): the log pish keeps of what happens to containers, read back with
--since/--until/--filter/--format, streamed until Ctrl-C, bounded by rotation; and ``pish wait`` on a
``--rm`` container, whose exit code outlives its record in its ``die`` event.

Real containers from the busybox image under a private ``PISH_ROOT``; the ``leaks`` check ends every test.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from helpers import pish_command
from helpers.containers import refused, run_detached

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(at_teardown=True)]

EVENT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}[+-]\d\d:\d\d container (\w+) ([0-9a-f]{64})( \(.*\))?")


def read_events(pish: Any, *flags: str) -> list[dict[str, Any]]:
    out = pish("events", "--since", "0", "--until", f"{time.time():.3f}", "--format", "json", *flags,
               check=True).stdout
    return [json.loads(line) for line in out.splitlines()]




def test_a_containers_life_in_events(pish, pish_env, busybox_tar, leaks):
    cid = run_detached(pish, "--net", "none", "--name", "ev-life", str(busybox_tar), "sleep", "100")
    other = run_detached(pish, "--net", "none", "--name", "ev-other", str(busybox_tar), "true")
    pish("pause", "ev-life", check=True)
    pish("unpause", "ev-life", check=True)
    pish("rename", "ev-life", "ev-renamed", check=True)
    pish("kill", "-s", "KILL", "ev-renamed", check=True)
    assert pish("wait", "ev-renamed", check=True).stdout == "137\n"
    assert pish("wait", "ev-other", check=True).stdout == "0\n"
    between = time.time()
    pish("rm", "ev-renamed", "ev-other", check=True)

    mine = read_events(pish, "--filter", f"container={cid}")
    assert [e["Action"] for e in mine] == ["create", "start", "pause", "unpause", "rename", "kill", "die", "destroy"]
    assert {e["Actor"]["ID"] for e in mine} == {cid} and {e["Type"] for e in mine} == {"container"}
    # the name at the time: the supervisor's die event too knows of the rename
    assert [e["Actor"]["Attributes"]["name"] for e in mine] == ["ev-life"] * 4 + ["ev-renamed"] * 4
    assert mine[4]["Actor"]["Attributes"]["oldName"] == "ev-life"
    assert mine[5]["Actor"]["Attributes"]["signal"] == "9"
    assert mine[6]["Actor"]["Attributes"]["exitCode"] == "137"
    stamps = [e["timeNano"] for e in mine]
    assert stamps == sorted(stamps) and all(e["time"] == e["timeNano"] // 10**9 for e in mine)

    # by id prefix too; filters of one key are alternatives, of two keys both must hold
    assert [e["Action"] for e in read_events(pish, "--filter", f"container={other[:12]}")] == \
        ["create", "start", "die", "destroy"]
    dies = read_events(pish, "--filter", "event=die", "--filter", "container=ev-renamed", "--filter", "container=ev-other")
    assert sorted(e["Actor"]["ID"] for e in dies) == sorted([cid, other])
    # --since/--until cut by time
    late = pish("events", "--since", f"{between:.6f}", "--until", f"{time.time():.3f}", "--format", "json",
                check=True).stdout.splitlines()
    assert sorted(json.loads(line)["Actor"]["ID"] for line in late) == sorted([cid, other])
    assert {json.loads(line)["Action"] for line in late} == {"destroy"}

    # the text format, docker's: time, type, action, id, (attributes)
    text = pish("events", "--since", "0", "--until", "0s", "--filter", f"container={cid}", check=True).stdout
    lines = text.splitlines()
    assert len(lines) == 8
    for line in lines:
        assert EVENT_LINE.fullmatch(line), line
    assert "exitCode=137" in lines[6] and "name=ev-renamed" in lines[6]


def test_an_oom_kill_is_an_event(pish, busybox_tar, leaks):
    proc = pish("run", "--net", "none", "--name", "ev-oom", "--memory", "32m", str(busybox_tar),
                "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1")
    assert proc.returncode == 137, proc.stderr
    actions = [e["Action"] for e in read_events(pish, "--filter", "container=ev-oom")]
    assert actions == ["create", "start", "oom", "die", "destroy"], actions


def test_events_stream_until_ctrl_c(pish, pish_env, busybox_tar, leaks):
    """Without --since/--until: only new events, as they happen, until SIGINT (exit 0, no traceback)."""
    pish("run", "--net", "none", "--name", "ev-before", str(busybox_tar), "true", check=True)
    proc = subprocess.Popen([*pish_command(), "events", "--format", "json", "--filter", "event=die"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **pish_env.env})
    try:
        time.sleep(0.5)  # let it open the log (an event before that would be "old": not shown)
        pish("run", "--net", "none", "--name", "ev-stream", str(busybox_tar), "sh", "-c", "exit 4", check=4)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the event is there: no timing assumed
        event = json.loads(line)
        assert (event["Action"], event["Actor"]["Attributes"]["name"], event["Actor"]["Attributes"]["exitCode"]) \
            == ("die", "ev-stream", "4")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert out == "" and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_until_in_the_future_stops_there(pish, busybox_tar, leaks):
    started = time.monotonic()
    proc = pish("events", "--until", f"{time.time() + 1:.3f}", check=True, timeout=30)
    assert proc.stdout == ""
    assert time.monotonic() - started < 25  # it ended by itself (a safety net, not a timing assertion)


def test_wait_on_a_removed_rm_container(pish, pish_env, busybox_tar, leaks):
    """``pish wait`` of a ``--rm`` container returns its exit code, though its record is gone by then."""
    cid = run_detached(pish, "--net", "none", "--rm", "--name", "ev-rm", str(busybox_tar),
                       "sh", "-c", "sleep 1; exit 5")
    assert pish("wait", "ev-rm", check=True).stdout == "5\n"
    assert not (pish_env.root / "containers" / cid).exists()
    assert [e["Action"] for e in read_events(pish, "--filter", f"container={cid}")] == \
        ["create", "start", "die", "destroy"]


def test_the_log_is_rotated_and_concurrent_writers_never_tear_a_line(pish, pish_env, monkeypatch, leaks):
    """Many processes emitting at once with a small bound: every line whole, the log bounded, order kept."""
    monkeypatch.setenv("PISH_EVENTS_MAX_BYTES", "8192")
    script = ("import sys\nfrom pish_core import events\n"
              "for i in range(150): events.emit('pause', 'f' * 64, f'w{sys.argv[1]}', n=i)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)]) for w in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    current, old = pish_env.root / "events.jsonl", pish_env.root / "events.jsonl.1"
    # the newest file may be gone: the last write rotated it (the next write makes it again)
    assert old.exists() and old.stat().st_size <= 8192 + 400 * 4
    assert not current.exists() or current.stat().st_size <= 8192 + 400 * 4
    for path in (p for p in (current, old) if p.exists()):
        for line in path.read_text().splitlines():
            json.loads(line)  # whole lines only
    kept = read_events(pish)
    assert 0 < len(kept) < 600  # bounded: the oldest went with the rotations
    lasts = []
    for w in range(4):  # each writer's events in its order (an early finisher's may all be rotated away)
        ns = [int(e["Actor"]["Attributes"]["n"]) for e in kept if e["Actor"]["Attributes"]["name"] == f"w{w}"]
        assert ns == sorted(ns), (w, ns)
        lasts += ns[-1:]
    assert 149 in lasts  # the newest events are the ones kept


@pytest.mark.parametrize(("flags", "match"), [
    (("--since", "yesterday"), r"invalid --since 'yesterday'"),
    (("--until", "12:00:00x"), r"invalid --until"),
    (("--filter", "colour=red"), r"invalid --filter 'colour=red'"),
    (("--filter", "container"), r"invalid --filter 'container'"),
    (("--format", "yaml"), r"invalid --format 'yaml'"),
])
def test_bad_events_flags(pish, flags, match, leaks):
    refused(pish, "events", *flags, match=match)
