"""Test helpers shared by the unit and integration tests: running the CLI, and host snapshots."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from helpers.hostsnap import HostSnapshot, assert_same, snapshot

__all__ = ["HostSnapshot", "assert_same", "pish_command", "run_pish", "snapshot"]


def pish_command() -> list[str]:
    """How to start the CLI: the ``pish`` script of this interpreter, else one on PATH, else ``-m``.

    The script next to ``sys.executable`` comes first: on PATH there may be only a pyenv shim, which
    starts a shell and pyenv before Python and would run the tests against whichever Python it picks.
    """
    script = shutil.which("pish", path=str(Path(sys.executable).parent)) or shutil.which("pish")
    if script and "/shims/" not in script:
        return [script]
    return [sys.executable, "-m", "pish_core.cli.main"]


def run_pish(
    *args: str,
    input: str | None = None,
    timeout: float = 60,
    check: bool | int | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``pish ARGS...`` as a subprocess, capturing text output.

    The environment is this process's (so ``PISH_ROOT`` / ``PISH_LIB`` set by the ``pish_env`` fixture
    apply) updated with ``env``. ``check``: None or False checks nothing; True wants exit 0; an int wants
    that exit status. A failed check shows the command, its status, stdout and stderr.
    """
    full_env = {**os.environ, **(env or {})}
    cmd = [*pish_command(), *args]
    proc = subprocess.run(cmd, check=False, input=input, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check is not None and check is not False:
        want = 0 if check is True else int(check)
        if proc.returncode != want:
            raise AssertionError(
                f"{shlex.join(['pish', *args])}: exit {proc.returncode}, wanted {want}\n"
                f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
            )
    return proc
