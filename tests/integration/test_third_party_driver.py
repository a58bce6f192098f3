"""A driver from another package, installed with pip, is listed and used with no change to pish.

The package is tests/fixtures/pish-tmpfs-driver (storage driver ``tmpfs``). It is built from a copy in a
temp dir so the build leaves nothing in the source tree, and uninstalled at the end of the session.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.packages import installed

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pish-tmpfs-driver"
DIST = "pish-tmpfs-driver"


@pytest.fixture(scope="session")
def tmpfs_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """pip-install the example driver package for this session; uninstall it afterwards."""
    with installed(FIXTURE.name, DIST, tmp_path_factory.mktemp("driver")) as dist:
        yield dist


Pish = Callable[..., "subprocess.CompletedProcess[str]"]


def _entries(listing: Any) -> list[dict[str, Any]]:
    """The driver records of `drivers list --json`, whether it prints a list or {"drivers": [...]}."""
    if isinstance(listing, dict):
        listing = listing.get("drivers", list(listing.values()))
    return [e for e in listing if isinstance(e, dict)]


def test_listed(tmpfs_driver: str, pish: Pish) -> None:
    text = pish("drivers", "list", check=0).stdout
    lines = [line for line in text.splitlines() if "tmpfs" in line.split()]
    assert lines, f"tmpfs missing from `pish drivers list`:\n{text}"
    assert DIST in lines[0] and "storage" in lines[0], lines[0]

    listing = json.loads(pish("drivers", "list", "--json", check=0).stdout)
    tmpfs = [e for e in _entries(listing) if e.get("name") == "tmpfs"]
    assert len(tmpfs) == 1, listing
    assert tmpfs[0].get("kind") == "storage"
    assert tmpfs[0].get("package") == DIST
    assert tmpfs[0].get("version") == "0.1.0"
    assert tmpfs[0].get("available") is True, tmpfs[0]


def _root_mount(stdout: str) -> list[str]:
    """The /proc/mounts line of ``/`` as fields: source, target, fstype, options, ..."""
    roots = [line.split() for line in stdout.splitlines() if line.split()[1:2] == ["/"]]
    assert roots, f"no / in the container's /proc/mounts:\n{stdout}"
    return roots[-1]


def test_run_from_tar(tmpfs_driver: str, pish: Pish, busybox_tar: Path, no_leaks: object) -> None:
    proc = pish("run", "--storage", "tmpfs", "--net", "none", str(busybox_tar),
                "/bin/sh", "-c", 'grep " / " /proc/mounts', check=0)
    assert _root_mount(proc.stdout)[2] == "tmpfs", proc.stdout


def test_run_from_directory(
    tmpfs_driver: str, pish: Pish, busybox_tar: Path, tmp_path: Path, no_leaks: object
) -> None:
    from pish_core.image.unpack import unpack_tar

    image = tmp_path / "rootfs"
    image.mkdir()
    unpack_tar(busybox_tar, image)
    proc = pish("run", "--storage", "tmpfs", "--net", "none", str(image),
                "/bin/sh", "-c", 'echo scribble > /etc/hostname; grep " / " /proc/mounts; exit 3', check=3)
    assert _root_mount(proc.stdout)[2] == "tmpfs", proc.stdout
    assert (image / "etc" / "hostname").read_text() == "busybox\n", "the container wrote into its image"


def test_failed_command_leaves_nothing(tmpfs_driver: str, pish: Pish, busybox_tar: Path, no_leaks: object) -> None:
    proc = pish("run", "--storage", "tmpfs", "--net", "none", str(busybox_tar), "/bin/nope")
    assert proc.returncode == 127, proc.stderr


def test_release_is_idempotent(tmpfs_driver: str, pish_env: object, tmp_path: Path) -> None:
    driver_module = importlib.import_module("pish_tmpfs_driver")
    driver = driver_module.TmpfsStorage()
    record = {"kind": "storage", "driver": "tmpfs", "what": "tmpfs", "layer": str(tmp_path / "never-made")}
    driver.release(record)
    driver.release(record)
    assert not (tmp_path / "never-made").exists()
