"""Small helpers for tests that start containers through the CLI: ids, ``run -d``, ``ps --json``,
waiting for a container to run, a ``pish`` command in the background, listings of a state directory."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from helpers import pish_command

#: A container id: 64 hex digits (host names derived from it embed its first 11).
ID_RE = re.compile(r"[0-9a-f]{64}")


def run_detached(pish: Callable[..., Any], *args: str) -> str:
    """``pish run -d ARGS...``, which must succeed: return the 64-hex id it prints."""
    proc = pish("run", "-d", *args, check=True)
    cid: str = proc.stdout.strip()
    assert ID_RE.fullmatch(cid), f"run -d printed {proc.stdout!r}, wanted a 64-hex id"
    return cid


def ps_json(pish: Callable[..., Any], *flags: str) -> dict[str, dict[str, Any]]:
    """``pish ps --json [FLAGS]`` keyed by full id."""
    rows = json.loads(pish("ps", "--json", *flags, check=True).stdout)
    return {row["id"]: row for row in rows}


def wait_running(pish_env: Any, proc: subprocess.Popen[str] | None = None, name: str | None = None,
                 timeout: float = 30) -> dict[str, Any]:
    """The state record of this test's container (named ``name``, or the only one) once it is running.

    ``proc``, the ``pish run`` being waited for, must not end first. ``timeout`` is a safety net only.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in glob.glob(str(pish_env.root / "containers" / "*" / "state.json")):
            with contextlib.suppress(OSError, ValueError):  # removed meanwhile; writes are atomic renames
                record: dict[str, Any] = json.loads(Path(path).read_text())
                if record["status"] == "running" and name in (None, record["name"]):
                    return record
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"pish run ended (exit {proc.returncode}) before its container ran:\n{out}\n{err}")
        time.sleep(0.02)
    pytest.fail(f"no running container {name or ''} after {timeout:g} s")


@contextlib.contextmanager
def pish_in_background(*args: str, env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``pish ARGS...`` started with stdout and stderr piped (text), in ``env`` (default: this process's).

    On the way out of the block it is killed and reaped if it still runs.
    """
    proc = subprocess.Popen([*pish_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


def tree(top: Path) -> list[str]:
    """Every path below ``top``, so two listings show whether anything was made or removed."""
    return sorted(os.path.join(d, n) for d, dirs, files in os.walk(top) for n in dirs + files)


def refused(pish: Callable[..., Any], *args: str, match: str, input: str | None = None) -> None:
    """``pish ARGS`` fails as a bad request: one line naming the problem, exit 125, nothing on stdout."""
    proc = pish(*args, input=input) if input is not None else pish(*args)
    assert proc.returncode == 125, (args, proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pish: "), proc.stderr
    assert re.search(match, lines[0]), (lines[0], match)


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    """Poll until ``predicate()``; fail after ``timeout`` s (a safety net, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
