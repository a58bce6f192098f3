"""Where pish's drivers are registered: the ``pish.*`` entry-point groups, read without importing stevedore
on every run.

stevedore finds entry points through ``importlib.metadata``; importing the two costs 60-80 ms before any
container work starts, even when stevedore's own cache answers. This module keeps pish's groups in a small
JSON file keyed the way stevedore keys its cache (``stevedore._cache._hash_settings_for_path``): the
interpreter, every ``sys.path`` entry and every ``*.dist-info``/``*.egg-info`` ``entry_points.txt`` on it,
each with its mtime. Installing, upgrading or removing a package changes an mtime, so the key, so the next
run asks stevedore again: ``pish drivers list`` and driver lookup stay exact. On a hit nothing heavier than
``glob`` and ``json`` is imported.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

#: the entry-point groups this cache holds (pish_core.drivers.KINDS, as groups)
GROUPS = ("pish.storage", "pish.limits", "pish.network", "pish.isolation")

Entries = dict[str, list[tuple[str, str]]]  # group -> [(name, "module:attr"), ...]

_loaded: Entries | None = None


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pish`` (``~/.cache/pish``), beside stevedore's ``python-entrypoints``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "pish"


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


def key() -> str:
    """The hash of what decides which entry points exist, as stevedore computes it."""
    h = hashlib.sha256()
    h.update(sys.executable.encode())
    h.update(sys.prefix.encode())
    for entry in sys.path:
        h.update(f"{entry}\0{_mtime(entry)}\0".encode())
        for found in sorted([*glob.iglob(os.path.join(glob.escape(entry), "*.dist-info", "entry_points.txt")),
                             *glob.iglob(os.path.join(glob.escape(entry), "*.egg-info", "entry_points.txt"))]):
            h.update(f"{found}\0{_mtime(found)}\0".encode())
    return h.hexdigest()


def _scan() -> Entries:
    """Ask stevedore (its cache, else importlib.metadata's scan): the fixed way pish finds drivers."""
    from stevedore import _cache

    return {g: sorted({(ep.name, ep.value) for ep in _cache.get_group_all(g)}) for g in GROUPS}


def _write(path: Path, entries: Entries) -> None:
    """Atomically (a reader sees the old file or the new one); a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".entrypoints-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only home: every run scans, as without the cache


def entries() -> Entries:
    """Every pish group's (name, "module:attr") pairs, from the cache when its key still holds."""
    global _loaded
    if _loaded is None:
        mine = hashlib.sha256(sys.executable.encode()).hexdigest()[:12]  # one file per interpreter
        path = cache_dir() / f"entrypoints-{mine}-{key()}.json"
        try:
            with open(path) as f:
                data = json.load(f)
            _loaded = {g: [(n, v) for n, v in data.get(g, [])] for g in GROUPS}
        except (OSError, ValueError, TypeError):
            _loaded = _scan()
            for stale in path.parent.glob(f"entrypoints-{mine}-*.json"):  # what this interpreter had before
                if stale != path:
                    stale.unlink(missing_ok=True)
            _write(path, _loaded)
    return _loaded


def find(group: str, name: str) -> list[str]:
    """``module:attr`` of each entry point named ``name`` in ``group`` (more than one: a conflict)."""
    return [value for n, value in entries().get(group, []) if n == name]


def names(group: str) -> list[str]:
    return sorted({n for n, _ in entries().get(group, [])})
