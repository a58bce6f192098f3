"""Containers that outlive the command: ``pish run -d`` and ``pish create`` start a supervisor.

The supervisor is a small background process per container, as conmon is for podman: it runs
``runtime.supervise`` (so it holds the container's drivers and releases them when the container ends),
writes the container's stdout and stderr to ``container.log`` and records the exit status. The command
that starts it waits on a pipe until the container is running (or created), then prints its id; an
error on the way arrives on the same pipe and is printed as one line.

While the command runs, the supervisor is small (issue 13: a thousand containers must not weigh a
thousand full pish processes): once the command runs it execs ``pish_core/monitor.py`` under ``python -S
-I``, about 9 MB RSS instead of about 19, which stays the container's parent, keeps the supervisor lock
(an inherited fd), forwards signals, serves ``pish attach`` and waits. When the command ends the monitor
execs this module's ``resume``: the full pish again, in the same process, which releases what the journal
lists (the same ``release`` that ``pish gc`` uses), records the exit and goes on with the restart policy.

The supervisor also carries out the container's ``--restart`` policy: it runs ``supervise`` again after
the policy's back-off, with the root filesystem the first run kept, until the policy says no or the user
stops the container. ``pish start`` of an exited container starts a new supervisor on the same record.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from pish_core import events, log, paths, proc, state
from pish_core.attach import AttachablePty, detached_io
from pish_core.drivers import Child
from pish_core.errors import PishError, StateError
from pish_core.proc import exit_status
from pish_core.restartpolicy import Backoff, RestartPolicy, from_dict
from pish_core.runtime import Drivers, Prepared, prepare, record_exit, supervise
from pish_core.spec import ContainerSpec
from pish_core.terminal import ProcessIO

_log = log.get("supervisor")


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


class _Starter:
    """The pipe to the command that waits until the container runs (or is created): one report, then
    closed. A supervisor the monitor exec'd again (``resume``) has none: that report was made."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @property
    def waiting(self) -> bool:
        return self.fd >= 0

    def notify(self, error: PishError | None) -> None:
        if self.fd >= 0:
            with contextlib.suppress(BrokenPipeError):  # the starter was killed: the container goes on
                os.write(self.fd, b"ok" if error is None else f"{error.exit_code} {error}".encode())
            os.close(self.fd)
            self.fd = -1


def _be_supervisor(p: Prepared, report_fd: int, start: bool) -> None:
    """The supervisor's whole life. Its own log goes to supervisor.log, the container's to container.log."""
    cid = p.spec.id
    p.record.supervisor_pid, p.record.supervisor_start = os.getpid(), proc.start_time(os.getpid())
    p.record.save()  # now: `pish rm -f` signals the supervisor, never the starter
    devnull = os.open(os.devnull, os.O_RDWR)
    own_log = os.open(paths.supervisor_log(cid), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(own_log, 1)
    os.dup2(own_log, 2)
    os.close(devnull)
    os.close(own_log)
    starter = _Starter(report_fd)
    _until_done(p, starter, lambda: _run_with_policy(p, starter, start, Backoff()))


def resume() -> None:
    """The supervisor again, exec'd by its monitor (``pish_core/monitor.py``) once the container's command
    ended: record the exit, release what the journal lists (the kept root filesystem aside) and go on
    with the restart policy, as if it had waited itself. argv: id, lock fd, log level, back-off delay,
    the wait status."""
    cid, lock, level, delay, raw = sys.argv[1:6]
    lock_fd = int(lock)
    os.set_inheritable(lock_fd, False)  # ours alone again: nothing forked from here may hold the lock
    log.setup(level)
    starter = _Starter(-1)
    try:
        s = state.ContainerState.load(cid)
        spec = ContainerSpec.from_dict(s.spec).with_changes(name=s.name)
        p = Prepared(spec, Drivers.for_spec(spec), state.Journal(s, lock_fd), keep_rootfs=not s.auto_remove)
    except BaseException:  # noqa: BLE001 - its traceback to supervisor.log; the record stays for `pish gc`
        traceback.print_exc()
        os._exit(1)
    _until_done(p, starter, lambda: _run_with_policy(p, starter, True, Backoff(float(delay)), ended=int(raw)))


def _until_done(p: Prepared, starter: _Starter, run: Callable[[], int]) -> None:
    """Run the supervisor's work; whatever ends it, the record says how and the starter hears of it."""
    try:
        run()
        if p.record.auto_remove:
            state.finish(p.record)
    except PishError as exc:
        _log.error("%s", exc)
        # A created container failed at `pish start`, or an exited one failed to run again on its kept
        # root filesystem: it stays (exited, with the reason to read), to be started again or removed.
        if not starter.waiting or p.journal.kept("storage") is not None:
            p.record.status, p.record.error, p.record.exit_code = "stopped", str(exc), exc.exit_code
            p.record.save()
        starter.notify(exc)
        if p.record.status != "stopped" or p.record.resources:
            state.finish(p.record)
    except BaseException as exc:  # noqa: BLE001 - the starter must hear of it, not a dead pipe
        traceback.print_exc()
        starter.notify(PishError(f"supervisor failed: {exc}"))
        state.finish(p.record)


def _run_with_policy(p: Prepared, starter: _Starter, start: bool, backoff: Backoff, ended: int | None = None) -> int:
    """Run the container, then again as its restart policy says, after the back-off; return the last
    exit status. ``pish stop``/``kill`` (their marker file) or a SIGTERM to the supervisor end it.
    ``ended``: the wait status of a run the monitor saw end, to finish first (``resume``)."""
    policy = from_dict(p.record.restart_policy)
    container_log = os.open(paths.log_file(p.spec.id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    p.monitor = functools.partial(_hand_off, backoff=backoff)
    with _stop_requests() as stop:
        wait_for_start = not start

        def status_after(status: int) -> str:  # decided before the exit is recorded: one write, no gap
            stopped = stop.requested or paths.stop_marker(p.spec.id).exists()
            return "restarting" if policy.should_restart(status, p.record.restart_count, stopped) else "stopped"

        while True:
            if ended is None:
                status = supervise(p, detached_io(p.spec, container_log), wait_for_start=wait_for_start,
                                   notify=starter.notify, status_after=status_after)
            else:
                status, ended = _finish_run(p, ended, status_after), None
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


#: what the supervisor blocks across its exec of the monitor and back, so none is lost or kills it
_HANDED_OVER = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM}


def _hand_off(p: Prepared, child: Child, io: ProcessIO, *, backoff: Backoff) -> None:
    """Once the command runs: exec the monitor (``pish_core/monitor.py``, ``python -S -I``) in this
    process, which stays the container's parent and keeps the supervisor lock (its fd inherited), and
    which execs ``resume`` once the command ends. Everything held is in the journal already; what this
    process holds in memory only goes. Returns, and this process supervises as itself, if it cannot."""
    if len(os.listdir("/proc/self/task")) > 1:  # exec ends the other threads: a [::1] port proxy (proxy.py)
        _log.debug("a thread serves container %s: its supervisor stays", p.spec.name)
        return
    inherited = [p.journal.lock_fd]
    args = [f"pid={child.pid}", f"stop_timeout={p.spec.stop_timeout}"]
    if isinstance(io, AttachablePty):
        inherited += [io.master, io.output]
        args += [f"master={io.master}", f"log={io.output}", f"input={int(io.accept_input)}",
                 f"socket={paths.attach_socket(p.spec.id)}"]
    level = log.level()
    here = str(Path(__file__).resolve().parent.parent)  # this pish_core, wherever it was found (-m, cwd)
    code = f"import sys; {here!r} in sys.path or sys.path.insert(0, {here!r}); import pish_core.detach as d; d.resume()"
    back = [sys.executable, "-P", "-c", code, p.spec.id, str(p.journal.lock_fd), level, repr(backoff.delay)]
    argv = [sys.executable, "-S", "-I", str(Path(__file__).with_name("monitor.py")), *args, "--", *back]
    sys.stdout.flush()
    sys.stderr.flush()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDED_OVER)
    for fd in inherited:
        os.set_inheritable(fd, True)
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        for fd in inherited:
            os.set_inheritable(fd, False)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        _log.warning("cannot start the monitor of container %s (%s): its supervisor stays", p.spec.name, exc)


def _finish_run(p: Prepared, raw: int, status_after: Callable[[int], str]) -> int:
    """A run the monitor saw end: release what it held (as ``supervise``'s stack would have), record the
    exit; return its exit status."""
    from pish_core.resources import oom_killed, release_journal

    status = exit_status(raw)
    with contextlib.suppress(PishError, OSError):
        p.record.oom_killed = oom_killed(p.record)
    failed = release_journal(p.record, keep_kept=True)
    if failed:
        raise PishError(f"container {p.spec.name}: cannot release {'; '.join(failed)}")
    record_exit(p, status, p.record.oom_killed, status_after)
    return status


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
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDED_OVER)  # blocked by the monitor for ``resume``
    try:
        yield stop
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
