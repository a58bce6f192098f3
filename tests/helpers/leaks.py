"""A leak check scoped to what one test made (the ``leaks`` fixture of ``tests/conftest.py``).

Why not the plain ``no_leaks`` fixture: it compares the whole host, and other test runs on this machine
start and stop containers of their own at the same time, so their mounts, cgroups and veths come and go
in our snapshot. ``LeakCheck`` takes the same snapshots (``hostsnap.py``: mounts, cgroups, links, netns,
container records, writable layers, ``/tmp/pish*``) but judges only what this test can have made: the
entries that name one of this test's containers (every host name pish derives from a container embeds the
first 11 hex digits of its id: ``pish/<id>``, ``pv<id[:11]>``), anything under this test's ``tmp_path``
(``PISH_ROOT``, ``PISH_LIB``, the overlay mounts), the bridges registered with ``add_bridge``, and all of
the container records and layers (they live under this test's ``PISH_ROOT`` / ``PISH_LIB``).

The ids are collected by a thread that watches this test's ``PISH_ROOT`` and ``PISH_LIB``: pish writes a
container's record before it acquires anything and keeps it until everything is released, so no
container of ours can hold a resource without being seen.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from helpers import run_pish
from helpers.containers import ID_RE
from helpers.hostsnap import NET_CLASS, Change, changes, snapshot

#: The one bridge each group of tests may make (other test runs on this machine use others; never pish0).
RUN_BRIDGE = "pisht2"  # test_run_*.py, test_bad_input.py
LIFECYCLE_BRIDGE = "pisht3"  # test_lifecycle*.py, test_concurrency.py, test_fault_injection.py

_ALWAYS_OURS = ("containers", "layers")  # they live under this test's PISH_ROOT / PISH_LIB


def bridge_path(name: str) -> Path:
    """Where the kernel lists bridge ``name``."""
    return NET_CLASS / name


def fail_if_bridge_exists(name: str) -> None:
    """Fail now if bridge ``name`` is there before the test: a previous run left it."""
    if bridge_path(name).exists():
        pytest.fail(f"{name} exists before the test: a previous run left it (ip link del {name})")


def skip_if_bridge_in_use(name: str) -> None:
    """Skip the test if bridge ``name`` is there already: another test run is using it."""
    if bridge_path(name).exists():
        pytest.skip(f"bridge {name} exists already: another test run is using it")


class LeakCheck:
    """A host snapshot taken now, and ``assert_clean()`` to compare the host with it later.

    ``run_root`` / ``lib_root``: the test's ``PISH_ROOT`` / ``PISH_LIB``; ``scope``: the test's own
    directory (its ``tmp_path``); ``bridges``: as many ``add_bridge`` calls, before the snapshot.
    """

    def __init__(self, run_root: Path, lib_root: Path, scope: Path, bridges: Iterable[str] = ()) -> None:
        self.run_root = run_root
        self.lib_root = lib_root
        self.scope = f"{scope}/"
        self._ids: set[str] = set()
        self._bridges: dict[str, bool] = {}  # name -> it existed when added
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for name in bridges:
            self.add_bridge(name)
        self.before = snapshot(run_root=run_root, lib_root=lib_root)
        self._thread = threading.Thread(target=self._watch, name="pish-id-watch", daemon=True)
        self._thread.start()

    # -- what is ours --

    def add_bridge(self, name: str) -> None:
        """Count bridge ``name`` as this test's: its link is judged, and ``clean_up`` removes it unless it
        was there when added. Add it before the test can make it."""
        existed = bridge_path(name).exists()
        with self._lock:
            self._bridges.setdefault(name, existed)

    @property
    def ids(self) -> frozenset[str]:
        """The ids of every container of this test seen so far."""
        with self._lock:
            return frozenset(self._ids)

    def scan(self) -> None:
        """Note the ids in this test's state directories now (the watcher does it every 5 ms)."""
        for d in (self.run_root / "containers", self.lib_root / "containers"):
            with contextlib.suppress(OSError):
                found = {n for n in os.listdir(d) if ID_RE.fullmatch(n)}
                with self._lock:
                    self._ids |= found

    def _watch(self) -> None:
        while True:
            self.scan()
            if self._stop.wait(0.005):
                return

    def close(self) -> None:
        """Stop watching for ids."""
        self._stop.set()
        self._thread.join()

    def _ours(self) -> Callable[[Change], bool]:
        with self._lock:
            prefixes = [cid[:11] for cid in self._ids]
            links = {str(bridge_path(name)) for name in self._bridges}

        def ours(change: Change) -> bool:
            item = change.item
            return (change.field in _ALWAYS_OURS or item.startswith(self.scope) or item in links
                    or any(p in item for p in prefixes))

        return ours

    # -- comparing --

    def leftovers(self) -> list[str]:
        """What differs from the snapshot and is this test's doing, one line per entry."""
        self.scan()
        ours = self._ours()
        return [str(change) for change in changes(self.before, self.before.retake()) if ours(change)]

    def assert_clean(self, timeout: float = 5.0) -> None:
        """Fail unless the host is back to the snapshot; wait up to ``timeout`` s for asynchronous teardown
        (a netns the kernel frees late, a lazily unmounted overlay). A safety net, not a timing assertion."""
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, "the host changed:\n" + "\n".join(left)

    # -- after a failure --

    def clean_up(self) -> None:
        """Remove what this test left (its containers, then ``pish gc``, then a bridge it made), so the
        next test starts from a clean host."""
        env = {"PISH_ROOT": str(self.run_root), "PISH_LIB": str(self.lib_root)}
        for cid in sorted(self.ids):
            if (self.run_root / "containers" / cid).exists():
                run_pish("rm", "-f", cid, env=env, timeout=60)
        run_pish("gc", env=env, timeout=60)
        with self._lock:
            bridges = dict(self._bridges)
        for name, existed in bridges.items():
            if not existed and bridge_path(name).exists():
                subprocess.run(["ip", "link", "del", name], check=False, capture_output=True, timeout=30)
