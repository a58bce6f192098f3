"""Probes: what this host can do, found out by trying it in a throwaway child process.

A file listing can say no where the kernel would say yes: overlayfs is listed in /proc/filesystems only
once its module is loaded, and the first mount(2) of type overlay loads it. So a probe does the thing
itself, in a forked child that has a private mount namespace (and, without root, a user namespace of its
own): whatever it mounts there goes with the child, and nothing on the host changes, even if the probe is
killed half-way. The child's error comes back on a pipe as one line.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable


def in_child(attempt: Callable[[], None]) -> str | None:
    """Run ``attempt`` in a forked child: None if it returned, else the one-line error it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 0
        try:
            os.close(r)
            attempt()
        except BaseException as exc:  # noqa: BLE001 - everything goes back as the probe's answer
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            os.write(w, (text or type(exc).__name__).encode(errors="replace")[:1000])
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode(errors="replace").strip()
    _, status = os.waitpid(pid, 0)
    if status == 0:
        return None
    return message.splitlines()[0] if message else f"the probe died (wait status {status})"


@functools.cache  # asked when the spec is checked and again when a rootless supervisor enters it
def user_namespace() -> str | None:
    """None if this process may make a user namespace (unprivileged ones can be off: the sysctls
    kernel.unprivileged_userns_clone or user.max_user_namespaces, or a security module), else why not."""
    from pish_core import native

    why = in_child(lambda: native.unshare(native.CLONE_NEWUSER))
    return None if why is None else f"cannot make a user namespace here: {why}"


def private_mounts() -> None:
    """In a probe's child: a mount namespace of its own, a user namespace too when not root, and a tmpfs
    at /tmp to work in. Only the child sees any of it."""
    from pish_core import native

    if os.geteuid() == 0:
        native.unshare(native.CLONE_NEWNS)
    else:
        uid, gid = os.getuid(), os.getgid()
        native.unshare(native.CLONE_NEWUSER | native.CLONE_NEWNS)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    native.mount(None, "/", None, native.MS_REC | native.MS_PRIVATE)
    native.mount("tmpfs", "/tmp", "tmpfs", 0, "mode=700")
