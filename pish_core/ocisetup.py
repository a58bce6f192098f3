"""The parts of an OCI config the container's init applies, beyond what the docker face needs: the
root's mount propagation, device nodes, sysctls, rlimits, oom_score_adj, umask, the command looked up
before ``start``, the wait on the exec fifo, and startContainer hooks. Each is a no-op for a spec that
does not ask for it, so ``pish run`` goes through the same code.
"""
from __future__ import annotations

import contextlib
import os
import resource
import stat
from collections.abc import Iterable
from pathlib import Path

from pish_core import native, userns
from pish_core.errors import InitError
from pish_core.rootpath import resolve_in_root
from pish_core.security import devices as device_lists
from pish_core.spec import ContainerSpec, Device, Process

#: linux.rootfsPropagation and the mount propagation options -> mount(2) flags
PROPAGATION = {"private": native.MS_PRIVATE, "rprivate": native.MS_PRIVATE | native.MS_REC,
               "slave": native.MS_SLAVE, "rslave": native.MS_SLAVE | native.MS_REC,
               "shared": native.MS_SHARED, "rshared": native.MS_SHARED | native.MS_REC,
               "unbindable": native.MS_UNBINDABLE, "runbindable": native.MS_UNBINDABLE | native.MS_REC}


def prepare_root(root: Path, propagation: str) -> None:
    """Our mount namespace stops receiving the host's mounts (rslave, as runc, or what the config says),
    and the root becomes a mount point of its own, as pivot_root needs."""
    native.mount(None, "/", None, PROPAGATION.get(propagation) or native.MS_SLAVE | native.MS_REC)
    native.mount(str(root), str(root), None, native.MS_BIND | native.MS_REC)


def set_propagation(propagation: str) -> None:
    """After pivot_root: the container's / gets linux.rootfsPropagation, if the config gives one."""
    if propagation:
        native.mount(None, "/", None, PROPAGATION[propagation])


def make_devices(root: Path, extra: Iterable[Device]) -> None:
    """The default nodes (null, zero, full, random, urandom, tty), linux.devices, and /dev's symlinks, as
    runc makes them. In a user namespace a node cannot be opened (its filesystem is nodev there): the
    host's node is bound over an empty file instead, as runc does."""
    nodes = [Device(f"/dev/{name}", "c", major, minor) for name, major, minor in device_lists.NODES]
    in_userns = userns.running_in_userns()
    for dev in [*nodes, *extra]:
        target = resolve_in_root(root, dev.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if in_userns:
            if not target.exists():
                target.touch()
            native.mount(dev.path, str(target), None, native.MS_BIND)
            continue
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[dev.type]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)  # a node the image shipped (or an earlier mount) is replaced
        os.mknod(target, kind | (dev.file_mode & 0o7777), os.makedev(dev.major, dev.minor))
        os.chmod(target, dev.file_mode & 0o7777)  # mknod obeys the umask
        os.chown(target, dev.uid, dev.gid)
    dev_dir = root / "dev"
    links = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}
    if (dev_dir / "pts" / "ptmx").exists():
        links["ptmx"] = "pts/ptmx"
    for name, target_text in links.items():
        if not os.path.lexists(dev_dir / name):
            os.symlink(target_text, dev_dir / name)


def write_sysctls(root: Path, sysctl: Iterable[tuple[str, str]]) -> None:
    """linux.sysctl, through the container's own /proc (its namespaces' values, never the host's)."""
    for key, value in sysctl:
        path = root / "proc" / "sys" / key.replace(".", "/")
        with open(path, "w") as f:
            f.write(value)


def set_process_limits(process: Process) -> None:
    """process.rlimits, oomScoreAdj and umask, while the init is still root with every capability."""
    for limit in process.rlimits:
        resource.setrlimit(getattr(resource, limit.type), (limit.soft, limit.hard))
    if process.oom_score_adj is not None:
        Path("/proc/self/oom_score_adj").write_text(str(process.oom_score_adj))
    if process.umask is not None:
        os.umask(process.umask)


def look_path(command: str, env: dict[str, str]) -> None:
    """Refuse a command that cannot be executed, before the container waits for ``start``."""
    candidates = [command] if "/" in command else [os.path.join(d or ".", command)
                                                   for d in env.get("PATH", "").split(":")]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return
    if "/" in command:
        found = os.path.exists(command)
        reason = "permission denied" if found else "no such file or directory"
        raise InitError(f'exec: "{command}": {reason}', 126 if found else 127)
    raise InitError(f'exec: "{command}": executable file not found in $PATH: no such file or directory', 127)


def wait_for_start(fifo_fd: int) -> None:
    """Block until ``pish-oci start`` opens the exec fifo to read, then tell it we go on (runc's way)."""
    fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
        os.close(fifo_fd)


def run_hooks_inside(spec: ContainerSpec, kind: str) -> None:
    """Hooks of ``kind`` run by the init itself, in the container (startContainer)."""
    from pish_core import hooks

    for hook_kind, hook in spec.hooks:
        if hook_kind == kind:
            hooks.run(hook, kind, hooks.state_of(spec.name, "running", os.getpid(), spec.bundle,
                                                 dict(spec.annotations)))
