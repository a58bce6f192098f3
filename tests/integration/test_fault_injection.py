"""Fault injection: SIGKILL ``pish run`` or a container's supervisor anywhere in set-up, then ``pish gc``.

Each trial starts ``pish run -d --net bridge --network pisht3 --ip 10.0.5.N/24 --memory 64m IMG sleep 100``
(every fifth one a foreground ``pish run``), with the test hook of ``pish_core/runtime.py``:
``PISH_TEST_STAGES`` names a file each stage reached is appended to (storage, isolation, limits, network,
running) and ``PISH_TEST_STAGE_DELAY`` pauses after each, which widens the windows between them. At a
chosen moment (a random delay from the start, or just after a chosen stage shows up in the file) the test
SIGKILLs one process:

- ``supervisor``: the detached container's supervisor (its pid from ``supervisor_pid`` in the state
  record, once the supervisor has written it there);
- ``starter``: the ``pish run -d`` command itself, which waits for the supervisor's report;
- ``run``: a foreground ``pish run``, which is its container's supervisor.

Then it waits for what is left to settle, runs ``pish gc``, and removes with ``pish rm -f`` what is still
alive (a container whose starter was killed after it was already running). After every trial, and once
more after all of them, the host must be as the snapshot taken before the first: mounts, cgroups,
links, netns, container records, layers and temp dirs (judged on what this test made, see
``tests/helpers/leaks.py``), and no process of ours may be left. The stage each kill landed in is
printed in a summary; the kills must land in at least three different stages.

``PISH_FAULT_SEED`` replays a run (the seed is printed in the summary); ``PISH_FAULT_TRIALS`` changes the
number of trials (at least 30 by default).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import pish_command
from helpers.leaks import LIFECYCLE_BRIDGE as BRIDGE
from helpers.leaks import LeakCheck, skip_if_bridge_in_use

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(bridge=BRIDGE, at_teardown=True)]

SUBNET = "10.0.5"
STAGES = ("storage", "isolation", "limits", "network", "running")
STAGE_DELAY = 0.06  # seconds the supervisor pauses after each stage
TRIALS = int(os.environ.get("PISH_FAULT_TRIALS", "36"))
SETTLE = 30.0  # safety net for waits (not a timing assertion)

# -- one trial ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Trial:
    n: int
    mode: str  # "detached" or "foreground"
    victim: str  # "supervisor", "starter" (of run -d) or "run" (foreground)
    trigger: str  # a stage name, or "random"
    wait: float  # seconds: after the trigger stage, or from the start for "random"
    landed: str = ""  # the last stage reached when the kill landed ("start" if none yet)
    stages: list[str] = dataclasses.field(default_factory=list)  # every stage reached, after all
    run_exit: int | None = None
    gc_cleaned: int = 0
    after_gc: list[str] = dataclasses.field(default_factory=list)  # `ps -a` statuses gc left (removed with rm -f)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ip(self) -> str:
        return f"{SUBNET}.{100 + self.n}/24"


def plan(rng: random.Random, count: int) -> list[Trial]:
    """Vary what is killed and when: even trials after a stage (round robin), odd ones at a random time."""
    trials = []
    for n in range(count):
        mode = "foreground" if n % 5 == 4 else "detached"
        victim = "run" if mode == "foreground" else ("starter" if n % 3 == 2 else "supervisor")
        if n % 2 == 0:
            trigger, wait = STAGES[(n // 2) % len(STAGES)], rng.uniform(0, 1.5 * STAGE_DELAY)
        else:
            trigger, wait = "random", rng.uniform(0.0, 0.9)  # set-up to running takes about 0.5-0.8 s here
        trials.append(Trial(n, mode, victim, trigger, wait))
    return trials


def read_stages(path: Path) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().split()
    return []


def supervisor_pid(pish_env: Any, starter: int) -> int | None:
    """The supervisor pid a detached container's record names, once it is not the starter's any more
    (``prepare`` writes the starter's pid; the supervisor puts its own at its first journal entry)."""
    for record in (pish_env.root / "containers").glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError):
            pid = json.loads(record.read_text()).get("supervisor_pid")
            if pid and pid != starter:
                return int(pid)
    return None


def our_processes(pish_env: Any, token: str) -> list[str]:
    """Processes of this test's containers or pish commands: pish's own processes (supervisors, starters,
    a container's PID 1 before it execs) carry our PISH_ROOT; a container's command carries ``token``."""
    marks = {f"PISH_ROOT={pish_env.root}".encode(), token.encode()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = set(Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"))
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if environ & marks:
            found.append(f"pid {entry}: {cmdline.strip()}")
    return found


def settle(pish_env: Any, proc: subprocess.Popen[bytes]) -> None:
    """Wait until nothing of the trial is still on its way: the starter has exited and every container
    left is either running or has no live supervisor."""
    from pish_core import state

    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=SETTLE)
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        busy = [s for s in state.list_all() if s.status != "running" and state.supervisor_alive(s.id)]
        if not busy:
            return
        time.sleep(0.02)


def run_trial(t: Trial, image: Path, pish_env: Any, workdir: Path, token: str, leaks: LeakCheck) -> None:
    stages_file = workdir / f"stages-{t.n}"
    env = {**os.environ, **pish_env.env, "PISH_TEST_STAGES": str(stages_file),
           "PISH_TEST_STAGE_DELAY": str(STAGE_DELAY)}
    argv = [*pish_command(), "run", *(["-d"] if t.mode == "detached" else []), "--log-level", "warning",
            "--net", "bridge", "--network", BRIDGE, "--ip", t.ip, "--memory", "64m", "-e", token,
            str(image), "sleep", "100"]
    err_file = workdir / f"err-{t.n}"
    with open(workdir / f"out-{t.n}", "wb") as out, open(err_file, "wb") as err:  # files, not pipes: a
        started = time.monotonic()  # survivor must not hold them
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
    try:
        # 1. wait for the moment
        if t.trigger == "random":
            time.sleep(max(0.0, started + t.wait - time.monotonic()))
        else:
            deadline = time.monotonic() + SETTLE
            while t.trigger not in read_stages(stages_file) and proc.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            time.sleep(t.wait)
        # 2. find the victim and kill it
        victim: int | None = proc.pid
        if t.victim == "supervisor":
            deadline = time.monotonic() + SETTLE
            while (victim := supervisor_pid(pish_env, proc.pid)) is None and time.monotonic() < deadline:
                time.sleep(0.001)
        if victim is None:
            t.problems.append("no supervisor pid ever showed up in the state record")
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            stages = read_stages(stages_file)
            t.landed = stages[-1] if stages else "start"
        leaks.scan()  # note the container id now, whatever happens to its record later
        # 3. let the rest settle, then collect
        settle(pish_env, proc)
        t.run_exit = proc.returncode
        gc = subprocess.run([*pish_command(), "gc"], capture_output=True, text=True, env=env, check=False,
                            timeout=60)
        if gc.returncode != 0:
            t.problems.append(f"pish gc: exit {gc.returncode}: {gc.stderr.strip()}")
        t.gc_cleaned = len(gc.stdout.split())
        if t.run_exit == 125:  # the starter heard of the supervisor's death: one line, as every error
            said = err_file.read_text().splitlines()
            if len(said) != 1 or not said[0].startswith("pish: "):
                t.problems.append(f"pish run said {said!r}, wanted one line 'pish: ...'")
        # What gc left: a container whose supervisor lives (its starter was killed, not the supervisor),
        # which `rm -f` removes. With the starter killed the supervisor may still be on its way down (see
        # test_killing_the_starter_keeps_the_container), so it may be dead by now: `rm -f` handles that too.
        for row in json.loads(subprocess.run([*pish_command(), "ps", "-a", "--json"], capture_output=True,
                                             env=env, check=True, timeout=60).stdout):
            t.after_gc.append(row["status"])
            if t.victim != "starter":
                t.problems.append(f"gc left container {row['id'][:12]}, {row['status']}")
            rm = subprocess.run([*pish_command(), "rm", "-f", row["id"]], capture_output=True, text=True,
                                env=env, check=False, timeout=60)
            if rm.returncode != 0:
                t.problems.append(f"pish rm -f {row['id'][:12]}: exit {rm.returncode}: {rm.stderr.strip()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        t.stages = read_stages(stages_file)
    # 4. the host is as before, and no process of ours is left
    try:
        leaks.assert_clean()
    except AssertionError as exc:
        t.problems.append(str(exc))
        leaks.clean_up()
    if strays := our_processes(pish_env, token):
        t.problems.append("processes left: " + "; ".join(strays))


def summary(trials: list[Trial], seed: int) -> str:
    lines = [(f"fault injection: {len(trials)} trials, seed {seed} (PISH_FAULT_SEED={seed} replays it), "
             f"stage delay {STAGE_DELAY} s"),
             (f"{'#':>3}  {'mode':10} {'killed':10} {'trigger':>16}  {'landed after':12} {'run exit':>8} "
             f"{'gc':>3}  {'after gc':9}  stages reached / problems")]
    for t in trials:
        trigger = f"{t.trigger}+{t.wait * 1000:.0f}ms"
        lines.append(f"{t.n:>3}  {t.mode:10} {t.victim:10} {trigger:>16}  {t.landed:12} {t.run_exit!s:>8} "
                     f"{t.gc_cleaned:>3}  {','.join(t.after_gc) or '-':9}  {','.join(t.stages) or '-'}"
                     + "".join(f"\n       PROBLEM: {p}" for p in t.problems))
    counts = collections.Counter(t.landed for t in trials)
    order = ["start", *STAGES]
    lines.append("kills landed after: " + ", ".join(f"{s} {counts[s]}" for s in order if counts[s]))
    return "\n".join(lines)


# -- the test ----------------------------------------------------------------------------------------


def test_sigkill_during_set_up_then_gc_leaves_nothing(pish, pish_env, busybox_tar, tmp_path, leaks, capsys,
                                                        record_property):
    skip_if_bridge_in_use(BRIDGE)
    seed = int(os.environ.get("PISH_FAULT_SEED") or random.SystemRandom().randrange(1 << 32))
    rng = random.Random(seed)
    token = f"PISH_FAULT_TEST={tmp_path.name}-{seed}"
    pish("run", "--net", "none", str(busybox_tar), "true", check=True)  # unpack the image once, up front

    trials = plan(rng, TRIALS)
    for t in trials:
        run_trial(t, busybox_tar, pish_env, tmp_path, token, leaks)

    report = summary(trials, seed)
    record_property("fault_injection", report)
    with capsys.disabled():
        print("\n" + report)

    problems = [f"trial {t.n} ({t.mode}, killed {t.victim} after {t.landed}): {p}" for t in trials
                for p in t.problems]
    assert not problems, "\n".join(problems)
    landed = {t.landed for t in trials}
    assert len(landed - {"start"}) >= 3, f"the kills landed in too few stages: {sorted(landed)}"
    assert sum(t.gc_cleaned for t in trials) > 0  # gc had work to do, so the test tested it
    leaks.assert_clean()  # after all trials: the host as before the first (per-trial checks passed too)
    assert our_processes(pish_env, token) == []


def test_killing_the_starter_keeps_the_container(pish, pish_env, busybox_tar, tmp_path, leaks):
    """SIGKILL of ``pish run -d`` while it waits for the report must not take the container down: the
    supervisor owns the container, as conmon does for podman, and nobody is left to read the report."""
    from pish_core import paths, state

    stages_file = tmp_path / "stages"
    env = {**os.environ, **pish_env.env, "PISH_TEST_STAGES": str(stages_file), "PISH_TEST_STAGE_DELAY": "0.1"}
    proc = subprocess.Popen([*pish_command(), "run", "-d", "--net", "none", "--name", "orphan", str(busybox_tar),
                             "sleep", "100"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + SETTLE
        while "storage" not in read_stages(stages_file) and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.kill()  # the starter, while the supervisor is still setting up
        proc.wait()
        cid = state.resolve("orphan").id
        while "running" not in read_stages(stages_file) and state.supervisor_alive(cid):
            time.sleep(0.01)
        died = state.wait_supervisor_gone(cid, 5)  # a grace period for the bug to show, not a timing check
        log = paths.supervisor_log(cid).read_text().strip().splitlines()
        assert not died, f"the supervisor died after its starter was killed: {log[-1] if log else ''}"
        assert pish("exec", "orphan", "true").returncode == 0
        assert [r["status"] for r in json.loads(pish("ps", "--json", check=True).stdout)] == ["running"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pish("rm", "-f", "orphan")
        pish("gc")
