"""Installing an example driver package from tests/fixtures into this Python for a session, as a user
would (``pip install``), and removing it afterwards."""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        check=False, capture_output=True, text=True, timeout=300,
    )


def can_build_wheels() -> bool:
    """True when setuptools can build a wheel here: it needs the `wheel` package before 70.1."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    major, minor = (int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1)


@contextlib.contextmanager
def installed(fixture: str, dist: str, scratch: Path) -> Iterator[str]:
    """pip-install tests/fixtures/``fixture`` (distribution ``dist``), built from a copy in ``scratch`` so
    the build leaves nothing in the source tree; uninstall it on the way out."""
    if pip("show", dist).returncode == 0:
        raise AssertionError(f"{dist} is already installed; uninstall it first (pip uninstall -y {dist})")
    src = scratch / fixture
    shutil.copytree(FIXTURES / fixture, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # Offline with this Python's setuptools when it can build a wheel; else pip builds in an isolated
    # env with setuptools and wheel from the index (a fresh venv has setuptools but not `wheel`).
    isolation = ["--no-build-isolation"] if can_build_wheels() else []
    proc = pip("install", *isolation, "--no-deps", str(src))
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    importlib.invalidate_caches()
    try:
        yield dist
    finally:
        proc = pip("uninstall", "-y", dist)
        assert proc.returncode == 0, f"pip uninstall failed:\n{proc.stdout}\n{proc.stderr}"
