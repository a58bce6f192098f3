"""The limits drivers: one cgroup per container, in cgroup v1 (``cgroupv1``) or v2 (``cgroupv2``).

What every cgroup filesystem has in common, and so lives here:

- a cgroup is a directory; ``mkdir`` makes one and the kernel fills it with files;
- a setting is a file, written with one value per ``write()``;
- ``cgroup.procs`` lists the processes in the cgroup, and writing a pid to it moves that process in;
- ``rmdir`` removes a cgroup once no process is left in it (the files inside do not count).

A container's cgroup is always ``.../pish/<id>`` (``names.cgroup_name``); ``pish/`` itself is shared by
all containers and never removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path
from typing import Any

from pish_core import log as pish_log
from pish_core import names
from pish_core.errors import DriverError, SpecError

log = pish_log.get("limits")

#: How long releasing a cgroup may take before we give up and leave it to `pish gc`.
RELEASE_TIMEOUT = 5.0
#: The CFS period pish uses, in microseconds: `--cpus 0.5` means 50 ms of CPU time every 100 ms.
CPU_PERIOD_US = 100_000


# -- reading and writing cgroup files ---------------------------------------------------------------


def read(path: Path) -> str:
    return path.read_text().strip()


def read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed file (``memory.events``, ``cgroup.events``, ``cpu.stat``): ``key value`` per line."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def write(path: Path, value: object, driver: str) -> None:
    """Write one value with one ``write()``, as the kernel wants it. No O_CREAT: cgroup files exist or not."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise DriverError(f"{driver}: cannot write {str(value)!r} to {path}: {exc.strerror}") from None


def procs(cgroup: Path) -> list[int]:
    """The pids in one cgroup (not its children); none if it is gone."""
    try:
        return [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def ensure_dir(path: Path, what: str) -> bool:
    """mkdir, logged once, tolerating a directory another pish run made a moment ago; True if we made it."""
    if path.is_dir():
        return False
    log.info("creating %s", what)
    try:
        path.mkdir()
    except FileExistsError:
        return False
    return True


def remove_made_parents(record: dict[str, Any]) -> None:
    """rmdir the parents of an OCI cgroupsPath that pish made for it (``made`` in the journal record),
    deepest first, while they are empty: runc leaves them, pish leaves nothing of its own."""
    for path in sorted(record.get("made", []), key=len, reverse=True):
        try:
            os.rmdir(path)
        except OSError:
            return  # another container's cgroup is below it (EBUSY), or it is gone
        log.info("removed cgroup %s (made for this container)", path)


# -- removing a container's cgroup ------------------------------------------------------------------


def owned(path: Path, driver: str, given: bool = False) -> Path:
    """``path`` if it is a container's cgroup (``.../pish/<id>``), so a damaged journal cannot make
    ``pish gc`` kill the processes of some other cgroup, or the whole machine. ``given``: the path came
    from an OCI config's cgroupsPath; it must then be below a hierarchy's root, never one."""
    if given:
        roots = {mount for mount, _, _ in cgroup_mounts()}
        if path.is_absolute() and ".." not in path.parts and any(root in path.parents for root in roots):
            return path
    elif path.parent.name == "pish" and names.is_id(path.name):
        return path
    raise DriverError(f"{driver}: refusing to remove {path}: it is not a pish container cgroup")


def cgroup_paths(record: dict[str, Any], driver: str) -> list[Path]:
    """The cgroup directories a limits journal record names, each checked by ``owned``."""
    return [owned(Path(p), driver, bool(record.get("given"))) for p in record.get("paths", [])]


def relative_cgroup(spec_path: str, cid: str) -> str:
    """Where a container's cgroup goes below a hierarchy's root: an OCI config's cgroupsPath, else pish's."""
    if spec_path:
        parts = [p for p in spec_path.split("/") if p]
        if not parts or ".." in parts or "." in parts:
            from pish_core.errors import SpecError

            raise SpecError(f"invalid cgroupsPath {spec_path!r}")
        return "/".join(parts)
    return names.cgroup_name(cid)


def label(path: Path) -> str:
    """``pish/<short id>``, as the log shows a container's cgroup (an OCI cgroupsPath: the whole path)."""
    return f"pish/{path.name[:12]}" if path.parent.name == "pish" else str(path)


def subtree(cgroup: Path) -> list[Path]:
    """The cgroup and any cgroups a process made inside it, deepest first: the order rmdir needs."""
    return [Path(top) for top, _, _ in os.walk(cgroup, topdown=False)]


def kill_once(cgroups: list[Path]) -> set[int]:
    """SIGKILL every process in ``cgroups``; return the pids that were there."""
    pids = {pid for cg in cgroups for pid in procs(cg)}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def kill_all(cgroups: list[Path], deadline: float, driver: str) -> None:
    """SIGKILL every process in ``cgroups`` until none is left. We read the list again after each round
    because a process may fork between our read and our kill (the v1 freezer or v2 cgroup.kill close
    that race; this loop is what is left when they are missing)."""
    while pids := kill_once(cgroups):
        if time.monotonic() > deadline:
            raise DriverError(
                f"{driver}: processes {sorted(pids)} are still alive after SIGKILL; try `pish gc` later"
            )
        time.sleep(0.01)


def remove_dirs(cgroups: list[Path], deadline: float, driver: str) -> None:
    """rmdir each cgroup. EBUSY means the kernel has not quite finished with the last process: retry.
    ENOENT means it is already gone, which is what we wanted (release is idempotent)."""
    for cg in cgroups:
        while True:
            try:
                os.rmdir(cg)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                raise DriverError(
                    f"{driver}: cannot remove cgroup {cg}: {exc.strerror}; "
                    f"once its processes are gone, run `pish gc` or rmdir it"
                ) from None


# -- checking a spec --------------------------------------------------------------------------------


def parse_cpu_list(text: str) -> set[int]:
    """``0-2,5`` -> {0, 1, 2, 5}, the kernel's list format (cpuset.cpus, /sys/devices/system/cpu/online)."""
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if hi < lo:
            raise ValueError(f"bad range {part!r}")
        cpus.update(range(lo, hi + 1))
    return cpus


def check_cpus(driver: str, cpus: float | None, cpuset: str | None, host_list: str) -> None:
    """Refuse ``--cpuset-cpus`` naming a CPU the host lacks and ``--cpus`` above the host's CPU count."""
    host = parse_cpu_list(host_list)
    if cpuset is not None:
        try:
            wanted = parse_cpu_list(cpuset)
        except ValueError:
            raise SpecError(f"{driver}: invalid --cpuset-cpus {cpuset!r}") from None
        if not wanted or not wanted <= host:
            raise SpecError(f"{driver}: --cpuset-cpus {cpuset} is outside this host's CPUs ({host_list})")
    if cpus is not None and host and cpus > len(host):
        raise SpecError(f"{driver}: --cpus {cpus:g} is more than this host's {len(host)} CPUs")


def human_size(n: int) -> str:
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit:
            return f"{n / unit:g} {name}"
    return f"{n} bytes"


# -- finding the hierarchies ------------------------------------------------------------------------


def cgroup_mounts() -> list[tuple[Path, str, set[str]]]:
    """(mount point, "cgroup" or "cgroup2", mount options) of each cgroup filesystem, from mountinfo.

    A mountinfo line: ``36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:15 - cgroup cgroup rw,memory``:
    the mount point is the 5th field; after the `` - `` come the type, the source and the options, where
    cgroup v1 names its controllers.
    """
    out = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, (fstype, _source, options) = left.split(), right.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                mount_point = fields[4].replace("\\040", " ")
                out.append((Path(mount_point), fstype, set(options.split(","))))
    return out


def join(record: dict[str, Any], pid: int, driver: str) -> None:
    """Put ``pid`` in every cgroup of a journal record (``pish exec`` joins a running container)."""
    for path in cgroup_paths(record, driver):
        write(path / "cgroup.procs", pid, driver)


def subtree_pids(cgroup: Path) -> list[int]:
    """Every pid in ``cgroup`` and the cgroups below it."""
    return sorted({pid for cg in subtree(cgroup) for pid in procs(cg)})
