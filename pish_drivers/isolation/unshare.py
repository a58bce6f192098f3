"""The ``unshare`` isolation driver: new mount, uts, ipc, pid and net namespaces, like runc's nsexec.

A new PID namespace only applies to the children of the process that unshares it, so the start takes two
forks. pish forks an intermediate process, which unshares the namespaces and forks the container's
PID 1, reports that pid and exits. pish is a child subreaper, so PID 1 becomes pish's child and pish can
wait for it. PID 1 then blocks on a pipe until pish has put it in its cgroup and network.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pish_core import log, native, probe, proc, userns
from pish_core.drivers import Child, Isolation, RunContext
from pish_core.errors import ExecError, PishError, SpecError
from pish_core.init import container_main, join_cgroup, joined_main
from pish_core.security import enforce
from pish_core.spec import ContainerSpec, Mount, Process, Security, UserNamespace

_log = log.get("isolation")

NAMESPACES = {"mount": native.CLONE_NEWNS, "uts": native.CLONE_NEWUTS, "ipc": native.CLONE_NEWIPC,
              "pid": native.CLONE_NEWPID, "net": native.CLONE_NEWNET}
#: OCI's namespace type names where they differ from ours, and /proc/PID/ns's names
OCI_TYPES = {"network": "net"}
PROC_NS = {"mount": "mnt"}


def _open_namespaces(joins: list[tuple[str, str]]) -> list[tuple[str, int]]:
    """Open each namespace to join (user first: it owns the others); a path that is no namespace of
    that type is refused by setns later, one that cannot be opened here."""
    out: list[tuple[str, int]] = []
    try:
        for ns, path in sorted(joins, key=lambda j: j[0] != "user"):
            try:
                out.append((ns, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError as exc:
                raise PishError(f"cannot open the {ns} namespace {path}: {(exc.strerror or '').lower()}") from None
    except BaseException:
        for _, fd in out:
            os.close(fd)
        raise
    return out


def _join(joins: list[tuple[str, int]]) -> None:
    """In the intermediate process: setns into each opened namespace."""
    for ns, fd in joins:
        try:
            native.setns(fd, 0)
        except OSError as exc:
            raise PishError(f"cannot join the {ns} namespace: {(exc.strerror or '').lower()}") from None
        if ns == "user":
            userns.become_root()


class ForkedChild(Child):
    def __init__(self, pid: int, go_fd: int, err_fd: int, in_cgroup: bool = False) -> None:
        self.pid = pid
        self.in_cgroup = in_cgroup
        self._go_fd = go_fd
        self._err_fd = err_fd
        self.status: int | None = None
        self.left = False

    def release(self, mounts: Sequence[Mount] = (), exec_fifo: int | None = None,
                cgroup_files: Sequence[str] = ()) -> None:
        go = {"mounts": [dataclasses.asdict(m) for m in mounts], "exec_fifo": exec_fifo,
              "cgroup_files": list(cgroup_files),
              "supervised": not self.left and exec_fifo is None}  # else no PDEATHSIG: see init
        os.write(self._go_fd, b"g" + json.dumps(go).encode() + b"\n")  # our end stays open: see init
        # EOF without data: the exec succeeded (close-on-exec). With the fifo, "0 ready": it waits there.
        report = os.read(self._err_fd, 65536) if exec_fifo is not None else _read_all(self._err_fd)
        if exec_fifo is not None and report.startswith(b"0 "):
            return
        if report:
            code, _, message = report.decode(errors="replace").partition(" ")
            self.wait()
            raise ExecError(message, int(code) if code.isdigit() else 125)

    def wait(self) -> int:
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        return self.status

    def kill(self, sig: int) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def leave(self) -> None:
        self.left = True

    def close(self) -> None:
        """Kill the child if it still runs (unless it was left to run), reap it, close our pipe ends."""
        if self.status is None and not self.left:
            self.kill(signal.SIGKILL)
            self.wait()
        for fd in (self._go_fd, self._err_fd):
            if fd >= 0:
                os.close(fd)
        self._go_fd = self._err_fd = -1


class UnshareIsolation(Isolation):
    name = "unshare"
    description = ("new mount, uts, ipc, pid, net (and user, cgroup) namespaces via unshare(2), two forks "
                   "like runc's nsexec")
    clones_into_cgroup = True

    def validate(self, spec: ContainerSpec) -> None:
        if spec.userns.private:  # tried, not guessed from sysctls: a security module may say no too
            why = probe.user_namespace()
            if why:
                raise SpecError(f"--userns {spec.userns.mode}: {why}")

    @contextlib.contextmanager
    def spawn(self, ctx: RunContext, rootfs: Path, *, netns: bool = True,
              stdio: tuple[int, int, int] = (0, 1, 2), console: int | None = None) -> Iterator[Child]:
        spec = ctx.spec
        if spec.namespaces:  # an OCI config says which to create and which to join, by path
            wanted = {OCI_TYPES.get(n.type, n.type) for n in spec.namespaces if not n.path}
            namespaces = [ns for ns in NAMESPACES if ns in wanted]
            joins = _open_namespaces([(OCI_TYPES.get(n.type, n.type), n.path) for n in spec.namespaces if n.path])
        else:
            namespaces = [ns for ns in NAMESPACES if ns != "net" or netns]
            joins = []
        later = ["cgroup"] if spec.cgroupns == "private" else []  # unshared by the init, once in its cgroup
        flags = 0
        for ns in namespaces:
            flags |= NAMESPACES[ns]

        def in_child(go_fd: int, err_fd: int) -> NoReturn:
            container_main(spec, rootfs, go_fd, err_fd, stdio, console)

        def enter_and_unshare() -> None:
            _join(joins)
            native.unshare(flags)

        enforce.prepare(spec.security)  # the seccomp program, compiled once, inherited by the child
        try:
            if spec.userns.private:  # --userns: a user namespace first, mapped by us, owning the others
                namespaces.insert(0, "user")
                sync = _UsernsSync(spec.userns, joins)
                child = _fork_twice(lambda: sync.in_middle(flags), in_child, "cannot create namespaces",
                                    with_middle=sync.in_parent)
            else:
                child = _fork_twice(enter_and_unshare, in_child, "cannot create namespaces")
        finally:
            for _, fd in joins:
                os.close(fd)
        for n in spec.namespaces:
            if n.path:
                _log.info("joined the %s namespace %s", n.type, n.path)
        record = ctx.journal.add("isolation", self.name, "process", pid=child.pid, start=proc.start_time(child.pid))
        _log.info("started container process %d in new namespaces (%s)", child.pid, ", ".join(namespaces + later))
        try:
            yield child
        finally:
            child.close()
            if not ctx.journal.detached:  # left to its engine (pish-oci create): the record stays
                ctx.journal.drop(record)

    @contextlib.contextmanager
    def enter(self, pid: int, process: Process, env: dict[str, str], security: Security, *,
              stdio: tuple[int, int, int] = (0, 1, 2), console: int | None = None,
              cgroup_files: Sequence[str] = (), cgroup_dir: str | None = None) -> Iterator[Child]:
        # Open every namespace first: once we are in the container's mount namespace, /proc/PID may differ.
        # The container's user namespace, if it is not ours, comes first: it owns the others.
        def same(ns: str) -> bool:
            return os.stat(f"/proc/{pid}/ns/{ns}").st_ino == os.stat(f"/proc/self/ns/{ns}").st_ino

        own_userns = same("user")
        # The cgroup namespace is the host's unless the container has its own (--cgroupns): joining ours
        # again would need CAP_SYS_ADMIN over the host's, which a rootless pish lacks.
        order = [ns for ns in JOIN_ORDER if ns != "cgroup" or not same(ns)]
        if not own_userns:
            order.insert(0, "user")
        # Born in the container's cgroup (cgroup_dir, v2), cloned into it by the intermediate. The kernel
        # checks that as a move from the intermediate's cgroup, seen from its cgroup namespace: on a
        # delegating host (nsdelegate, as systemd mounts cgroup2) the container's own cgroup namespace does
        # not see ours, so the child joins that one, and the mount namespace after it, itself. Not into a
        # user namespace of the container's: the clone would be checked with its ids, not the host's root.
        into = os.open(cgroup_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) \
            if cgroup_dir is not None and own_userns else None
        late = {"cgroup", "mnt"} if into is not None else set()
        fds = [(ns, os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)) for ns in order]
        enforce.prepare(security)

        def join() -> None:
            join_cgroup(list(cgroup_files))  # first, where the host's paths still mean what they say
            for number, (ns, fd) in enumerate(fds):
                if ns not in late:
                    native.setns(fd, 0)
                if number == 0 and not own_userns:  # now, while /proc is still ours to read
                    userns.become_root()
            native.prctl(native.PR_SET_KEEPCAPS, 1)  # see pish_core/security: lock_down decides

        def in_child(go_fd: int, err_fd: int) -> NoReturn:
            for ns, fd in fds:
                if ns in late:
                    native.setns(fd, 0)
            joined_main(process, env, go_fd, err_fd, stdio, console, security)

        try:
            child = _fork_twice(join, in_child, "cannot join the container's namespaces", into=into)
        finally:
            for _, fd in fds:
                os.close(fd)
            if into is not None:
                os.close(into)
        try:
            yield child
        finally:
            child.close()

    def release(self, record: dict[str, Any]) -> None:
        """Kill a process left by a dead run, if it is still the same process (pids get reused)."""
        pid = int(record["pid"])
        if proc.is_same(pid, record.get("start")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                _log.info("killed container process %d", pid)


#: setns order for `pish exec`: mnt last, since it changes what paths mean; pid applies to our child.
JOIN_ORDER = ("ipc", "uts", "net", "pid", "cgroup", "mnt")


class _UsernsSync:
    """The handshake that maps a new user namespace: the intermediate unshares CLONE_NEWUSER and says
    so; we (host root, outside it) write its uid_map and gid_map and say so; it becomes the namespace's
    root and unshares the other namespaces, which the user namespace then owns."""

    def __init__(self, ns: UserNamespace, joins: list[tuple[str, int]] | None = None) -> None:
        self.ns = ns
        self.joins = joins or []
        self.ready_r, self.ready_w = os.pipe()
        self.mapped_r, self.mapped_w = os.pipe()

    def in_middle(self, flags: int) -> None:
        os.close(self.ready_r)
        os.close(self.mapped_w)
        native.unshare(native.CLONE_NEWUSER)
        os.write(self.ready_w, b"u")
        os.close(self.ready_w)
        if os.read(self.mapped_r, 1) != b"m":
            raise PishError("pish did not map the user namespace")
        os.close(self.mapped_r)
        userns.become_root()
        _join(self.joins)  # a namespace to join (a network namespace, say) must be one the new user ns may enter
        native.unshare(flags)

    def in_parent(self, middle: int) -> None:
        os.close(self.ready_w)
        os.close(self.mapped_r)
        try:
            if os.read(self.ready_r, 1) == b"u":  # else it failed first, and reports why on its error pipe
                try:
                    userns.write_maps(middle, self.ns)
                except OSError as exc:
                    raise PishError(f"cannot map the user namespace of process {middle}: {exc.strerror}") from None
                os.write(self.mapped_w, b"m")
        finally:
            os.close(self.ready_r)
            os.close(self.mapped_w)


def _fork_twice(in_middle: Callable[[], None], in_child: Callable[[int, int], NoReturn],
                failure: str, with_middle: Callable[[int], None] | None = None,
                into: int | None = None) -> ForkedChild:
    """Fork an intermediate process that runs ``in_middle`` (enter namespaces), then forks the real child
    (which runs ``in_child(go_fd, err_fd)``; born in the cgroup v2 directory ``into`` if given and the
    kernel can: ``ForkedChild.in_cgroup``), reports its pid and exits. We are a subreaper, so the child
    becomes ours to wait for. ``with_middle(pid)`` is our side of any handshake with the intermediate."""
    native.prctl(native.PR_SET_CHILD_SUBREAPER, 1)
    go_r, go_w = os.pipe()
    pid_r, pid_w = os.pipe()
    err_r, err_w = os.pipe()  # all close-on-exec (PEP 446): a successful exec closes err_w
    middle = os.fork()
    if middle == 0:
        try:
            os.close(go_w)
            os.close(pid_r)
            os.close(err_r)
            in_middle()
            child, born_in = _fork(into)
            if child == 0:
                os.close(pid_w)
                in_child(go_r, err_w)
            os.write(pid_w, f"{child} {int(born_in)}".encode())
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001
            with contextlib.suppress(OSError):
                os.write(err_w, f"125 {failure}: {exc}".encode())
            os._exit(125)
    for fd in (go_r, pid_w, err_w):
        os.close(fd)
    if with_middle is not None:
        try:
            with_middle(middle)
        except BaseException:
            os.kill(middle, signal.SIGKILL)
            os.waitpid(middle, 0)
            for fd in (go_w, pid_r, err_r):
                os.close(fd)
            raise
    os.waitpid(middle, 0)
    raw = _read_all(pid_r)
    os.close(pid_r)
    if not raw:
        report = _read_all(err_r).decode(errors="replace")
        os.close(err_r)
        os.close(go_w)
        raise PishError(report.partition(" ")[2] or failure)
    pid, in_cgroup = raw.split()
    return ForkedChild(int(pid), go_w, err_r, in_cgroup=in_cgroup == b"1")


def _fork(into: int | None) -> tuple[int, bool]:
    """``os.fork``; with ``into`` (a cgroup v2 directory), the child born there if the kernel can (True)."""
    if into is not None:
        try:
            return native.fork_into_cgroup(into), True
        except OSError:  # Linux < 5.7, clone3 filtered out, or refused: forked plainly, moved in by the caller
            pass
    return os.fork(), False


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)
