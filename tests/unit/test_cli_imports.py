"""Start-up cost: ``pish --help``, ``pish drivers list`` and a ``--net none`` run never import pyroute2.

pyroute2 costs 150-190 ms to import here, more than the rest of a ``--net none`` run. Each command runs in a
fresh interpreter through the CLI's own ``main`` (click's ``main`` with ``standalone_mode=False``), which
then reports what ``sys.modules`` holds. (``python -X importtime`` would not do: it does not see modules
imported through ``importlib.import_module``, which is how entry points load the drivers.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_RUN_CLI = textwrap.dedent("""
    import json, sys
    from pish_core.cli.main import main
    try:
        main(sys.argv[2:])
        code = 0
    except SystemExit as exc:
        code = exc.code
    with open(sys.argv[1], "w") as f:
        json.dump({"code": code, "modules": sorted(sys.modules)}, f)
""")


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    """Run ``pish ARGS...`` in a new interpreter; return its exit status, the modules it had imported by
    the end, and its stdout."""
    report = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", _RUN_CLI, str(report), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, **(env or {})}, check=False)
    assert report.exists(), f"the CLI did not finish: {proc.stderr[-3000:]}"
    data = json.loads(report.read_text())
    return data["code"], set(data["modules"]), proc.stdout


def pyroute2_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m == "pyroute2" or m.startswith("pyroute2."))


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["drivers", "list"], ["drivers", "list", "--json"]],
                         ids=["help", "run-help", "drivers-list", "drivers-list-json"])
def test_no_pyroute2(tmp_path, args):
    code, modules, out = run_cli(tmp_path, *args)
    assert code == 0
    assert "click" in modules and "pish_core.cli.main" in modules  # the check looked at the right process
    assert pyroute2_in(modules) == []
    if args[0] == "drivers":
        # every driver was loaded and checked, the bridge one included (it finds pyroute2 without importing it)
        assert "pish_drivers.network.bridge" in modules
        assert "bridge" in out and "none" in out


@pytest.mark.integration
def test_net_none_run_does_not_import_pyroute2(tmp_path, pish_env, busybox_tar):
    code, modules, _ = run_cli(tmp_path, "run", "--log-level", "warning", "--net", "none", str(busybox_tar),
                               "sh", "-c", "exit 3", env=pish_env.env)
    assert code == 3  # the container really ran
    assert "pish_drivers.network.none" in modules
    assert pyroute2_in(modules) == []


@pytest.mark.integration
def test_the_check_sees_pyroute2_when_a_run_needs_it(tmp_path, pish_env, busybox_tar):
    """The control: a ``--net bridge`` run imports pyroute2's message classes (lazily, in the driver, without
    the package's ``__init__``), and the check sees them."""
    bridge = Path("/sys/class/net/pisht2")  # this file's bridge (other test runs here use pisht3...)
    assert not bridge.exists(), "pisht2 exists before the test: a previous run left it"
    code, modules, _ = run_cli(tmp_path, "run", "--log-level", "warning", "--net", "bridge", "--network", "pisht2",
                               "--ip", "10.0.4.10/24", str(busybox_tar), "true", env=pish_env.env)
    assert code == 0
    assert "pyroute2.netlink.rtnl.ifinfmsg" in pyroute2_in(modules)
    assert not bridge.exists()
