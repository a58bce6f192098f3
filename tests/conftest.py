"""Shared fixtures: a busybox image, a private pish state root per test, the CLI, and the leak check.

- ``busybox_tar``: a busybox rootfs tar built once per session (needs Debian's busybox-static).
- ``pish_env``: ``PISH_ROOT`` and ``PISH_LIB`` pointed at fresh directories of the test, so tests never
  share or touch ``/run/pish`` and ``/var/lib/pish``.
- ``pish``: ``pish(*args, input=None, timeout=60, check=None)`` runs the CLI in that environment.
- ``no_leaks``: snapshots the host before the test and fails it if mounts, cgroups, links, netns,
  container records, layers or ``/tmp/pish*`` dirs differ afterwards.
- ``leaks``: the same snapshot judged only on what the test made (``tests/helpers/leaks.py``), for tests
  that run while other test runs on this machine start containers too; set up by the ``leak_check``
  marker.

Tests marked ``integration`` (declared in pyproject.toml) are skipped unless run as root.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `helpers` is importable under any --import-mode

from helpers import run_pish
from helpers.hostsnap import HostSnapshot, assert_same, snapshot
from helpers.leaks import LeakCheck
from helpers.loglines import LogLines


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "leak_check(bridge=None, at_teardown=False): how the `leaks` fixture judges the test: `bridge` names "
        "the one bridge it may make, `at_teardown` checks the host once more after the test",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration test: needs root")
    for item in items:
        if item.get_closest_marker("integration"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs tar, built once for the whole session."""
    from pish_core.image import busybox

    return busybox.build(tmp_path_factory.mktemp("image") / "busybox.tar")


@dataclasses.dataclass(frozen=True)
class PishEnv:
    root: Path  # PISH_ROOT: container records, locks, network state
    lib: Path  # PISH_LIB: image cache, writable layers

    @property
    def env(self) -> dict[str, str]:
        return {"PISH_ROOT": str(self.root), "PISH_LIB": str(self.lib)}


@pytest.fixture
def pish_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PishEnv:
    """Point PISH_ROOT and PISH_LIB at fresh directories of this test (in-process and for subprocesses)."""
    env = PishEnv(root=tmp_path / "pish-root", lib=tmp_path / "pish-lib")
    env.root.mkdir()
    env.lib.mkdir()
    for key, value in env.env.items():
        monkeypatch.setenv(key, value)
    return env


PishRunner = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def pish(pish_env: PishEnv) -> PishRunner:
    """``pish(*args, input=None, timeout=60, check=None) -> CompletedProcess`` in this test's env."""

    def _pish(
        *args: str, input: str | None = None, timeout: float = 60, check: bool | int | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_pish(*args, input=input, timeout=timeout, check=check, env=pish_env.env)

    return _pish


@pytest.fixture
def no_leaks(pish_env: PishEnv) -> Iterator[HostSnapshot]:
    """Fail the test if the host is not the same after it as before (waits up to 5 s for teardown)."""
    before = snapshot(run_root=pish_env.root, lib_root=pish_env.lib)
    yield before
    assert_same(before)


@pytest.fixture
def cleanup(pish: PishRunner, leaks: LeakCheck) -> Iterator[list[str]]:
    """Names or ids the test appends to, ``rm -f``'d at its end whatever happened (before the leak check)."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        pish("rm", "-f", ref)


@pytest.fixture
def leaks(pish_env: PishEnv, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LeakCheck]:
    """A ``LeakCheck`` of this test: the host snapshot judged only on what the test made.

    ``leaks.assert_clean()`` fails unless the host is back to the snapshot; a test calls it where that must
    hold. The ``leak_check`` marker (on the test or its module) sets the check up: ``bridge=NAME`` counts
    that bridge as the test's, and ``at_teardown=True`` makes the fixture call ``assert_clean()`` after the
    test too. If the test left anything (it failed half-way), that is removed afterwards: after the check,
    so nothing is hidden from it.
    """
    marker = request.node.get_closest_marker("leak_check")
    options = dict(marker.kwargs) if marker else {}
    bridge = options.pop("bridge", None)
    at_teardown = options.pop("at_teardown", False)
    if marker and (options or marker.args):
        raise pytest.UsageError(f"leak_check takes bridge= and at_teardown=, not {marker.args} {options}")
    check = LeakCheck(pish_env.root, pish_env.lib, scope=tmp_path, bridges=[bridge] if bridge else [])
    try:
        yield check
        if at_teardown:
            check.assert_clean()
    finally:
        check.close()
        if check.leftovers():
            check.clean_up()


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> LogLines:
    from pish_core import log

    monkeypatch.setattr(log, "_threshold", 0)  # every level; ``messages`` picks
    return LogLines(capsys)
