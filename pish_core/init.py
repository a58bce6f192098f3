"""What runs inside the container, as its PID 1, between fork and exec.

The parent has already put this process in its cgroup and wired its network; we block until it says go,
then build the container's view of the world and exec the command, which stays PID 1 (see
docs/architecture.md for why there is no separate init process). Any failure before exec travels back to
the parent on a close-on-exec pipe as ``CODE message`` and this process exits; a successful exec closes
the pipe, which the parent reads as "started".
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import struct
import sys
import termios
from pathlib import Path
from typing import NoReturn

from pish_core import mounts, native, ocisetup, user, userns
from pish_core.errors import InitError
from pish_core.security import devices, enforce
from pish_core.spec import ContainerSpec, Mount, Process, Security, container_env

_NOSUID_NODEV_NOEXEC = native.MS_NOSUID | native.MS_NODEV | native.MS_NOEXEC


def setup_stdio(stdio: tuple[int, int, int], console: int | None, preserve_fds: int = 0,
                console_size: tuple[int, int] | None = None) -> None:
    """Give the command its stdin/stdout/stderr. With ``console``, make a pseudo-terminal from the
    container's own /dev/ptmx (so ``tty`` names it and the container's /dev/pts holds it), send the master
    to the supervisor on that socket, and make the slave our stdio and controlling terminal."""
    os.setsid()
    if console is not None:
        master, slave = os.openpty()  # /dev/ptmx here is the container's: we have pivoted or joined
        import socket  # only for a terminal: socket.py costs a run without one ~3 ms

        with socket.socket(fileno=console) as sock:
            socket.send_fds(sock, [b"pty"], [master])
        os.close(master)
        stdio = (slave, slave, slave)
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)
    if console is not None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if console_size:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", *console_size, 0, 0))
    _only_stdio_survives_exec(preserve_fds)


def _only_stdio_survives_exec(preserve_fds: int = 0) -> None:
    """Mark every descriptor above 2 close-on-exec, as runc does: the command gets its stdio and nothing
    else pish had open or inherited (a shell's ``3>file``, a CI runner's pipes, containerd's shim socket),
    except ``preserve_fds`` more (3, 4, ...: runc's --preserve-fds)."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2 + preserve_fds:
            with contextlib.suppress(OSError):  # the directory's own descriptor, closed by now
                os.set_inheritable(int(name), False)


def mount_dev(root: Path) -> None:
    """A small /dev: a tmpfs with the usual nodes, a private devpts, /dev/shm; nothing of the host's."""
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    native.mount("tmpfs", str(dev), "tmpfs", native.MS_NOSUID, "mode=755,size=65536k")
    in_userns = userns.running_in_userns()
    for name, major, minor in devices.NODES:
        if in_userns:  # a node made there would not open (its filesystem is nodev): bind the host's
            (dev / name).touch()
            native.mount(f"/dev/{name}", str(dev / name), None, native.MS_BIND)
            continue
        os.mknod(dev / name, 0o666 | 0o020000, os.makedev(major, minor))  # S_IFCHR
        os.chmod(dev / name, 0o666)  # mknod obeys the umask
    (dev / "pts").mkdir()
    native.mount("devpts", str(dev / "pts"), "devpts", native.MS_NOSUID | native.MS_NOEXEC,
                 "newinstance,ptmxmode=0666,mode=0620")
    (dev / "shm").mkdir()
    native.mount("shm", str(dev / "shm"), "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
    os.symlink("pts/ptmx", dev / "ptmx")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", dev / name)
    os.symlink("/proc/self/fd", dev / "fd")


def mount_rootfs(root: Path) -> None:
    """Make our mount namespace private, then mount /proc, /dev and a read-only /sys inside ``root``."""
    native.mount(None, "/", None, native.MS_REC | native.MS_PRIVATE)
    native.mount(str(root), str(root), None, native.MS_BIND | native.MS_REC)  # pivot_root needs a mount point
    (root / "proc").mkdir(exist_ok=True)
    native.mount("proc", str(root / "proc"), "proc", _NOSUID_NODEV_NOEXEC)
    mount_dev(root)
    (root / "sys").mkdir(exist_ok=True)
    try:
        native.mount("sysfs", str(root / "sys"), "sysfs", _NOSUID_NODEV_NOEXEC | native.MS_RDONLY)
    except PermissionError:  # a user namespace without a network namespace of its own (--net host)
        native.mount("/sys", str(root / "sys"), None, native.MS_BIND | native.MS_REC)
        native.mount(None, str(root / "sys"), None,
                     native.MS_BIND | native.MS_REMOUNT | native.MS_RDONLY | _NOSUID_NODEV_NOEXEC)


def pivot_into(root: Path) -> None:
    """Make ``root`` the new / and detach the old one, so no host path stays reachable."""
    os.chdir(root)
    native.pivot_root(".", ".")  # stacks the old root under the new one...
    native.umount2(".", native.MNT_DETACH)  # ...and this lazily detaches it
    os.chdir("/")


def move_into(root: Path) -> None:
    """runc's --no-pivot (its msMoveRoot): detach every mount outside ``root`` (none leaks into the
    container's mount table), move ``root`` onto / and chroot into it."""
    real = os.path.realpath(root)  # mountinfo shows resolved paths (a bundle's rootfs may be a symlink)
    prefix = real.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as table:
        points = [line.split()[4] for line in table]
    for point in sorted(set(points), key=len, reverse=True):  # deepest first
        if point == real or point.startswith(prefix) or prefix.startswith(point.rstrip("/") + "/"):
            continue  # the root, what is in it, and the mounts it sits on
        with contextlib.suppress(OSError):  # already gone with a parent, or busy: it is covered anyway
            native.umount2(point, native.MNT_DETACH)
    os.chdir(real)
    native.mount(real, "/", None, native.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def remount_readonly(root: Path) -> None:
    """``--read-only``: the root's own bind mount becomes read-only. /proc, /dev, /sys, volumes and tmpfs
    mounts are mounts of their own on top of it and keep their flags, as with docker."""
    native.mount(None, str(root), None, native.MS_BIND | native.MS_REMOUNT | native.MS_RDONLY)


def exec_command(args: tuple[str, ...], cwd: str, env: dict[str, str]) -> NoReturn:
    try:
        os.makedirs(cwd, exist_ok=True)  # docker creates a missing working directory too
        os.chdir(cwd)
    except OSError as exc:
        raise InitError(f"cannot use working directory {cwd}: {(exc.strerror or '').lower()}", 126) from None
    try:
        os.execvpe(args[0], list(args), env)
    except OSError as exc:
        code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
        raise InitError(f"exec {args[0]}: {os.strerror(exc.errno or 0).lower()}", code) from None


def _await_go(go_fd: int) -> tuple[list[Mount], int | None]:
    """Block until the supervisor says go: ``g`` + a JSON line of extra mounts (and an exec fifo, see
    ``Child.release``). Exit quietly if it died first (the pipe then ends early). The supervisor keeps its
    end open while it lives, which lets us close the gap between its "go" and our PDEATHSIG: if the pipe
    has hung up by then, it is gone. Unsupervised (an exec fifo, or a process left to run: ``pish-oci``)
    no one of pish's stays: the engine that called pish-oci watches us."""
    message = b""
    while not message.endswith(b"\n"):
        chunk = os.read(go_fd, 65536)
        if not chunk:
            os._exit(1)
        message += chunk
    go = json.loads(message[1:])
    exec_fifo: int | None = go.get("exec_fifo")
    if go.get("supervised", True):
        native.prctl(native.PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the supervisor, never run unwatched
        if _hung_up(go_fd):
            os._exit(1)
    os.close(go_fd)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD,
                signal.SIGALRM, signal.SIGWINCH):
        signal.signal(sig, signal.SIG_DFL)
    join_cgroup(go.get("cgroup_files", ()))
    mounts = [Mount(m["destination"], m["source"], m["type"], tuple(m["options"])) for m in go["mounts"]]
    return mounts, exec_fifo


def join_cgroup(files: list[str]) -> None:
    """Move this process into its cgroup by writing "0" (itself) to each file (``Group.join_files``), before
    anything else it does. We are one thread, so one task moves, which the kernel does without its lock
    over every cgroup move of the host (a parent writing our pid waits out an RCU grace period instead)."""
    for file in files:
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as exc:
            raise InitError(f"cannot join the cgroup {os.path.dirname(file)}: {exc.strerror}") from None


def _hung_up(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(event & select.POLLHUP for _, event in poller.poll(0))


def container_main(spec: ContainerSpec, root: Path, go_fd: int, err_fd: int,
                   stdio: tuple[int, int, int], console: int | None) -> NoReturn:
    """The container's first process: wait for go, build its world, exec the command. Never returns."""
    ready = False
    try:
        extra_mounts, exec_fifo = _await_go(go_fd)
        fifo_fd = -1 if exec_fifo is None else exec_fifo  # an O_PATH fd we inherited: reachable after pivot
        if spec.cgroupns == "private":  # now, once the supervisor has put us in our cgroup: it is our root
            native.unshare(native.CLONE_NEWCGROUP)
        if spec.hostname:
            native.sethostname(spec.hostname)
        if spec.domainname:
            Path("/proc/sys/kernel/domainname").write_text(spec.domainname)  # our own uts namespace's
        if spec.from_oci_config:  # OCI: the config's mounts are the whole table, /proc /dev /sys included
            ocisetup.prepare_root(root, spec.rootfs_propagation)
            mounts.apply(root, [*spec.mounts, *extra_mounts])
            ocisetup.make_devices(root, spec.devices)
        else:
            mount_rootfs(root)
            mounts.apply(root, [*spec.mounts, *extra_mounts])
        ocisetup.write_sysctls(root, spec.sysctl)  # before /proc/sys turns read-only
        if spec.readonly_rootfs:
            remount_readonly(root)
        enforce.confine(root, spec)  # masked and read-only paths, the bounding set
        if spec.no_pivot:
            move_into(root)
        else:
            pivot_into(root)
        if spec.from_oci_config:
            ocisetup.set_propagation(spec.rootfs_propagation)
        ocisetup.set_process_limits(spec.process)  # rlimits, oom_score_adj, umask: while we are still root
        setup_stdio(stdio, console, spec.process.preserve_fds, spec.process.console_size)
        env = container_env(spec)
        if fifo_fd >= 0:  # still root: the fifo is reached through our own /proc/self/fd
            ocisetup.look_path(spec.process.args[0], env)  # as runc: a missing command fails `create`, not `start`
            os.write(err_fd, b"0 ready")
            ready = True
            ocisetup.wait_for_start(fifo_fd)
            ocisetup.run_hooks_inside(spec, "startContainer")
        user.become(spec.process.user, spec.process.cwd)
        enforce.lock_down(spec.security)  # no_new_privs, seccomp, capabilities: last before exec
        exec_command(spec.process.args, spec.process.cwd, env)
    except InitError as exc:
        _report(err_fd, exc.code, str(exc), ready)
    except BaseException as exc:  # noqa: BLE001 - anything here must reach the parent, not a traceback
        _report(err_fd, 125, f"container init failed: {exc}", ready)


def joined_main(process: Process, env: dict[str, str], go_fd: int, err_fd: int,
                stdio: tuple[int, int, int], console: int | None, sec: Security | None = None) -> NoReturn:
    """A process joining a running container (`pish exec`): its namespaces are already entered. It gets
    the container's ``sec`` (capabilities, no_new_privs, seccomp), docker's defaults if none is given."""
    try:
        _await_go(go_fd)
        ocisetup.set_process_limits(process)
        setup_stdio(stdio, console, process.preserve_fds, process.console_size)
        user.become(process.user, process.cwd)
        enforce.lock_down(sec or Security())
        exec_command(process.args, process.cwd, env)
    except InitError as exc:
        _report(err_fd, exc.code, str(exc))
    except BaseException as exc:  # noqa: BLE001
        _report(err_fd, 125, f"exec failed: {exc}")


def _report(err_fd: int, code: int, message: str, ready: bool = False) -> NoReturn:
    """Send the failure to the parent, or, once ``ready`` was sent (nobody reads that pipe any more: an
    OCI container failing after ``start``), print it on the container's stderr, as runc does."""
    try:
        if ready:
            os.write(2, f"pish: {message}\n".encode())
        else:
            os.write(err_fd, f"{code} {message}".encode())
    finally:
        sys.stderr.flush()
        os._exit(code)
