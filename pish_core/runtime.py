"""How a container is run, top to bottom: declare, start, join, wait, clean up.

Every resource is owned by a driver that acquires it when its context is entered and releases it when
the context exits, and the whole run is one ExitStack: whatever goes wrong, and wherever, the stack
unwinds in reverse order and leaves the host as it was. Before each resource is acquired the driver
writes it into the container's state record (the journal), so even a run killed with SIGKILL leaves a
list that ``pish gc`` can undo.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
from dataclasses import dataclass
from types import FrameType
from typing import Iterator

from pish_core import log, state
from pish_core.drivers import Child, Isolation, Limits, Network, RunContext, Storage, load
from pish_core.errors import Interrupted
from pish_core.spec import ContainerSpec, check_image
from pish_core.terminal import ProcessIO, open_io

_log = log.get("runtime")


@dataclass
class Drivers:
    """The four drivers a container uses, loaded by name and checked against the spec."""

    storage: Storage
    limits: Limits
    network: Network
    isolation: Isolation

    @classmethod
    def for_spec(cls, spec: ContainerSpec) -> Drivers:
        drivers = cls(
            storage=load("storage", spec.storage.name, spec.storage.options),  # type: ignore[arg-type]
            limits=load("limits", spec.limits.name, spec.limits.options),  # type: ignore[arg-type]
            network=load("network", spec.net.name, spec.net.options),  # type: ignore[arg-type]
            isolation=load("isolation", spec.isolation.name, spec.isolation.options),  # type: ignore[arg-type]
        )
        for driver in (drivers.storage, drivers.limits, drivers.network, drivers.isolation):
            driver.validate(spec)
        return drivers


def exit_status(raw: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + N when killed by signal N."""
    if os.WIFSIGNALED(raw):
        return 128 + os.WTERMSIG(raw)
    return os.WEXITSTATUS(raw)


def run(spec: ContainerSpec) -> int:
    """Run one container in the foreground and return its exit status."""
    check_image(spec.image)
    drivers = Drivers.for_spec(spec)  # 1. validate everything before creating anything
    record = state.ContainerState(id=spec.id, name=spec.name, image=spec.image,
                                  command=list(spec.process.args), supervisor_pid=os.getpid())
    with _signals_handled() as signals:
        journal = state.create(record)
        ctx = RunContext(spec, journal)
        try:
            with contextlib.ExitStack() as stack:
                try:
                    rootfs = stack.enter_context(drivers.storage.mount(ctx))  # 2. the root filesystem
                    io: ProcessIO = stack.enter_context(open_io(spec))
                    child = stack.enter_context(  # 3. the process, in new namespaces, blocked
                        drivers.isolation.spawn(ctx, rootfs, netns=not drivers.network.shares_host_netns,
                                                stdio=io.child_fds, tty=io.tty))
                    group = stack.enter_context(drivers.limits.apply(ctx, child.pid))  # 4. join its cgroup
                    attachment = stack.enter_context(drivers.network.attach(ctx, child.pid))  # ...and network
                    child.release()  # 5. let it exec the command
                    signals.forward_to(child, io, spec.stop_timeout)
                    io.started()
                    record.status, record.pid, record.address = "running", child.pid, attachment.address
                    record.save()
                    io.pump()
                    status = exit_status(child.wait())  # 6. wait
                    signals.done()
                    if group.oom_killed():
                        print(f"pish: container {spec.name} was killed by the OOM killer "
                              f"(memory limit {_mib(spec.resources.memory)})", file=sys.stderr)
                    _log.debug("container %s exited with %d", spec.name, status)
                except BaseException:
                    signals.done()  # from here on a signal must not cut the clean-up short
                    raise
            return status  # the stack has released everything, in reverse order
        finally:
            state.remove(spec.id)


def _mib(value: int | None) -> str:
    return "none" if value is None else f"{value / (1 << 20):g} MiB"


class _Signals:
    """SIGINT/SIGTERM/SIGHUP: abort the set-up (it unwinds), then forward them to the container.

    A container's PID 1 ignores signals it has no handler for, so a forwarded SIGTERM may do nothing:
    as ``docker stop`` does, pish sends SIGKILL after the stop timeout, or at once on a second signal.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.child: Child | None = None
        self.io: ProcessIO | None = None
        self.timeout = 10.0
        self.forwarded = False
        self.unwinding = False

    def forward_to(self, child: Child, io: ProcessIO, timeout: float) -> None:
        self.child, self.io, self.timeout = child, io, timeout

    def done(self) -> None:
        self.child = None
        self.unwinding = True
        signal.alarm(0)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.child is not None:
            if self.forwarded:
                self.child.kill(signal.SIGKILL)
            else:
                self.forwarded = True
                self.child.kill(signum)
                signal.alarm(max(1, math.ceil(self.timeout)))
        elif not self.unwinding:  # still setting up: stop, and let the ExitStack undo what is done
            self.unwinding = True
            raise Interrupted(signum)

    def on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.child is not None:
            self.child.kill(signal.SIGKILL)

    def on_winch(self, signum: int, frame: FrameType | None) -> None:
        if self.io is not None:
            self.io.resize()


@contextlib.contextmanager
def _signals_handled() -> Iterator[_Signals]:
    sigs = _Signals()
    handlers = {s: sigs.on_signal for s in _Signals.HANDLED}
    handlers.update({signal.SIGALRM: sigs.on_alarm, signal.SIGWINCH: sigs.on_winch})
    saved = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        yield sigs
    finally:
        sigs.done()
        for s, h in saved.items():
            signal.signal(s, h)
