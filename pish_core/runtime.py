"""How a container is run, top to bottom: declare, start, join, wait, clean up.

Every resource is owned by a driver that acquires it when its context is entered and releases it when
the context exits, and the whole run is one ExitStack (``supervise``): whatever goes wrong, and wherever,
the stack unwinds in reverse order and leaves the host as it was. Before each resource is acquired the
driver writes it into the container's state record (the journal), so even a supervisor killed with
SIGKILL leaves a list that ``pish gc`` can undo.

The process running ``supervise`` is the container's supervisor: ``pish run`` itself in the foreground,
or a background process for ``pish run -d`` and ``pish create`` (see ``pish_core/detach.py``).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pish_core import events, log, paths, proc, state, userns
from pish_core.drivers import Child, Isolation, Limits, Network, RunContext, Storage, load
from pish_core.errors import Interrupted, PishError
from pish_core.flags import check_image
from pish_core.proc import exit_status
from pish_core.spec import ContainerSpec
from pish_core.terminal import ProcessIO, open_io

_log = log.get("runtime")

#: Called once the container has reached the state its starter waits for (None), or with the error.
Notify = Callable[[PishError | None], None]


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


@dataclass
class Prepared:
    """A container that is validated and recorded, with nothing acquired yet."""

    spec: ContainerSpec
    drivers: Drivers
    journal: state.Journal
    #: keep the root filesystem when the command exits (a detached container without --rm, as docker
    #: keeps its writable layer), so `pish start` runs it again on the same files; `pish rm` releases it
    keep_rootfs: bool = False
    #: a detached container's hand-off (``detach.py``): called once the command runs, it execs a small
    #: monitor that waits for it instead of this process; returns only if it cannot
    monitor: Callable[[Prepared, Child, ProcessIO], None] | None = None

    @property
    def record(self) -> state.ContainerState:
        return self.journal.state


def prepare(spec: ContainerSpec, *, auto_remove: bool = False,
            restart_policy: dict[str, object] | None = None) -> Prepared:
    """1. Validate everything, then write the state record (status ``creating``). Nothing else exists yet."""
    check_image(spec.image)
    userns.check_rootless(spec)  # what needs root, refused in one line when pish runs without it
    drivers = Drivers.for_spec(spec)
    record = state.ContainerState(id=spec.id, name=spec.name, image=spec.image, command=list(spec.process.args),
                                  supervisor_pid=os.getpid(), supervisor_start=proc.start_time(os.getpid()),
                                  spec=spec.to_dict(), auto_remove=auto_remove,
                                  restart_policy=dict(restart_policy or {}))
    p = Prepared(spec, drivers, state.create(record))
    events.emit("create", spec.id, spec.name, image=spec.image)
    return p


def supervise(p: Prepared, io_cm: ContextManager[ProcessIO], *, wait_for_start: bool = False,
              notify: Notify = lambda error: None,
              status_after: Callable[[int], str] = lambda code: "stopped") -> int:
    """Acquire everything, run the command, wait for it, release everything; return its exit status.
    ``status_after(code)`` names the record's status from then on: ``restarting`` when a restart policy
    runs it again, so ``ps`` never shows an exit in between."""
    with _signals_handled() as signals:
        with contextlib.ExitStack() as stack:
            try:
                status, oom = _start_and_wait(p, stack, signals, io_cm, wait_for_start, notify)
            except BaseException:
                signals.done()  # from here on a signal must not cut the clean-up short
                raise
        # The stack has released everything, in reverse order. Signals are still ours (ignored) until
        # the record says so: a SIGTERM now must not lose the exit status.
        record_exit(p, status, oom, status_after)
    return status


def record_exit(p: Prepared, status: int, oom: bool, status_after: Callable[[int], str]) -> None:
    """Once everything is released: the record shows the exit, the events and the user hear of it."""
    record = p.record
    _stage("released")
    record.status, record.exit_code, record.finished = status_after(status), status, time.time()
    record.save()
    if oom:
        events.emit("oom", record.id, record.current_name(), image=record.image)
    events.emit("die", record.id, record.current_name(), image=record.image, exitCode=status)
    if oom:
        print(f"pish: container {p.spec.name} was killed by the OOM killer "
              f"(memory limit {_mib(p.spec.resources.memory)})", file=sys.stderr)


def _start_and_wait(p: Prepared, stack: contextlib.ExitStack, signals: _Signals,
                    io_cm: ContextManager[ProcessIO], wait_for_start: bool, notify: Notify) -> tuple[int, bool]:
    """Steps 2-6 of the run, each resource entered on ``stack``; return (exit status, OOM-killed)."""
    spec, record, ctx = p.spec, p.record, RunContext(p.spec, p.journal, ephemeral=not p.keep_rootfs)
    if paths.rootless():  # pish becomes root of a user namespace of its own (pish_core/userns.py)
        userns.enter_rootless(spec)
    was_kept = p.journal.kept("storage") is not None
    rootfs = _kept_rootfs(p)
    if rootfs is None:  # 2. the root filesystem
        rootfs = stack.enter_context(p.drivers.storage.mount(ctx))
        # Where `pish cp` finds it while no process runs. A kept layer mounted again stays kept: a failing
        # start must not release (delete) its files.
        p.journal.note("storage", rootfs=str(rootfs), **({"kept": True} if was_kept else {}))
    _stage("storage")
    io = stack.enter_context(io_cm)
    child = stack.enter_context(  # 3. the process, in new namespaces, blocked
        p.drivers.isolation.spawn(ctx, rootfs, netns=not p.drivers.network.shares_host_netns,
                                  stdio=io.child_fds, console=io.console))
    _stage("isolation")
    group = stack.enter_context(p.drivers.limits.apply(ctx, child.pid))  # 4. its cgroup...
    _stage("limits")
    attachment = stack.enter_context(p.drivers.network.attach(ctx, child.pid))  # ...and network
    _stage("network")
    record.status, record.pid, record.address = "created", child.pid, attachment.address
    record.pid_start = proc.start_time(child.pid)
    if wait_for_start:  # `pish create`: created, seen as such, until `pish start`
        record.save()
        notify(None)
        _wait_for_start(spec.id)
    child.release([*group.mounts, *attachment.mounts], cgroup_files=group.join_files)  # 5. let it exec
    signals.forward_to(child, io, spec.stop_timeout)
    io.started()
    with p.journal.transition():  # one write: running, its pid, a root filesystem kept for a next start
        record.status, record.started = "running", time.time()
        if p.keep_rootfs:
            p.journal.keep("storage")
    events.emit("start", record.id, record.current_name(), image=record.image)
    _stage("running")
    if not wait_for_start:
        notify(None)
    if p.monitor is not None:  # detached: a small process waits from here (pish_core/monitor.py)
        p.monitor(p, child, io)
    io.pump()
    status = exit_status(child.wait())  # 6. wait
    signals.done()
    record.oom_killed = group.oom_killed()
    return status, record.oom_killed


def _kept_rootfs(p: Prepared) -> Path | None:
    """The root filesystem an earlier run of this container kept (``Prepared.keep_rootfs``), if any."""
    kept = p.journal.kept("storage")
    if kept is None or not kept.get("rootfs"):
        return None
    rootfs = Path(kept["rootfs"])
    if not rootfs.is_dir():
        raise PishError(f"container {p.spec.name}: its root filesystem {rootfs} is gone; remove it with pish rm")
    if p.drivers.storage.unmounted(rootfs):
        # Rootless: the first run mounted it in its supervisor's mount namespace, gone with it. Its layer
        # (every file the container wrote) is still there: mount it again, under a new record.
        p.journal.drop(kept)
        return None
    _log.debug("reusing the root filesystem %s", rootfs)
    return rootfs


def run(spec: ContainerSpec) -> int:
    """Run one container in the foreground (this process supervises it); leave nothing behind."""
    p = prepare(spec, auto_remove=True)
    try:
        return supervise(p, open_io(spec))
    finally:
        state.finish(p.record)
        p.journal.close()


def _wait_for_start(cid: str) -> None:
    fd = os.open(paths.start_fifo(cid), os.O_RDONLY | os.O_CLOEXEC)  # blocks until `pish start` opens it
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)


def _stage(name: str) -> None:
    """Test hook for fault injection: PISH_TEST_STAGES names a file each stage reached is appended to,
    PISH_TEST_STAGE_DELAY seconds to sleep after each, so a test can kill the supervisor mid-way."""
    stages = os.environ.get("PISH_TEST_STAGES")
    if stages:
        with open(stages, "a") as f:
            f.write(f"{name}\n")
        time.sleep(float(os.environ.get("PISH_TEST_STAGE_DELAY", "0")))


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
