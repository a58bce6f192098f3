"""Network drivers: how a container's network namespace gets wired (``bridge``, ``none``, ``host``).

This package's own module holds the one trick they share: stepping into a container's network
namespace just long enough to open a socket. Importing it must stay cheap (``pish drivers list`` does):
nothing here imports pyroute2.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def inside_netns(pid: int) -> Iterator[None]:
    """Run the block with this thread in the network namespace of ``pid``; always come back after.

    A socket made inside stays bound to that namespace after we leave, so the pattern is: enter, make a
    socket, leave at once, then do the work through the socket. No forked helper process is needed
    (forking one costs 15-30 ms here; this costs well under one).
    """
    from pish_core import native  # lazy, like everything else in the drivers

    # setns() moves only the calling thread, so "home" is this thread's namespace, not the process's.
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            native.setns(target, native.CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            native.setns(home, native.CLONE_NEWNET)
    finally:
        os.close(home)
