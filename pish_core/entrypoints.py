"""Where pish's drivers are registered: the ``pish.*`` entry-point groups, read without importing stevedore
on every run.

stevedore finds entry points through ``importlib.metadata``; importing the two costs 60-80 ms before any
container work starts, even when stevedore's own cache answers. This module keeps pish's groups in a small
JSON file keyed by what stevedore keys its cache on (``stevedore._cache._hash_settings_for_path``): the
interpreter, every ``sys.path`` entry and every ``*.dist-info``/``*.egg-info`` ``entry_points.txt`` on it,
each with its mtime. Installing, upgrading or removing a package changes an mtime, so the key, so the next
run asks stevedore again: ``pish drivers list`` and driver lookup stay exact. On a hit nothing heavier than
``json`` is imported.
"""
from __future__ import annotations

import json
import os
import sys
import zlib
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
    """What decides which entry points exist, as stevedore hashes it: the interpreter, and every sys.path
    entry and entry_points.txt with its mtime. Kept whole in the cache file and compared, so the file's
    name needs only a cheap checksum (hashlib would load OpenSSL, ~4 ms)."""
    parts = [sys.executable, sys.prefix]
    for entry in sys.path:
        parts.append(f"{entry}\0{_mtime(entry)}")
        for found in _entry_point_files(entry):
            parts.append(f"{found}\0{_mtime(found)}")
    return "\n".join(parts)


def _entry_point_files(entry: str) -> list[str]:
    """``ENTRY/*.dist-info/entry_points.txt`` and ``ENTRY/*.egg-info/entry_points.txt`` that exist, sorted
    (one directory read: no ``glob``, whose import and patterns cost a run ~1.5 ms)."""
    try:
        names = os.listdir(entry or ".")
    except OSError:
        return []
    found = [os.path.join(entry, name, "entry_points.txt") for name in names
             if name.endswith((".dist-info", ".egg-info")) and not name.startswith(".")]
    return sorted(path for path in found if os.path.isfile(path))


def _checksum(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


def _scan() -> Entries:
    """Ask stevedore (its cache, else importlib.metadata's scan): the fixed way pish finds drivers."""
    from stevedore import _cache

    return {g: sorted({(ep.name, ep.value) for ep in _cache.get_group_all(g)}) for g in GROUPS}


def _write(path: Path, data: dict[str, object]) -> None:
    """Atomically (a reader sees the old file or the new one); a cache that cannot be written is skipped."""
    import tempfile  # only on a miss: it imports random

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".entrypoints-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only home: every run scans, as without the cache


#: cache files kept per interpreter: one per sys.path it runs with (a venv, PYTHONPATH=a checkout, ...), so
#: two alternating do not evict each other; older ones (an earlier set of installed packages) are removed
KEEP = 8


def _prune(mine: str) -> None:
    def mtime(p: Path) -> float:
        return _mtime(str(p))

    for stale in sorted(cache_dir().glob(f"entrypoints-{mine}-*.json"), key=mtime, reverse=True)[KEEP:]:
        stale.unlink(missing_ok=True)


def entries() -> Entries:
    """Every pish group's (name, "module:attr") pairs, from the cache when its key still holds."""
    global _loaded
    if _loaded is None:
        mine = _checksum(sys.executable)  # one file per interpreter
        current = key()
        path = cache_dir() / f"entrypoints-{mine}-{_checksum(current)}.json"
        try:
            with open(path) as f:
                data = json.load(f)
            if data["key"] != current:
                raise ValueError("another key with the same checksum")
            _loaded = {g: [(n, v) for n, v in data["groups"].get(g, [])] for g in GROUPS}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            _loaded = _scan()
            _write(path, {"key": current, "groups": _loaded})
            _prune(mine)
    return _loaded


def find(group: str, name: str) -> list[str]:
    """``module:attr`` of each entry point named ``name`` in ``group`` (more than one: a conflict)."""
    return [value for n, value in entries().get(group, []) if n == name]


def names(group: str) -> list[str]:
    return sorted({n for n, _ in entries().get(group, [])})
