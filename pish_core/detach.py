"""Containers that outlive the command: ``pish run -d`` and ``pish create`` start a supervisor.

The supervisor is a small background process per container, as conmon is for podman: it runs
``runtime.supervise`` (so it holds the container's drivers and releases them when the container ends),
writes the container's stdout and stderr to ``container.log`` and records the exit status. The command
that starts it waits on a pipe until the container is running (or created), then prints its id; an
error on the way arrives on the same pipe and is printed as one line.

The supervisor also carries out the container's ``--restart`` policy: it runs ``supervise`` again after
the policy's back-off, with the root filesystem the first run kept, until the policy says no or the user
stops the container. ``pish start`` of an exited container starts a new supervisor on the same record.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from types import FrameType

from pish_core import events, log, paths, proc, state
from pish_core.attach import detached_io
from pish_core.errors import PishError, StateError
from pish_core.restartpolicy import Backoff, RestartPolicy, from_dict
from pish_core.runtime import Drivers, Prepared, prepare, supervise
from pish_core.spec import ContainerSpec

_log = log.get("supervisor")
Notify = Callable[[PishError | None], None]


def start_detached(spec: ContainerSpec, *, start: bool = True, auto_remove: bool = False,
                   restart: RestartPolicy | None = None) -> str:
    """Start a supervisor for ``spec`` in the background; return once the container is running
    (``start``) or created and waiting for ``pish start``."""
    policy = restart or RestartPolicy()
    p = prepare(spec, auto_remove=auto_remove, restart_policy=policy.to_dict())
    p.keep_rootfs = not auto_remove
    if not start:
        os.mkfifo(paths.start_fifo(spec.id), 0o600)
    return _launch(p, start)


def start_again(cid: str) -> None:
    """``pish start`` of an exited container: a new supervisor on the same record, spec and root
    filesystem (kept by the first run); return once it runs. Its restart count starts again at 0."""
    fd = state.try_lock(cid)
    if fd is None:
        raise StateError(f"container {cid[:12]} is busy: another pish is starting, stopping or removing it")
    try:
        s = state.ContainerState.load(cid)  # again, under the lock
        if s.status != "stopped":
            raise StateError(f"container {s.name} is {s.status}: it cannot be started again")
        if s.auto_remove:
            raise StateError(f"container {s.name} was run with --rm: it cannot be started again")
        if any(not r.get("kept") for r in s.resources):
            raise StateError(f"container {s.name} was not cleaned up after its last run: run pish gc first")
        spec = ContainerSpec.from_dict(s.spec).with_changes(name=s.name)  # renamed meanwhile
        p = Prepared(spec, Drivers.for_spec(spec), state.Journal(s, fd), keep_rootfs=True)
    except BaseException:
        os.close(fd)
        raise
    paths.stop_marker(cid).unlink(missing_ok=True)
    s.status, s.exit_code, s.error, s.oom_killed, s.restart_count = "creating", None, None, False, 0
    s.pid = s.pid_start = None
    s.started = s.finished = None
    s.supervisor_pid, s.supervisor_start = os.getpid(), proc.start_time(os.getpid())
    s.save()
    _launch(p, True)


def _launch(p: Prepared, start: bool) -> str:
    """Fork the supervisor of ``p``; return once it reports the container running (or created)."""
    spec = p.spec
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            os.setsid()  # its own session: no signal from our terminal reaches it
            if os.fork() == 0:
                _be_supervisor(p, report_w, start)
        finally:
            os._exit(0)
    os.close(report_w)
    p.journal.close()  # the supervisor's copy of the lock keeps it held
    os.waitpid(pid, 0)
    # One read, not until EOF: the container's first process, forked by the supervisor, holds a copy of
    # the write end until it execs, which for `pish create` is only at `pish start`. The report is one
    # short write, so it arrives whole; an empty read means the supervisor died first.
    report = os.read(report_r, 65536).decode(errors="replace")
    os.close(report_r)
    if report != "ok":
        code, _, message = report.partition(" ")
        error = PishError(message or "the supervisor died while setting up the container")
        error.exit_code = int(code) if code.isdigit() else 125
        raise error
    return spec.id


def _be_supervisor(p: Prepared, report_fd: int, start: bool) -> None:
    """The supervisor's whole life. Its own log goes to supervisor.log, the container's to container.log."""
    cid = p.spec.id
    p.record.supervisor_pid, p.record.supervisor_start = os.getpid(), proc.start_time(os.getpid())
    p.record.save()  # now: `pish rm -f` signals the supervisor, never the starter
    devnull = os.open(os.devnull, os.O_RDWR)
    own_log = os.open(paths.supervisor_log(cid), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    container_log = os.open(paths.log_file(cid), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(devnull, 0)
    os.dup2(own_log, 1)
    os.dup2(own_log, 2)
    os.close(devnull)
    os.close(own_log)

    def notify(error: PishError | None) -> None:
        nonlocal report_fd
        if report_fd >= 0:
            with contextlib.suppress(BrokenPipeError):  # the starter was killed: the container goes on
                os.write(report_fd, b"ok" if error is None else f"{error.exit_code} {error}".encode())
            os.close(report_fd)
            report_fd = -1

    try:
        _run_with_policy(p, container_log, start, notify)
        if p.record.auto_remove:
            state.finish(p.record)
    except PishError as exc:
        _log.error("%s", exc)
        # A created container failed at `pish start`, or an exited one failed to run again on its kept
        # root filesystem: it stays (exited, with the reason to read), to be started again or removed.
        if report_fd < 0 or p.journal.kept("storage") is not None:
            p.record.status, p.record.error, p.record.exit_code = "stopped", str(exc), exc.exit_code
            p.record.save()
        notify(exc)
        if p.record.status != "stopped" or p.record.resources:
            state.finish(p.record)
    except BaseException as exc:  # noqa: BLE001 - the starter must hear of it, not a dead pipe
        traceback.print_exc()
        notify(PishError(f"supervisor failed: {exc}"))
        state.finish(p.record)


def _run_with_policy(p: Prepared, container_log: int, start: bool, notify: Notify) -> int:
    """Run the container, then again as its restart policy says, after the back-off; return the last
    exit status. ``pish stop``/``kill`` (their marker file) or a SIGTERM to the supervisor end it."""
    policy = from_dict(p.record.restart_policy)
    backoff = Backoff()
    with _stop_requests() as stop:
        wait_for_start = not start

        def status_after(status: int) -> str:  # decided before the exit is recorded: one write, no gap
            stopped = stop.requested or paths.stop_marker(p.spec.id).exists()
            return "restarting" if policy.should_restart(status, p.record.restart_count, stopped) else "stopped"

        while True:
            status = supervise(p, detached_io(p.spec, container_log), wait_for_start=wait_for_start,
                               notify=notify, status_after=status_after)
            wait_for_start = False
            _log.info("container %s exited with %d", p.spec.name, status)
            if p.record.status != "restarting":
                return status
            ran = (p.record.finished or 0) - (p.record.started or 0)
            delay = backoff.next(ran)
            _log.info("restarting container %s in %g s (policy %s)", p.spec.name, delay, policy)
            if stop.wait(delay, p.spec.id):
                p.record.status = "stopped"
                p.record.save()
                return status
            p.record.restart_count += 1
            events.emit("restart", p.spec.id, p.record.current_name(), image=p.record.image,
                        restartCount=p.record.restart_count)


class _StopRequest:
    """A SIGTERM to the supervisor between two runs, or ``pish stop``'s marker file: no more restarts."""

    def __init__(self) -> None:
        self.requested = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def wait(self, delay: float, cid: str) -> bool:
        """Sleep ``delay`` seconds unless a stop comes first; True if one did."""
        deadline = time.monotonic() + delay
        while not (self.requested or paths.stop_marker(cid).exists()):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.02))
        return True


@contextlib.contextmanager
def _stop_requests() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    saved = {s: signal.signal(s, stop.on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield stop
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
