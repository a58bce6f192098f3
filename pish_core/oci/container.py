"""The OCI lifecycle, as runc's command line drives it: create, start, state, kill, delete, exec, ps,
pause, resume. The same core as ``pish run`` (spec, drivers, init, journal); what differs is who stays.

- ``create`` does everything up to the user's program, then leaves: the container's first process waits
  on an exec fifo (``paths.start_fifo``) before exec, and is left to the caller (conmon, the containerd
  shim: subreapers, so it becomes their child). Its resources stay recorded in its journal.
- ``start`` opens the fifo; the init goes on to exec. ``delete`` releases what the journal lists.
- No pish process stays between commands: each command reads the state record and the kernel.

The state record lives in ``--root``/containers/<pish id>/ (the id derived from the engine's id, see
``specconv.internal_id``), as ``pish run``'s do under /run/pish.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

from pish_core import hooks, log, paths, proc, state
from pish_core.drivers import Isolation, Limits, RunContext, load
from pish_core.errors import PishError, StateError
from pish_core.oci import specconv
from pish_core.resources import entered
from pish_core.spec import ContainerSpec, Process, Security

_log = log.get("oci")


class OciError(PishError):
    """An error as runc words it; the CLI prints it and exits 1."""

    exit_code = 1


def _record(oci_id: str) -> state.ContainerState:
    try:
        return state.ContainerState.load(specconv.internal_id(oci_id))
    except StateError:
        raise OciError(f"container {oci_id} does not exist") from None


def _spec(record: state.ContainerState) -> ContainerSpec:
    return ContainerSpec.from_dict(record.spec)


def status(record: state.ContainerState) -> str:
    """created / running / paused / stopped, from the kernel, as runc reports it."""
    if record.status == "creating":
        return "creating"
    if not record.pid or not proc.is_same(record.pid, record.pid_start) or _zombie(record.pid):
        return "stopped"
    if paths.start_fifo(record.id).exists():
        return "created"
    with contextlib.suppress(PishError):
        if _group(record).frozen():
            return "paused"
    return "running"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _limits_record(record: state.ContainerState) -> dict[str, Any] | None:
    return next((r for r in record.resources if r.get("kind") == "limits"), None)


def _group(record: state.ContainerState) -> Any:
    from pish_core.resources import group_of

    return group_of(record)


def _options(spec: ContainerSpec, kind: str, driver: str) -> dict[str, str]:
    """The options the spec gives ``driver`` of ``kind``: none when a record names another driver than the
    spec's (a driver that delegates, as the example ``audit`` one does, journals its inner driver's)."""
    choice = spec.limits if kind == "limits" else spec.isolation
    return dict(choice.options) if choice.name == driver else {}


def state_json(oci_id: str) -> dict[str, Any]:
    record = _record(oci_id)
    spec = _spec(record)
    now = status(record)
    out = hooks.state_of(oci_id, now, record.pid, spec.bundle, dict(spec.annotations))
    out["rootfs"] = spec.image
    out["created"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z"
    out["owner"] = ""
    return out


def create(oci_id: str, bundle: Path, *, pid_file: Path | None = None, console_socket: str | None = None,
           preserve_fds: int = 0, systemd_cgroup: bool = False, no_pivot: bool = False) -> None:
    """runc create: set the container up, leave its first process waiting before exec, and return."""
    from pish_core import names

    names.check_name(oci_id, "container id")
    if paths.container_dir(specconv.internal_id(oci_id)).exists():
        raise OciError(f"container with id exists: {oci_id}")
    bundle = bundle.resolve()
    spec = specconv.convert(specconv.load(bundle), bundle, oci_id, systemd_cgroup=systemd_cgroup,
                            rootless=paths.rootless(), warn=lambda message: _log.warning("%s", message))
    listen = int(os.environ.get("LISTEN_FDS", "0") or 0)
    spec = spec.with_changes(process=_with(spec.process, preserve_fds=preserve_fds + listen), no_pivot=no_pivot)
    limits: Any = load("limits", spec.limits.name, spec.limits.options)
    isolation: Any = load("isolation", spec.isolation.name, spec.isolation.options)
    for driver in (limits, isolation):
        driver.validate(spec)
    record = state.ContainerState(id=spec.id, name=oci_id, image=spec.image, command=list(spec.process.args),
                                  spec=spec.to_dict())
    journal = state.create(record)
    try:
        _create(spec, journal, limits, isolation, pid_file, console_socket)
    except BaseException:
        state.finish(record)  # nothing acquired is left (the stack unwound): the record goes too
        raise
    finally:
        journal.close()


def _create(spec: ContainerSpec, journal: state.Journal, limits: Limits, isolation: Isolation,
            pid_file: Path | None, console_socket: str | None) -> None:
    record, ctx = journal.state, RunContext(spec, journal)
    fifo = paths.start_fifo(spec.id)
    os.mkfifo(fifo, 0o622)  # as runc's exec.fifo: the container's root (mapped, in a user namespace) writes
    os.chmod(fifo, 0o622)
    with contextlib.ExitStack() as stack:
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)  # before the fork: the child inherits it
        stack.callback(os.close, fifo_fd)
        console = stack.enter_context(_console(console_socket)) if spec.process.terminal else None
        if spec.process.terminal and console is None:
            raise OciError("cannot allocate tty if runc will detach without setting console socket")
        child = stack.enter_context(isolation.spawn(ctx, Path(spec.image), netns=True, console=console))
        group = stack.enter_context(limits.apply(ctx, child.pid))
        record.pid, record.pid_start = child.pid, proc.start_time(child.pid)
        for kind in ("createRuntime", "prestart", "createContainer"):
            _run_hooks(spec, kind, "created", child.pid)
        child.release(exec_fifo=fifo_fd, cgroup_files=group.join_files)
        if pid_file is not None:
            _write_atomic(pid_file, str(child.pid))
        record.status = "created"
        record.save()
        journal.detached = True  # from here the container is its engine's: leaving keeps everything
        child.leave()
    _log.debug("created container %s, pid %d", spec.name, record.pid)


@contextlib.contextmanager
def _console(path: str | None) -> Any:
    """The child's end of runc's --console-socket: a connection to the engine's unix socket."""
    if path is None:
        yield None
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise OciError(f"cannot connect to console socket {path}: {(exc.strerror or '').lower()}") from None
    try:
        yield sock.fileno()
    finally:
        sock.close()


def start(oci_id: str) -> None:
    """runc start: let a created container's first process go on to exec the user's program."""
    record = _record(oci_id)
    now = status(record)
    if now != "created":
        raise OciError(f"cannot start a container that has {'stopped' if now == 'stopped' else 'already started'}"
                       if now in ("stopped", "running", "paused") else f"cannot start container {oci_id}: {now}")
    fifo = paths.start_fifo(record.id)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll(100):  # the init opens its end and writes one byte, then execs
            if not proc.is_same(record.pid, record.pid_start) or _zombie(record.pid or 0):
                raise OciError(f"container {oci_id} died before it started")
        os.read(fd, 1)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fifo)
    record.status, record.started = "running", time.time()
    record.save()
    spec = _spec(record)
    for hook_kind, hook in spec.hooks:
        if hook_kind == "poststart":
            try:
                hooks.run(hook, "poststart", hooks.state_of(oci_id, "running", record.pid, spec.bundle,
                                                             dict(spec.annotations)))
            except PishError as exc:
                _log.warning("%s", exc)


def kill(oci_id: str, sig: int, all_processes: bool = False) -> None:
    record = _record(oci_id)
    now = status(record)
    if now == "stopped" and not all_processes:
        raise OciError("container not running")
    pids = _group(record).pids() if all_processes else ([record.pid] if record.pid else [])
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def delete(oci_id: str, force: bool = False) -> None:
    """runc delete: release what the journal lists and forget the container; --force kills it first."""
    try:
        record = _record(oci_id)
    except OciError:
        if force:
            return
        raise
    now = status(record)
    if now not in ("stopped", "creating") and not force:
        raise OciError(f"cannot delete container {oci_id} that is not stopped: {now}")
    if now != "stopped" and record.pid:
        if now == "paused":
            with contextlib.suppress(PishError):
                _group(record).freeze(False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
    spec = _spec(record)
    failed = _release_all(record, spec)
    for hook_kind, hook in spec.hooks:
        if hook_kind == "poststop":
            try:
                hooks.run(hook, "poststop", hooks.state_of(oci_id, "stopped", None, spec.bundle,
                                                            dict(spec.annotations)))
            except PishError as exc:
                _log.warning("%s", exc)
    if failed:
        raise failed
    state.remove(record.id)


def _release_all(record: state.ContainerState, spec: ContainerSpec) -> PishError | None:
    """Release every resource of the journal, newest first; the first failure is returned (the record
    then keeps what is left, for another delete)."""
    failure: PishError | None = None
    for res in reversed(list(record.resources)):
        try:
            driver: Any = load(res["kind"], res["driver"], _options(spec, res["kind"], res["driver"]))
            driver.release(res)
        except PishError as exc:
            failure = failure or exc
            continue
        record.resources.remove(res)
        record.save()
    return failure


def exec_process(oci_id: str, process: Process, *, detach: bool, pid_file: Path | None,
                 console_socket: str | None, preserve_fds: int = 0, security: Security | None = None) -> int:
    """runc exec: a process joins the container. Detached, we leave once it runs (its pid in
    ``pid_file``); else we wait for it and return its exit status."""
    record = _record(oci_id)
    if status(record) not in ("running", "created", "paused") or record.pid is None:
        raise OciError("cannot exec in a stopped container")
    spec = _spec(record)
    isolation: Any = load("isolation", spec.isolation.name, spec.isolation.options)
    limits_record = _limits_record(record)
    env = dict(item.partition("=")[::2] for item in process.env)
    process = _with(process, preserve_fds=preserve_fds)
    with contextlib.ExitStack() as stack:
        console = stack.enter_context(_console(console_socket)) if process.terminal else None
        if process.terminal and console is None:
            raise OciError("cannot allocate tty if runc will detach without setting console socket")
        limits: Any = None
        if limits_record is not None:
            limits = load("limits", limits_record["driver"], _options(spec, "limits", limits_record["driver"]))
        child = stack.enter_context(entered(isolation, limits, limits_record, record.pid, process, env,
                                            security or spec.security, console=console))
        if detach:
            child.leave()  # before release: it must not die with us
        child.release()
        if pid_file is not None:
            _write_atomic(pid_file, str(child.pid))
        if detach:
            return 0
        from pish_core.proc import exit_status

        return exit_status(child.wait())


def _run_hooks(spec: ContainerSpec, kind: str, now: str, pid: int) -> None:
    for hook_kind, hook in spec.hooks:
        if hook_kind == kind:
            hooks.run(hook, kind, hooks.state_of(spec.name, now, pid, spec.bundle, dict(spec.annotations)))


def _with(process: Process, **changes: Any) -> Process:
    from dataclasses import replace

    return replace(process, **changes)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def container_spec(oci_id: str) -> ContainerSpec:
    return _spec(_record(oci_id))


def wait(oci_id: str) -> int:
    """Wait for the container's first process (our child: ``run`` created it) and return its status."""
    from pish_core.proc import exit_status

    record = _record(oci_id)
    assert record.pid
    try:
        _, raw = os.waitpid(record.pid, 0)
    except ChildProcessError:  # not ours: wait until it is gone
        while not _zombie(record.pid):
            time.sleep(0.05)
        return 0
    return exit_status(raw)


def list_all() -> list[dict[str, Any]]:
    out = []
    for record in state.list_all():
        spec = _spec(record)
        out.append({"ociVersion": hooks.OCI_VERSION, "id": record.name, "pid": record.pid or 0,
                    "status": status(record), "bundle": spec.bundle, "rootfs": spec.image,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                    "owner": ""})
    return out


def pids(oci_id: str) -> list[int]:
    return list(_group(_record(oci_id)).pids())


def pause(oci_id: str, frozen: bool) -> None:
    record = _record(oci_id)
    now = status(record)
    if frozen and now != "running":
        raise OciError(f"container not running: {now}")
    if not frozen and now != "paused":
        raise OciError(f"container not paused: {now}")
    _group(record).freeze(frozen)


def stats(oci_id: str) -> dict[str, Any]:
    group = _group(_record(oci_id))
    figures = group.stats()
    return {"type": "stats", "id": oci_id, "data": {
        "cpu": {"usage": {"total": figures.get("cpu_ns", 0)}},
        "memory": {"usage": {"usage": figures.get("memory_bytes", 0)}},
        "pids": {"current": figures.get("pids", 0)},
    }}


