"""User namespaces: ``--userns``, the id maps, the id-mapped image, and rootless pish.

A user namespace renumbers users. With ``--userns auto`` the container's root (uid 0 inside) is an
unprivileged uid outside, 100000 say: a process that escapes is nobody on the host, and files it writes
in a volume belong to 100000. The range comes from /etc/subuid and /etc/subgid, where pish keeps one of
its own (``pish:START:65536``), added on first use in the first space no other user's range covers.
``--userns C:H:N`` maps a range of your choice (container root must be in it); a range overlapping
another user's subordinate ids is refused. ``--userns host`` (the default, as docker's) makes none.

How it is made (``pish_drivers/isolation/unshare.py``): the intermediate process unshares CLONE_NEWUSER
first and waits; pish, still host root, writes its ``uid_map`` and ``gid_map`` (``write_maps``); the
intermediate becomes uid 0 of the new namespace and unshares the others, which the new user namespace
then owns. The image is shared, read-only, by every container and owned by host ids, so the overlay gets
an **id-mapped** view of it as its lower layer (``mapped_lowers``: open_tree + mount_setattr(MOUNT_ATTR_IDMAP),
Linux >= 5.19 for overlayfs on id-mapped layers); overlayfs itself cannot be id-mapped (the kernel refuses
with EINVAL), and no chowned copy is made. The upper layer is chowned to the container root's host id.

Rootless (pish run by a non-root user): pish itself enters a new user namespace (and mount namespace)
before it acquires anything, as rootless podman does, with the user's uid as root inside, plus the user's
/etc/subuid range through ``newuidmap``/``newgidmap`` when both exist (else that one uid only). Every
driver then runs unchanged as "root" of that namespace: overlayfs mounts in it (Linux >= 5.11), and the
mounts vanish with the supervisor. What needs real root is refused in one line (``check_rootless``).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pish_core import log, paths
from pish_core.errors import PishError, SpecError
from pish_core.spec import IDMapping, UserNamespace
from pish_core.value import Value, value

if TYPE_CHECKING:
    import subprocess

    from pish_core.spec import ContainerSpec

_log = log.get("userns")

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
#: The owner name of pish's own range in /etc/subuid and /etc/subgid, and its size (one container's ids).
OWNER = "pish"
RANGE = 65536
FIRST = 100000  # SUB_UID_MIN in login.defs
MAX_ID = 4294967294  # (uid_t)-1 is "no id"
_MAP_RE = re.compile(r"(\d+):(\d+):(\d+)")


# -- where we are ---------------------------------------------------------------------------------


def running_in_userns() -> bool:
    """True in any user namespace but the host's (whose uid_map is the identity of all 2^32-1 ids)."""
    try:
        return Path("/proc/self/uid_map").read_text().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


rootless = paths.rootless


# -- /etc/subuid and /etc/subgid ------------------------------------------------------------------


@value
class SubRange(Value):
    owner: str  # a user name or uid, as the file has it
    start: int
    count: int

    @property
    def end(self) -> int:  # one past the last
        return self.start + self.count

    def overlaps(self, start: int, count: int) -> bool:
        return self.start < start + count and start < self.end


def read_ranges(path: Path) -> list[SubRange]:
    """The ``owner:start:count`` lines of a subordinate id file; malformed lines are skipped, as shadow does."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            owner, _, rest = line.strip().partition(":")
            start, _, count = rest.partition(":")
            if owner and start.isdigit() and count.isdigit():
                out.append(SubRange(owner, int(start), int(count)))
    return out


def _check_free(start: int, count: int, ranges: Sequence[SubRange], path: Path, what: str) -> None:
    for r in ranges:
        if r.owner != OWNER and r.overlaps(start, count):
            raise SpecError(f"{what}: host ids {start}-{start + count - 1} overlap the range of user "
                            f"{r.owner} in {path} ({r.start}-{r.end - 1})")


def _own_range(files: tuple[Path, Path]) -> int:
    """The start of pish's range, the same in both files; added to both if it is missing."""
    from pish_core import state

    with state.flocked(paths.subid_lock()):
        uids, gids = (read_ranges(f) for f in files)
        mine = [r for r in (*uids, *gids) if r.owner == OWNER]
        if mine:
            if len({(r.start, r.count) for r in mine}) != 1 or len(mine) != 2:
                raise SpecError(f"--userns auto: the {OWNER} ranges in {files[0]} and {files[1]} differ; "
                                f"make them one START:{RANGE} line each")
            for path, ranges in zip(files, (uids, gids)):
                _check_free(mine[0].start, mine[0].count, ranges, path, "--userns auto")
            if mine[0].count < RANGE:
                raise SpecError(f"--userns auto: the {OWNER} range in {files[0]} has fewer than {RANGE} ids")
            return mine[0].start
        start = FIRST
        taken = sorted((*uids, *gids), key=lambda r: r.start)
        for r in taken:
            if r.overlaps(start, RANGE):
                start = max(start, r.end)
        if start + RANGE - 1 > MAX_ID:
            raise SpecError(f"--userns auto: no free range of {RANGE} ids left in {files[0]}")
        for path in files:
            _append(path, f"{OWNER}:{start}:{RANGE}\n")
        _log.info("added the range %s:%d:%d to %s and %s", OWNER, start, RANGE, *files)
        return start


def _append(path: Path, line: str) -> None:
    """Add a line to ``path`` atomically (a new file renamed over the old), keeping its mode."""
    try:
        old, mode = path.read_text(), path.stat().st_mode & 0o7777
    except FileNotFoundError:
        old, mode = "", 0o644
    if old and not old.endswith("\n"):
        old += "\n"
    tmp = path.with_name(f".{path.name}.pish.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, (old + line).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- --userns -------------------------------------------------------------------------------------


def parse(text: str | None, files: tuple[Path, Path] = (SUBUID, SUBGID)) -> UserNamespace:
    """``--userns host|auto|C:H:N`` -> the user namespace of the spec, its ids found or checked now.
    Rootless pish always has one: its own (``auto`` or no flag)."""
    if rootless():
        if text not in (None, "auto"):
            raise SpecError(f"--userns {text}: rootless pish always runs in its own user namespace; "
                            "leave --userns out (or say auto)")
        return rootless_mapping()
    if text in (None, "", "host"):
        return UserNamespace()
    if text == "auto":
        start = _own_range(files)
        mapping = (IDMapping(0, start, RANGE),)
        return UserNamespace("auto", mapping, mapping)
    m = _MAP_RE.fullmatch(text)
    if not m:
        raise SpecError(f"invalid --userns {text!r}: use auto, host or CONTAINERID:HOSTID:COUNT, e.g. 0:200000:65536")
    inside, host, count = (int(g) for g in m.groups())
    if count == 0 or inside + count - 1 > MAX_ID or host + count - 1 > MAX_ID:
        raise SpecError(f"invalid --userns {text!r}: the count must be at least 1 and the ids below {MAX_ID + 1}")
    if inside != 0:
        raise SpecError(f"invalid --userns {text!r}: the range must start at the container's root, 0")
    if host == 0 and count == MAX_ID + 1:  # the kernel refuses id-mapped mounts with it (EPERM)
        raise SpecError(f"invalid --userns {text!r}: maps every id to itself, which is the host's own "
                        "namespace: say --userns host")
    for path in files:
        _check_free(host, count, read_ranges(path), path, f"--userns {text}")
    mapping = (IDMapping(inside, host, count),)
    return UserNamespace("map", mapping, mapping)


def maps_host_root(ns: UserNamespace) -> bool:
    """True when a mapping of ``ns`` reaches the host's uid or gid 0 (``--userns 0:0:N``): no isolation."""
    return ns.mode == "map" and any(m.host_id == 0 for m in (*ns.uid_mappings, *ns.gid_mappings))


def host_root(ns: UserNamespace) -> tuple[int, int]:
    """The host uid and gid of the container's root."""
    def find(maps: tuple[IDMapping, ...]) -> int:
        return next(m.host_id for m in maps if m.container_id == 0)
    return find(ns.uid_mappings), find(ns.gid_mappings)


def write_maps(pid: int, ns: UserNamespace) -> None:
    """Write the uid_map and gid_map of ``pid``'s new user namespace from outside it: as root of the
    namespace we are in; or, unprivileged (rootless pish-oci, as runc), one mapping of our own ids after
    denying setgroups (the kernel's condition), or more through the setuid newuidmap/newgidmap."""
    if os.geteuid() != 0:
        if len(ns.uid_mappings) > 1 or len(ns.gid_mappings) > 1:
            _map_with_helpers(pid, ns)
            return
        Path(f"/proc/{pid}/setgroups").write_text("deny")
    for kind, maps in (("uid", ns.uid_mappings), ("gid", ns.gid_mappings)):
        text = "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)
        fd = os.open(f"/proc/{pid}/{kind}_map", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())  # one write(): the kernel takes the whole map at once
        finally:
            os.close(fd)


def become_root() -> None:
    """In a freshly mapped user namespace: be its uid 0 and gid 0, with no supplementary groups."""
    if Path("/proc/self/setgroups").read_text().strip() == "allow":
        os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


# -- the image, id-mapped -------------------------------------------------------------------------


def mapped_lowers(ns: UserNamespace, lowers: Sequence[Path], layer: Path) -> list[Path]:
    """The lower layers the overlay of a container in ``ns`` uses: ``lowers`` themselves, or for a
    container with its own user namespace an id-mapped view of each at ``layer/lower/N``, whose files
    belong to the container's ids. The (new, empty) upper layer is then handed to the container's root."""
    if not ns.private:
        return list(lowers)
    from pish_core import native

    _check_reachable(layer)
    views = []
    with _userns_fd(ns) as userns_fd:
        for number, lower in enumerate(lowers):
            view = layer / "lower" / str(number)
            view.mkdir(parents=True, exist_ok=True)
            fd = native.open_tree(str(lower), native.OPEN_TREE_CLONE | native.OPEN_TREE_CLOEXEC)
            try:
                try:
                    native.mount_setattr_idmap(fd, userns_fd)
                except OSError as exc:
                    raise PishError(f"--userns: cannot make an id-mapped mount of {lower} "
                                    f"({os.strerror(exc.errno or 0).lower()}); it needs Linux >= 5.19 and a "
                                    f"filesystem that has them (ext4, xfs, btrfs; tmpfs from 6.3)") from None
                native.move_mount(fd, str(view))
            finally:
                os.close(fd)
            views.append(view)
    _log.info("mounted id-mapped views of %d image layer(s) under %s", len(views), layer / "lower")
    uid, gid = host_root(ns)
    upper = layer / "upper"
    os.chown(upper, uid, gid)
    os.chmod(upper, lowers[-1].stat().st_mode & 0o7777)  # the root directory's mode, as the image has it
    return views


def _check_reachable(path: Path) -> None:
    """The container's root is nobody special on the host: it must be able to walk to its own root
    filesystem. Say so now, rather than let its init fail with a bare EACCES."""
    for parent in path.parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise PishError(f"--userns: the container's root (a host uid without rights) cannot reach {path}: "
                            f"{parent} is not searchable by others (chmod o+x it, or set PISH_LIB elsewhere)")


def release_lowers(layer: Path) -> None:
    """Unmount what ``mapped_lowers`` mounted under ``layer/lower``: before anyone removes the layer,
    or the removal would walk into the image."""
    from pish_core import mounts

    with contextlib.suppress(FileNotFoundError):
        for view in sorted((layer / "lower").iterdir()):
            mounts.detach(view, _log)


@contextlib.contextmanager
def _userns_fd(ns: UserNamespace) -> Iterator[int]:
    """An fd of a new user namespace with ``ns``'s maps, held by a child that lives only while we open it."""
    from pish_core import native

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: make the namespace, say so, wait to be killed
        try:
            os.close(ready_r)
            native.unshare(native.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        if os.read(ready_r, 1) != b"u":
            raise PishError("--userns: cannot create a user namespace")
        write_maps(pid, ns)
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    try:
        yield fd
    finally:
        os.close(fd)


# -- rootless -------------------------------------------------------------------------------------


def rootless_mapping() -> UserNamespace:
    """The user's uid and gid as root, plus the user's subordinate ranges when newuidmap/newgidmap exist."""
    import pwd

    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    uids, gids = [IDMapping(0, uid, 1)], [IDMapping(0, gid, 1)]
    if shutil.which("newuidmap") and shutil.which("newgidmap"):
        for maps, path in ((uids, SUBUID), (gids, SUBGID)):
            mine = [r for r in read_ranges(path) if r.owner in (name, str(uid))]
            if mine:
                maps.append(IDMapping(1, mine[0].start, mine[0].count))
    if len(uids) != len(gids):  # a range for one but not the other: use neither
        uids, gids = uids[:1], gids[:1]
    return UserNamespace("rootless", tuple(uids), tuple(gids))


def check_rootless(spec: ContainerSpec) -> None:
    """Refuse, in one line, what rootless pish cannot do."""
    if not rootless():
        return
    if spec.userns.mode != "rootless":
        raise SpecError("pish runs without root here: the container needs a rootless user namespace "
                        "(build the spec with userns.rootless_mapping())")
    if spec.net.name not in ("none", "host"):
        raise SpecError(f"--net {spec.net.name} needs root (bridges and veths are the host's); "
                        "rootless pish has --net none and --net host")
    release = os.uname().release
    if spec.storage.name == "overlay" and _version(release) < (5, 11):
        raise SpecError(f"rootless overlay needs Linux 5.11 or later (this is {release}): run pish as root")
    if spec.limits.name not in ("none", "systemd"):  # systemd: the user's own manager, in its delegated cgroup
        raise SpecError(f"--limits {spec.limits.name} needs root; rootless pish has limits only through "
                        "systemd's user manager (--limits systemd), or none")
    from pish_core import probe

    why = probe.user_namespace()
    if why:
        raise SpecError(f"rootless pish needs a user namespace: {why}")


def _version(release: str) -> tuple[int, int]:
    """``6.18.44-fc`` -> (6, 18)."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def enter_rootless(spec: ContainerSpec) -> None:
    """Move this process (the supervisor) into a new user and mount namespace, mapped as ``spec`` says,
    in which it is root. Everything it mounts later stays in that namespace and goes with it. Unless the
    container shares the host's network (``--net host``), the supervisor gets a network namespace of its
    own too: a network driver that steps into the container's and back needs to own where it comes back to."""
    from pish_core import native

    check_rootless(spec)
    ns = spec.userns
    if Path("/proc/self/uid_map").read_text().split()[:2] == ["0", str(ns.uid_mappings[0].host_id)]:
        return  # already in it (a supervisor started by a `pish` that entered it)
    flags = native.CLONE_NEWUSER | native.CLONE_NEWNS | (native.CLONE_NEWNET if spec.net.name != "host" else 0)
    _enter(ns, flags)


def enter_for_cleanup() -> None:
    """Rootless ``rm`` and ``gc``: enter a user and mount namespace mapped as the supervisors' are (the user
    as root, plus its subordinate ids), so a release can remove what a container's other users wrote
    (owned by subordinate ids on the host). The mounts a supervisor made went with its namespace. With
    root, or already inside, nothing to do."""
    from pish_core import native

    if not rootless() or running_in_userns():
        return
    _enter(rootless_mapping(), native.CLONE_NEWUSER | native.CLONE_NEWNS)


def _enter(ns: UserNamespace, flags: int) -> None:
    from pish_core import native

    if len(ns.uid_mappings) == 1:
        native.unshare(flags)
        Path("/proc/self/setgroups").write_text("deny")  # an unprivileged gid_map needs it
        write_maps(os.getpid(), ns)
    else:
        _unshare_with_helpers(ns, flags)
    native.mount(None, "/", None, native.MS_REC | native.MS_PRIVATE)
    _log.debug("entered a user namespace: uids %s", " ".join(map(str, ns.uid_mappings)))


def _unshare_with_helpers(ns: UserNamespace, flags: int) -> None:
    """unshare, then have a child (still outside) run the setuid newuidmap/newgidmap on us."""
    import subprocess  # lazy: only this (rootless, with a subordinate range) starts a program

    from pish_core import native

    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        code = 1
        try:
            if os.read(go_r, 1) == b"g":
                code = _run_map_helpers(os.getppid(), ns, subprocess.run)
        finally:
            os._exit(code)
    os.close(go_r)
    try:
        native.unshare(flags)
        os.write(go_w, b"g")
    finally:
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise PishError("newuidmap/newgidmap could not map the user namespace (see the line above)")


def _run_map_helpers(pid: int, ns: UserNamespace, run: Callable[..., subprocess.CompletedProcess[bytes]]) -> int:
    """newuidmap and newgidmap on ``pid``; the first non-zero exit status, or 0."""
    code = 0
    for tool, maps in (("newuidmap", ns.uid_mappings), ("newgidmap", ns.gid_mappings)):
        args = [str(x) for m in maps for x in (m.container_id, m.host_id, m.size)]
        code = code or run([tool, str(pid), *args], check=False).returncode
    return code


def _map_with_helpers(pid: int, ns: UserNamespace) -> None:
    import subprocess  # lazy: only a rootless user namespace with several ranges starts a program

    if _run_map_helpers(pid, ns, subprocess.run):
        raise PishError("newuidmap/newgidmap could not map the user namespace (see the line above)")
