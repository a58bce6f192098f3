"""The entry-point cache (pish_core/entrypoints.py) stays exact: a package that adds or removes a driver
changes the key, so the next lookup sees it; a warm cache answers without importing stevedore."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBE = textwrap.dedent("""
    import sys
    from pish_core import entrypoints
    print(",".join(entrypoints.names("pish.storage")))
    print("stevedore" in sys.modules, "importlib.metadata" in sys.modules)
""")


def probe(tmp_path: Path, extra_path: Path) -> tuple[list[str], str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(extra_path)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True,
                         timeout=60).stdout.splitlines()
    return out[0].split(","), out[1]


def add_dist(site: Path, name: str, storage: str) -> Path:
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[pish.storage]\n{storage} = {name}_mod:Driver\n")
    return dist


def test_a_warm_cache_needs_no_stevedore_and_an_installed_driver_shows_at_once(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    names, imported = probe(tmp_path, site)
    assert {"overlay", "copy"} <= set(names)
    assert imported == "True True"  # cold: stevedore asked
    names, imported = probe(tmp_path, site)
    assert imported == "False False"  # warm: the cache answered
    dist = add_dist(site, "pishthird", "thirdfs")
    names, _ = probe(tmp_path, site)
    assert "thirdfs" in names
    for f in dist.iterdir():
        f.unlink()
    dist.rmdir()
    names, _ = probe(tmp_path, site)
    assert "thirdfs" not in names
    assert len(list((tmp_path / "cache" / "pish").glob("entrypoints-*.json"))) == 3  # one per key seen


def test_two_paths_taking_turns_keep_their_caches_and_old_keys_go(tmp_path: Path) -> None:
    """A checkout on PYTHONPATH beside the venv's install: each keeps its cache file (they used to evict
    each other, so every run scanned); beyond entrypoints.KEEP files the oldest are removed."""
    from pish_core import entrypoints

    sites = [tmp_path / f"site{i}" for i in range(entrypoints.KEEP + 3)]
    for site in sites:
        site.mkdir()
    for site in sites[:2]:
        probe(tmp_path, site)
    for site in sites[:2]:
        assert probe(tmp_path, site)[1] == "False False"  # both warm
    for site in sites[2:]:
        probe(tmp_path, site)
    assert len(list((tmp_path / "cache" / "pish").glob("entrypoints-*.json"))) == entrypoints.KEEP


def test_an_unwritable_cache_still_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pish_core import entrypoints

    (tmp_path / "cache").write_text("a file where the directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(entrypoints, "_loaded", None)
    assert "overlay" in entrypoints.names("pish.storage")
    monkeypatch.setattr(entrypoints, "_loaded", None)
