"""Every listing command prints JSON with ``--format json`` (docker's spelling) as with ``--json``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("command", [["ps", "-a"], ["image", "ls"], ["network", "ls"], ["drivers", "list"]])
@pytest.mark.parametrize("flag", [["--format", "json"], ["--json"]])
def test_listing_commands_print_json(command: list[str], flag: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PISH_ROOT": str(tmp_path / "run"), "PISH_LIB": str(tmp_path / "lib")}
    proc = subprocess.run([sys.executable, "-m", "pish_core.cli.main", *command, *flag], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), list)


def test_a_bad_format_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PISH_ROOT": str(tmp_path / "run"), "PISH_LIB": str(tmp_path / "lib")}
    proc = subprocess.run([sys.executable, "-m", "pish_core.cli.main", "network", "ls", "--format", "yaml"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 125 and proc.stderr.count("\n") == 1, proc.stderr
