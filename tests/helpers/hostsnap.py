"""What pish could leave behind on the host, captured so a test can compare before and after.

A snapshot holds the things a container run creates and must remove: mount points, cgroups under every
hierarchy's ``pish`` directory, network links, named network namespaces, the container records and
writable layers under ``PISH_ROOT`` / ``PISH_LIB``, and ``/tmp/pish*`` temp dirs. ``assert_same`` gives
the kernel a few seconds for its asynchronous teardown (a netns, a veth, a lazily unmounted overlay) and
then fails with a list of what was left behind and what went missing.

The snapshot is of the whole host, so anything else creating mounts or links at the same time shows up
too; the diff names each entry so such noise is easy to tell from a leak.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
NET_CLASS = Path("/sys/class/net")
NETNS_DIR = Path("/run/netns")
TMP_DIR = Path("/tmp")
TMP_PREFIX = "pish"


@dataclasses.dataclass(frozen=True)
class HostSnapshot:
    """One look at the host. Every field is a sorted tuple, so two snapshots compare with ``==``."""

    mounts: tuple[str, ...]  # mount points, once per mount (stacked mounts repeat)
    cgroups: tuple[str, ...]  # every directory below /sys/fs/cgroup/<hierarchy>/pish, not pish itself
    links: tuple[str, ...]  # /sys/class/net
    netns: tuple[str, ...]  # /run/netns
    containers: tuple[str, ...]  # PISH_ROOT/containers entries
    layers: tuple[str, ...]  # PISH_LIB/containers entries
    tmp: tuple[str, ...]  # /tmp/pish*
    # where the state entries were read from, so a later snapshot looks at the same places
    run_root: Path = dataclasses.field(compare=False, default=Path("/run/pish"))
    lib_root: Path = dataclasses.field(compare=False, default=Path("/var/lib/pish"))

    def retake(self) -> HostSnapshot:
        """A new snapshot of the same places."""
        return snapshot(run_root=self.run_root, lib_root=self.lib_root)


def _mount_points() -> tuple[str, ...]:
    out: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            out.append(fields[4])  # the mount point, as the kernel escapes it (\040 for a space)
    return tuple(sorted(out))


def _cgroups() -> tuple[str, ...]:
    out: list[str] = []
    tops = [*glob.glob(str(CGROUP_ROOT / "*" / "pish")), *glob.glob(str(CGROUP_ROOT / "pish")),  # v1, hybrid v2, v2
            *glob.glob(str(CGROUP_ROOT / "pish.slice"))]  # the systemd driver's scopes
    for top in sorted(tops):
        for dirpath, dirnames, _ in os.walk(top, onerror=lambda _exc: None):
            out.extend(os.path.join(dirpath, d) for d in dirnames)
    return tuple(sorted(out))


def _entries(path: Path, prefix: str = "") -> tuple[str, ...]:
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return ()
    return tuple(sorted(str(path / n) for n in names if n.startswith(prefix)))


def _default_roots() -> tuple[Path, Path]:
    return (
        Path(os.environ.get("PISH_ROOT", "/run/pish")),
        Path(os.environ.get("PISH_LIB", "/var/lib/pish")),
    )


def snapshot(run_root: Path | None = None, lib_root: Path | None = None) -> HostSnapshot:
    """Look at the host now. The state roots default to ``PISH_ROOT`` / ``PISH_LIB`` as pish reads them."""
    default_run, default_lib = _default_roots()
    run_root = run_root or default_run
    lib_root = lib_root or default_lib
    return HostSnapshot(
        mounts=_mount_points(),
        cgroups=_cgroups(),
        links=_entries(NET_CLASS),
        netns=_entries(NETNS_DIR),
        containers=_entries(run_root / "containers"),
        layers=_entries(lib_root / "containers"),
        tmp=_entries(TMP_DIR, TMP_PREFIX),
        run_root=run_root,
        lib_root=lib_root,
    )


FIELDS = ("mounts", "cgroups", "links", "netns", "containers", "layers", "tmp")


@dataclasses.dataclass(frozen=True)
class Change:
    """One entry that differs between two snapshots."""

    field: str  # one of FIELDS
    how: str  # "left behind" (only in the later snapshot) or "gone" (only in the earlier one)
    item: str

    def __str__(self) -> str:
        return f"  {self.field}: {self.how:<13}{self.item}"


def changes(before: HostSnapshot, after: HostSnapshot) -> list[Change]:
    """Every entry that differs between two snapshots, field by field, what was left behind first."""
    out = []
    for name in FIELDS:
        old = collections.Counter(getattr(before, name))
        new = collections.Counter(getattr(after, name))
        out.extend(Change(name, "left behind", item) for item in sorted((new - old).elements()))
        out.extend(Change(name, "gone", item) for item in sorted((old - new).elements()))
    return out


def diff(before: HostSnapshot, after: HostSnapshot) -> str:
    """A readable account of what changed between two snapshots; empty when nothing did."""
    return "\n".join(str(change) for change in changes(before, after))


def assert_same(before: HostSnapshot, after: HostSnapshot | None = None, timeout: float = 5.0) -> None:
    """Fail unless the host is back to ``before``, polling up to ``timeout`` seconds for async teardown.

    ``after`` is the first snapshot to compare; when it differs (or is not given) the host is looked at
    again every 50 ms until it matches or the time is up.
    """
    current = after if after is not None else before.retake()
    deadline = time.monotonic() + timeout
    while current != before and time.monotonic() < deadline:
        time.sleep(0.05)
        current = before.retake()
    if current != before:
        raise AssertionError(f"the host changed (after waiting {timeout:g} s):\n{diff(before, current)}")
