"""Containers that outlive the command: ``pish run -d`` and ``pish create`` start a supervisor.

The supervisor is a small background process per container, as conmon is for podman: it runs
``runtime.supervise`` (so it holds the container's drivers and releases them when the container ends),
writes the container's stdout and stderr to ``container.log`` and records the exit status. The command
that starts it waits on a pipe until the container is running (or created), then prints its id; an
error on the way arrives on the same pipe and is printed as one line.
"""
from __future__ import annotations

import contextlib
import os
import traceback

from pish_core import log, paths, proc, state
from pish_core.errors import PishError
from pish_core.runtime import Prepared, prepare, supervise
from pish_core.spec import ContainerSpec
from pish_core.terminal import open_io

_log = log.get("supervisor")


def start_detached(spec: ContainerSpec, *, start: bool = True, auto_remove: bool = False) -> str:
    """Start a supervisor for ``spec`` in the background; return once the container is running
    (``start``) or created and waiting for ``pish start``."""
    p = prepare(spec, auto_remove=auto_remove)
    if not start:
        os.mkfifo(paths.start_fifo(spec.id), 0o600)
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
        status = supervise(p, open_io(p.spec, output=container_log), wait_for_start=not start, notify=notify)
        _log.info("container %s exited with %d", p.spec.name, status)
        if p.record.auto_remove:
            state.finish(p.record)
    except PishError as exc:
        _log.error("%s", exc)
        if report_fd < 0:  # a created container failed at `pish start`: keep the reason for it to read
            p.record.status, p.record.error, p.record.exit_code = "stopped", str(exc), exc.exit_code
            p.record.save()
        notify(exc)
        if p.record.status != "stopped" or p.record.resources:
            state.finish(p.record)
    except BaseException as exc:  # noqa: BLE001 - the starter must hear of it, not a dead pipe
        traceback.print_exc()
        notify(PishError(f"supervisor failed: {exc}"))
        state.finish(p.record)
