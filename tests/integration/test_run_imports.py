"""What the hot path imports is a behaviour (issue 13): ``pish run --net none`` must not pull in pyroute2,
stevedore or importlib.metadata's scan (the entry-point cache answers), nor any third-party package but
click and pish's own. Times are not asserted; the modules are, from ``python -X importtime``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

#: third-party top-level modules the run path may import
ALLOWED_THIRD_PARTY = {"click", "pish_core", "pish_drivers", "_cffi_backend"}
#: imported by the interpreter's start-up or by stdlib probes, not by pish
START_UP = {"_distutils_hack", "sitecustomize", "usercustomize", "apport_python_hook",
            "org"}  # org.python.core: the stdlib's copy module probing for Jython
#: stdlib modules too heavy for the run path
FORBIDDEN_STDLIB = {"asyncio", "email", "ssl", "http", "multiprocessing", "concurrent", "importlib.metadata",
                    # a few ms each, not needed: pish_core.log writes its own lines, a terminal alone needs
                    # socket.py, the entry-point cache lists directories itself
                    "logging", "socket", "glob", "hashlib", "tempfile", "subprocess"}


def imported(args: list[str], env: dict[str, str]) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pish_core.cli.main", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
            and not line.split("|")[2].strip().startswith("imported package")}


def test_run_net_none_imports_only_what_it_uses(busybox_tar: Path, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PISH_LOG_LEVEL": "warning"}
    args = ["run", "--net", "none", str(busybox_tar), "/bin/true"]
    first = imported(args, env)  # an empty cache: stevedore is asked once, and its answer kept
    assert "stevedore" in first
    modules = imported(args, env)
    tops = {name.split(".")[0] for name in modules}
    third_party = {t for t in tops - set(sys.stdlib_module_names) - START_UP if not t.startswith("__editable__")}
    assert third_party <= ALLOWED_THIRD_PARTY, f"unexpected imports: {sorted(third_party - ALLOWED_THIRD_PARTY)}"
    assert "pyroute2" not in tops and "stevedore" not in tops
    heavy = {m for m in modules if m in FORBIDDEN_STDLIB or m.split(".")[0] in FORBIDDEN_STDLIB}
    assert not heavy, f"heavy stdlib modules on the run path: {sorted(heavy)}"
