"""What you do to a container that outlives its command: start, exec, stop, kill, rm, gc.

Each operation finds the container by name, id or unique id prefix (``state.resolve``) and talks to it
through the host: signals to its process, the start FIFO, the supervisor lock. ``gc`` undoes the journal
of any container whose supervisor is gone, so a supervisor killed at any moment leaves nothing for good.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from pish_core import events, log, paths, proc, state, userns
from pish_core.drivers import Child, Isolation, Limits, load
from pish_core.errors import DriverError, PishError, StateError
from pish_core.resources import entered, group_of, release_journal
from pish_core.rootpath import resolve_in_root
from pish_core.spec import ContainerSpec, Process, Resources, container_env

_log = log.get("lifecycle")


def status_text(s: state.ContainerState, alive: bool | None = None) -> str:
    """``created``, ``running``, ``paused``, ``exited (N)`` as ``pish ps`` shows them; ``dead`` when the
    supervisor vanished without finishing (``pish gc`` cleans those)."""
    if s.status == "stopped":
        return f"exited ({s.exit_code})"
    if alive is None:
        alive = state.supervisor_alive(s.id)
    if not alive:
        return "dead"
    if s.status == "restarting":  # its policy starts it again after a back-off; N: how it last exited
        return f"restarting ({s.exit_code})"
    return "paused" if s.status == "running" and paused(s) else s.status


def paused(s: state.ContainerState) -> bool:
    """True when the container's cgroup is frozen (``pish pause``); asks the kernel, not the record."""
    if not any(r.get("kind") == "limits" for r in s.resources):
        return False
    with contextlib.suppress(PishError, OSError):
        return group_of(s).frozen()
    return False


def _running(ref: str) -> state.ContainerState:
    s = state.resolve(ref)
    if not s.command_running():
        raise StateError(f"container {s.name} is not running")
    return s


def pause(ref: str, frozen: bool = True) -> state.ContainerState:
    """Freeze every process of a running container where it is (``frozen``), or thaw a paused one."""
    s = _running(ref)
    if paused(s) == frozen:
        raise StateError(f"container {s.name} is already paused" if frozen else f"container {s.name} is not paused")
    group_of(s).freeze(frozen)
    _log.info("%s container %s", "paused" if frozen else "unpaused", s.name)
    events.emit("pause" if frozen else "unpause", s.id, s.name, image=s.image)
    return s


def wait(ref: str) -> int:
    """Block until the container's command has ended and its supervisor released it; its exit code. A
    ``--rm`` container's record is gone by then: its exit code is in its ``die`` event."""
    s = state.resolve(ref)
    while s.status != "stopped" or state.supervisor_alive(s.id):
        if not state.supervisor_alive(s.id) and s.status != "stopped":
            if not paths.container_dir(s.id).exists():
                break
            raise StateError(f"container {s.name} is dead: its supervisor is gone (pish gc cleans it up)")
        time.sleep(0.05)
        try:
            s = state.ContainerState.load(s.id)
        except StateError:
            break
    else:
        return s.exit_code if s.exit_code is not None else 255
    code = events.last_exit_code(s.id)
    if code is None:
        raise StateError(f"container {s.name} was removed before its exit code could be read")
    return code


def processes(ref: str) -> list[int]:
    """Host pids of a running container's processes: its cgroup's, else its PID namespace's."""
    s = _running(ref)
    assert s.pid is not None
    try:
        return group_of(s).pids()
    except PishError:
        return proc.pids_in_pidns_of(s.pid)


def update(ref: str, resources: Resources) -> state.ContainerState:
    """Change a running container's limits in place (``pish update``): the fields of ``resources`` that
    are set, written into its cgroup's files."""
    from pish_core.live_limits import set_group_limits

    s = _running(ref)
    set_group_limits(group_of(s), resources, s.name)
    return s


def usage(refs: list[str], interval: float = 0.5) -> list[dict[str, object]]:
    """``pish stats``: CPU % (over ``interval`` seconds), memory use and limit, pids of running containers
    (all of them when ``refs`` is empty), from their cgroups. A limit the cgroup does not set (or one
    above the host's memory) is the host's memory, as docker shows it."""
    states = [_running(ref) for ref in refs] if refs else [s for s in state.list_all() if s.command_running()]
    groups = [(s, group_of(s)) for s in states]
    before = [(g.stats().get("cpu_ns", 0), time.monotonic_ns()) for _, g in groups]
    time.sleep(interval if groups else 0)
    host_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rows: list[dict[str, object]] = []
    for (s, g), (cpu0, t0) in zip(groups, before):
        figures = g.stats()
        cpu = 100 * (figures.get("cpu_ns", 0) - cpu0) / max(time.monotonic_ns() - t0, 1)
        limit = min(figures.get("memory_limit", host_memory), host_memory)
        rows.append({"id": s.id, "name": s.name, "cpu_percent": round(cpu, 2),
                     "memory_bytes": figures.get("memory_bytes", 0), "memory_limit": limit,
                     "pids": figures.get("pids", 0)})
    return rows


def _thaw(s: state.ContainerState) -> None:
    """Let a paused container go on, so that a signal just sent to it is delivered (``stop``, ``rm -f``)."""
    if paused(s):
        group = group_of(s)
        try:
            group.freeze(False)
        except DriverError:
            # Its supervisor may be releasing the group this moment: its release freezes the group to kill
            # what is in it (which `paused` saw), then removes it. Gone, or thawed, there is nothing to do.
            if group.frozen():
                raise


def start(ref: str, timeout: float = 30) -> state.ContainerState:
    """Let a created container run its command (`pish create` then `pish start`), or run an exited one
    again: the same id, name, spec and files (its root filesystem was kept), a new process."""
    s = state.resolve(ref)
    if s.status == "stopped":
        from pish_core.detach import start_again

        if state.supervisor_alive(s.id):
            raise StateError(f"container {s.name} is {status_text(s, True)}: it cannot be started now")
        start_again(s.id)
        return state.ContainerState.load(s.id)
    if s.status == "running" and s.command_running():
        return s  # starting a running container is not an error, as with docker
    if s.status != "created":
        raise StateError(f"container {s.name} is {status_text(s)}: only a created or exited container can be started")
    try:
        fd = os.open(paths.start_fifo(s.id), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):  # nobody is reading: the supervisor is gone
            raise StateError(f"container {s.name} has no supervisor any more: remove it with pish rm -f") from None
        raise
    try:
        os.write(fd, b"s")
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = state.ContainerState.load(s.id)
        except StateError:
            raise StateError(f"container {s.name} failed to start") from None
        if s.status != "created":
            if s.error and s.status == "stopped":
                err = PishError(s.error)
                err.exit_code = s.exit_code or 125
                raise err
            return s
        time.sleep(0.01)
    raise StateError(f"container {s.name} did not start within {timeout:g} s")


def _stopped_by_user(s: state.ContainerState) -> None:
    """Tell the supervisor the user ended the container: its restart policy must not start it again."""
    with contextlib.suppress(FileNotFoundError):
        paths.stop_marker(s.id).touch()


def _between_runs(s: state.ContainerState) -> bool:
    """Restarting, or running by its record while its command has ended: its supervisor is releasing and
    recording that run (after its monitor exec'd the full pish again, ``detach.resume``)."""
    return s.status == "restarting" or (s.status == "running" and not s.command_running())


def _settled(s: state.ContainerState, timeout: float = 30) -> state.ContainerState:
    """A container between two runs (``_between_runs``), once its command runs again or its supervisor
    has ended (the stop marker ends the back-off); any other container as it is."""
    deadline = time.monotonic() + timeout
    while _between_runs(s) and state.supervisor_alive(s.id) and time.monotonic() < deadline:
        time.sleep(0.02)
        with contextlib.suppress(StateError):
            s = state.ContainerState.load(s.id)
    return s


def kill(ref: str, sig: int = signal.SIGKILL) -> state.ContainerState:
    s = state.resolve(ref)
    if s.status == "restarting" and state.supervisor_alive(s.id):  # between two runs: no more runs
        _stopped_by_user(s)
        events.emit("kill", s.id, s.name, image=s.image, signal=sig)
        return s
    s = _running(ref)
    assert s.pid is not None
    if paused(s):  # the signal would wait for the thaw: docker refuses it too
        raise StateError(f"container {s.name} is paused: unpause it before kill (or use stop, or rm -f)")
    _stopped_by_user(s)
    os.kill(s.pid, sig)
    events.emit("kill", s.id, s.name, image=s.image, signal=sig)
    return s


def restart(ref: str, timeout: float = 10) -> state.ContainerState:
    """``pish restart``: stop (SIGTERM, SIGKILL after ``timeout``) if it runs, then start it again."""
    s = stop(ref, timeout)
    if s.status == "created":
        raise StateError(f"container {s.name} is created: start it with pish start")
    s = start(s.id)
    events.emit("restart", s.id, s.name, image=s.image)
    return s


def stop(ref: str, timeout: float = 10) -> state.ContainerState:
    """SIGTERM, then SIGKILL after ``timeout`` seconds, as ``docker stop``; return once all is released."""
    s = state.resolve(ref)
    restarting = s.status == "restarting" or (_between_runs(s) and state.supervisor_alive(s.id))
    if s.status in ("running", "restarting"):
        _stopped_by_user(s)
        s = _settled(s)
    if not s.command_running():
        if restarting:  # between two runs: the stop marker ended the back-off, or kept it from restarting
            state.wait_supervisor_gone(s.id, 30)
            events.emit("stop", s.id, s.name, image=s.image)
            with contextlib.suppress(StateError):
                s = state.ContainerState.load(s.id)
        return s  # stopping a stopped container is not an error, as with docker
    assert s.pid is not None
    events.emit("kill", s.id, s.name, image=s.image, signal=int(signal.SIGTERM))
    with contextlib.suppress(ProcessLookupError):
        os.kill(s.pid, signal.SIGTERM)
    _thaw(s)
    if not state.wait_supervisor_gone(s.id, timeout):
        _log.info("container %s ignored SIGTERM for %g s: sending SIGKILL", s.name, timeout)
        events.emit("kill", s.id, s.name, image=s.image, signal=int(signal.SIGKILL))
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid, signal.SIGKILL)
        state.wait_supervisor_gone(s.id, 30)
    events.emit("stop", s.id, s.name, image=s.image)
    with contextlib.suppress(StateError):
        s = state.ContainerState.load(s.id)
    return s


def remove(ref: str, force: bool = False) -> state.ContainerState:
    """Remove a container; a live one only with ``force`` (killed first), as ``docker rm -f``."""
    s = state.resolve(ref)
    if state.supervisor_alive(s.id):
        if not force:
            raise StateError(f"container {s.name} is {status_text(s, True)}: stop it first or use pish rm -f")
        _stopped_by_user(s)  # no restart policy may start it again
        if s.command_running():
            assert s.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(s.pid, signal.SIGKILL)
            _thaw(s)
        elif proc.is_same(s.supervisor_pid, s.supervisor_start):  # creating or created: it unwinds on SIGTERM
            assert s.supervisor_pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(s.supervisor_pid, signal.SIGTERM)
        if not _killed_until_gone(s, 30):
            raise StateError(f"container {s.name}: its supervisor did not finish within 30 s")
    # The record goes under the supervisor lock, with the journal undone. Held by someone else now, the
    # lock means a `pish gc` or another `pish rm` is releasing this container: wait for it to finish,
    # never delete the journal it is working through.
    deadline = time.monotonic() + 30
    while not collect(s.id, remove=True) and paths.container_dir(s.id).exists():
        if time.monotonic() > deadline:
            raise StateError(f"container {s.name}: another pish did not finish cleaning it up within 30 s")
        time.sleep(0.02)
    events.emit("destroy", s.id, s.name, image=s.image)
    return s


def _killed_until_gone(s: state.ContainerState, timeout: float) -> bool:
    """Wait for the supervisor of ``s`` to finish, killing any run of the command that starts meanwhile (a
    restart policy's run already being set up when ``rm -f`` came); True once it has."""
    deadline = time.monotonic() + timeout
    while state.supervisor_alive(s.id):
        if time.monotonic() > deadline:
            return False
        with contextlib.suppress(StateError, ValueError):
            now = state.ContainerState.load(s.id)
            if now.command_running() and now.pid != s.pid:
                assert now.pid is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(now.pid, signal.SIGKILL)
        time.sleep(0.02)
    return True


def collect(cid: str, remove: bool = False) -> bool:
    """Undo what the journal of ``cid`` still lists, if its supervisor is gone; True if it did. The record
    is removed too with ``remove``, or if the container never finished. A release that fails does not
    stop the others: its entry stays in the journal, and the failures are raised at the end."""
    fd = state.try_lock(cid)
    if fd is None:
        return False
    userns.enter_for_cleanup()  # rootless: as root of the user's namespace, which owns what containers wrote
    try:
        try:
            s = state.ContainerState.load(cid)
        except (StateError, ValueError):  # not written yet: a killed `pish run`, or one being created now
            os.close(fd)
            fd = -1
            return state.remove_unloadable(cid)
        failed = release_journal(s)
        if failed:
            s.error = f"clean-up incomplete: {'; '.join(failed)}"
            s.save()
            raise PishError(f"container {s.name}: cannot release {'; '.join(failed)}; "
                            f"its record is kept: fix that and run `pish gc` again")
        if remove or s.status != "stopped" or s.auto_remove:
            state.remove(cid)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def gc(failed: list[PishError] | None = None) -> list[str]:
    """Clean up after every container whose supervisor died; return the ids cleaned. A container that
    cannot be cleaned up fully does not stop the others: its error is appended to ``failed``."""
    cleaned = []
    with contextlib.suppress(FileNotFoundError):
        for cid in os.listdir(paths.containers_dir()):
            s = None
            with contextlib.suppress(StateError, ValueError):
                s = state.ContainerState.load(cid)
            if s is not None and s.status == "stopped" and all(r.get("kept") for r in s.resources) \
                    and not s.auto_remove:
                continue  # an exited container, with its root filesystem: kept until `pish rm`, as docker keeps it
            try:
                done = collect(cid)
            except PishError as exc:
                if failed is not None:
                    failed.append(exc)
                continue
            if done:
                _log.info("cleaned up container %s", cid[:12])
                cleaned.append(cid)
    return cleaned


def exec_in(ref: str, args: tuple[str, ...], *, env: tuple[str, ...] = (), cwd: str | None = None,
            user: str | None = None, terminal: bool = False, interactive: bool = False) -> int:
    """Run ``args`` in a running container (`pish exec`) and return its exit status. As with docker exec,
    the working directory and user default to the container's, and ``user`` names are looked up in the
    container's own /etc/passwd and /etc/group."""
    from pish_core import user as users
    from pish_core.proc import exit_status
    from pish_core.terminal import open_io

    s = _running(ref)
    assert s.pid is not None
    if paused(s):
        raise StateError(f"container {s.name} is paused: unpause it before exec")
    spec = ContainerSpec.from_dict(s.spec)
    who = spec.process.user
    if user is not None:
        root = Path(f"/proc/{s.pid}/root")  # the container's files, its symlinks kept inside it
        who = users.resolve(user, _read(resolve_in_root(root, "/etc/passwd")),
                            _read(resolve_in_root(root, "/etc/group")))[0]
    process = Process(args=args, env=env, cwd=cwd or spec.process.cwd, terminal=terminal,
                      interactive=interactive, user=who)
    full_env = container_env(spec)
    if terminal:
        full_env["TERM"] = "xterm"
    full_env.update(item.partition("=")[::2] for item in env)
    isolation = cast(Isolation, load("isolation", spec.isolation.name, spec.isolation.options))
    limits = cast(Limits, load("limits", spec.limits.name, spec.limits.options))
    group = next((r for r in s.resources if r["kind"] == "limits"), None)
    with open_io(spec.with_changes(process=process)) as io, \
            entered(isolation, limits, group, s.pid, process, full_env, spec.security, stdio=io.child_fds,
                    console=io.console) as child:
        child.release()
        io.started()
        with _forwarding(child):
            io.pump()
            return exit_status(child.wait())


def _read(path: Path) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@contextlib.contextmanager
def _forwarding(child: Child) -> Iterator[None]:
    """Forward SIGINT/SIGTERM/SIGHUP to an exec'd process while we wait for it."""
    def forward(signum: int, frame: object) -> None:
        child.kill(signum)

    saved = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
