"""Shared fixtures: a busybox image, a private pish state root per test, the CLI, and the leak check.

- ``busybox_tar``: a busybox rootfs tar built once per session (needs Debian's busybox-static).
- ``pish_env``: ``PISH_ROOT`` and ``PISH_LIB`` pointed at fresh directories of the test, so tests never
  share or touch ``/run/pish`` and ``/var/lib/pish``.
- ``pish``: ``pish(*args, input=None, timeout=60, check=None)`` runs the CLI in that environment.
- ``no_leaks``: snapshots the host before the test and fails it if mounts, cgroups, links, netns,
  container records, layers or ``/tmp/pish*`` dirs differ afterwards.

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
