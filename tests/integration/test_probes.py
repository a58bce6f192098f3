"""Probes try the thing instead of reading a file listing (issue: on a stock Debian 12 the overlay module
is not loaded until something mounts an overlay, so /proc/filesystems does not list it, yet it works)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pish_core import probe
from pish_drivers.storage.overlay import OverlayStorage

pytestmark = [pytest.mark.integration, pytest.mark.hostkind]


def test_overlay_is_available_though_proc_filesystems_does_not_list_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_text

    def without_overlay(self: Path, *args: object, **kwargs: object) -> str:
        text = real(self, *args, **kwargs)  # type: ignore[arg-type]
        return text.replace("\toverlay\n", "\n") if str(self) == "/proc/filesystems" else text

    monkeypatch.setattr(Path, "read_text", without_overlay)
    assert "overlay" not in Path("/proc/filesystems").read_text()
    assert OverlayStorage.check() is None  # a mount was tried, in a throwaway child, and it worked


def test_a_probe_that_fails_says_why_in_one_line() -> None:
    from pish_core import native

    def mount_nonsense() -> None:
        probe.private_mounts()
        native.mount("none", "/tmp", "no-such-filesystem", 0, None)

    why = probe.in_child(mount_nonsense)
    assert why is not None and "\n" not in why and "No such device" in why


def test_user_namespaces_are_tried() -> None:
    assert probe.user_namespace() is None


def test_a_probe_leaves_no_mount_behind() -> None:
    before = Path("/proc/self/mountinfo").read_text()
    assert OverlayStorage.check() is None
    assert probe.in_child(lambda: probe.private_mounts()) is None
    assert Path("/proc/self/mountinfo").read_text() == before
