"""The four driver interfaces and how pish finds their implementations.

A container's resources are split into four slots, each filled by a driver found by name through a
Python entry point (groups ``pish.storage``, ``pish.limits``, ``pish.network``, ``pish.isolation``), so a
third-party package can add one with no change to pish. Every driver is used as a context manager:
what it acquires on enter it releases on exit. Before acquiring anything it writes a record of it into the
container's journal, and ``release(record)`` can undo that record alone, later, from another process:
that is how ``pish gc`` cleans up after a run that was killed.
"""
from __future__ import annotations

import abc
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pish_core.errors import DriverError, SpecError

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec, Mount, Process, Security
    from pish_core.state import Journal

KINDS = ("storage", "limits", "network", "isolation")


@dataclass
class RunContext:
    """What a driver gets to work with: the validated spec and the journal of the container's resources."""

    spec: ContainerSpec
    journal: Journal
    #: the writable layer goes with this run (a foreground run, ``--rm``): nothing reads it after a crash
    ephemeral: bool = False

    @property
    def id(self) -> str:
        return self.spec.id


class Driver(abc.ABC):
    """What every driver has: a kind, a name, a description, options, and a host check."""

    kind: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: option name -> one-line help; options not listed here are refused.
    known_options: ClassVar[Mapping[str, str]] = {}

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(self.known_options))
        if unknown:
            raise SpecError(f"{self.kind} driver {self.name!r} has no option {unknown[0]!r}")

    @classmethod
    def check(cls) -> str | None:
        """None when the driver can work on this host, else the reason it cannot (shown by `drivers list`)."""
        return None

    def validate(self, spec: ContainerSpec) -> None:
        """Refuse a spec this driver cannot honour, before anything is created. Raise SpecError."""

    @abc.abstractmethod
    def release(self, record: dict[str, Any]) -> None:
        """Undo one journaled resource. Idempotent: a thing already gone counts as released."""


class Storage(Driver):
    kind = "storage"
    #: True when the root filesystem is a mount (overlay): a kept one whose mount went with a rootless
    #: supervisor's mount namespace is mounted again over the same directories by the next run
    rootfs_is_a_mount: ClassVar[bool] = False

    @classmethod
    def unmounted(cls, rootfs: Path) -> bool:
        """True when ``rootfs``, kept by an earlier run, should be a mount but is not one here (rootless:
        the mount went with that run's supervisor's mount namespace; the directory alone reads empty)."""
        return cls.rootfs_is_a_mount and not os.path.ismount(rootfs)

    @abc.abstractmethod
    def mount(self, ctx: RunContext) -> ContextManager[Path]:
        """Yield the container's root filesystem, ready to pivot into; unmount and remove it on exit."""


class Group(abc.ABC):
    """A container's cgroup, as the limits driver made it."""

    #: mounts the container gets from its limits driver, applied by its init (a read-only cgroup2 at
    #: /sys/fs/cgroup, showing the container its own cgroup through its cgroup namespace)
    mounts: Sequence[Mount] = ()
    #: cgroup files the container's init writes "0" to as its first act once released, moving itself in,
    #: when the driver left that to it (a task moving itself skips the kernel's lock over every cgroup
    #: move, which waits out an RCU grace period: ~10 ms on a cgroup v1 host); empty: already in
    join_files: Sequence[str] = ()

    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """Current figures, such as memory_bytes, memory_limit, cpu_ns, pids."""

    def oom_killed(self) -> bool:
        """True when the kernel's OOM killer killed a process of this group."""
        return False

    def pids(self) -> list[int]:
        """Every process in the group (``pish-oci ps``, ``kill --all``)."""
        raise DriverError("this limits driver cannot list a container's processes")

    def freeze(self, frozen: bool) -> None:
        """Stop every process of the group where it is (True), or let them go on (False): pause/resume."""
        raise DriverError("this limits driver cannot pause a container")

    def frozen(self) -> bool:
        return False


class Limits(Driver):
    kind = "limits"
    #: True when the driver keeps the container to the devices of its own /dev (a devices cgroup, a BPF
    #: device program): only then does a container get docker's CAP_MKNOD.
    device_allowlist: ClassVar[bool] = False
    #: True when the container's cgroup is in a cgroup v2 hierarchy: it then gets a cgroup namespace of its
    #: own by default, with that hierarchy mounted read-only at /sys/fs/cgroup (as docker does).
    unified: ClassVar[bool] = False

    @abc.abstractmethod
    def apply(self, ctx: RunContext, pid: int) -> ContextManager[Group]:
        """Create the group, set the limits, put ``pid`` in it; kill what is left and delete it on exit."""

    def join(self, record: dict[str, Any], pid: int) -> None:
        """Put ``pid`` in the existing group described by ``record`` (its journal entry): ``pish exec``."""
        raise DriverError(f"limits driver {self.name!r} cannot add a process to a running container")

    def join_files(self, record: dict[str, Any]) -> Sequence[str]:
        """Files a process joining the group of ``record`` writes "0" to, moving itself in (as
        ``Group.join_files``), before it enters the container; empty: ``join`` puts its pid in instead."""
        return ()

    def clone_into(self, record: dict[str, Any]) -> str | None:
        """The cgroup v2 directory of the group of ``record``, for a process joining it to be born in
        (``Isolation.enter``'s ``cgroup_dir``: clone3 with CLONE_INTO_CGROUP, no move, none of the RCU wait
        a move costs); None: ``join_files`` or ``join`` instead."""
        return None

    def group(self, record: dict[str, Any]) -> Group:
        """The group a journal ``record`` describes, found again by another process (``pish-oci ps``,
        ``pause``, ``events``)."""
        raise DriverError(f"limits driver {self.name!r} cannot find a running container's group")

    def oom_killed(self, record: dict[str, Any]) -> bool:
        """Whether the OOM killer killed a process of the group of ``record``, asked by another process
        once the container's command has ended (a detached container's supervisor, back from its monitor),
        before the group is released."""
        return self.group(record).oom_killed()


@dataclass
class Attachment:
    """What the network driver set up for one container."""

    ifname: str | None = None
    address: str | None = None
    network: str | None = None
    #: extra mounts the container needs from this driver (say a shared /etc/hosts), applied by its init
    mounts: list[Mount] = field(default_factory=list)


class Network(Driver):
    kind = "network"
    #: True for a driver that keeps the host's network namespace (``host``): isolation makes none then.
    shares_host_netns: ClassVar[bool] = False

    @abc.abstractmethod
    def attach(self, ctx: RunContext, pid: int) -> ContextManager[Attachment]:
        """Wire the network namespace of ``pid``; undo it on exit."""


class Child(abc.ABC):
    """The container's first process, held at its start until ``release`` lets it exec the command."""

    pid: int
    #: True when it was born in its cgroup (``Isolation.enter``'s ``cgroup_dir``): no ``Limits.join`` then
    in_cgroup: bool = False

    @abc.abstractmethod
    def release(self, mounts: Sequence[Mount] = (), exec_fifo: int | None = None,
                cgroup_files: Sequence[str] = ()) -> None:
        """Let the child exec the command, after joining its cgroup through ``cgroup_files`` (its limits
        group's ``join_files``) and applying ``mounts`` (from the drivers that ran after it was forked).
        Raises ExecError if the command cannot start.

        With ``exec_fifo`` (``pish-oci create``: an O_PATH descriptor of a fifo, opened before the child
        was forked, so the child holds it too whatever its user namespace may reach) the child sets
        everything up and then waits, before exec, until someone opens that fifo to read (``pish-oci
        start``); this returns once it waits. It no longer dies with us then: the caller leaves it to its
        engine."""

    @abc.abstractmethod
    def wait(self) -> int:
        """Wait for the child; return the raw wait status."""

    @abc.abstractmethod
    def kill(self, sig: int) -> None:
        """Send ``sig`` to the child; no error if it is already gone."""

    def leave(self) -> None:
        """Let the child run on when its block exits (``pish-oci create`` and ``exec --detach``: the
        engine that called us is its parent from then on). Called before ``release``, the child does not
        die with us either."""
        raise DriverError("this isolation driver cannot leave a process running")


class Isolation(Driver):
    kind = "isolation"
    #: True when ``enter`` takes ``cgroup_dir`` (a process born in the container's cgroup v2 directory)
    clones_into_cgroup: ClassVar[bool] = False

    @abc.abstractmethod
    def spawn(self, ctx: RunContext, rootfs: Path, *, netns: bool = True,
              stdio: tuple[int, int, int] = (0, 1, 2), console: int | None = None) -> ContextManager[Child]:
        """Start the child in new namespaces on ``rootfs``, blocked; kill and reap it on exit.

        ``netns`` False keeps the host's network namespace; ``stdio`` are the fds the command gets as
        0, 1 and 2. With ``console`` (a unix socket, runc's --console-socket) the child instead makes a
        pseudo-terminal from the container's own /dev/pts, takes the slave as stdio and controlling
        terminal, and sends the master back on the socket.
        """

    def enter(self, pid: int, process: Process, env: dict[str, str], security: Security, *,
              stdio: tuple[int, int, int] = (0, 1, 2), console: int | None = None,
              cgroup_files: Sequence[str] = (), cgroup_dir: str | None = None) -> ContextManager[Child]:
        """Start ``process`` (args, cwd, user) with ``env`` inside the running container whose first
        process is ``pid`` (``pish exec``), confined by the container's ``security``, in its cgroup through
        ``cgroup_files`` (``Limits.join_files``), or born in ``cgroup_dir`` (``Limits.clone_into``, given
        only to a driver that ``clones_into_cgroup``: ``Child.in_cgroup`` says if it was); blocked until
        released like ``spawn``'s child; kill and reap it on exit."""
        raise DriverError(f"isolation driver {self.name!r} cannot run a process in a running container")


# -- finding drivers ---------------------------------------------------------------------------------


def group(kind: str) -> str:
    return f"pish.{kind}"


@functools.cache
def load_class(kind: str, name: str) -> type[Driver]:
    """The driver class registered as ``name`` in the entry-point group of ``kind`` (looked up once).
    The registry is read through ``entrypoints`` (stevedore's scan, cached); the object is loaded as
    ``EntryPoint.load()`` does: import the module, follow the attributes."""
    import importlib

    from pish_core import entrypoints

    found = entrypoints.find(group(kind), name)
    if not found:
        raise DriverError(
            f"unknown {kind} driver {name!r} (available: {', '.join(available_names(kind)) or 'none'})"
        )
    if len(set(found)) > 1:
        raise DriverError(f"{kind} driver {name!r} is registered more than once: {', '.join(sorted(set(found)))}")
    module, _, attrs = found[0].partition(":")
    try:
        obj: Any = importlib.import_module(module.strip())
        for attr in attrs.strip().split(".") if attrs.strip() else ():
            obj = getattr(obj, attr)
    except Exception as exc:  # noqa: BLE001 - a broken third-party package must not give a traceback
        raise DriverError(f"{kind} driver {name!r} failed to load: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, Driver) and obj.kind == kind):
        raise DriverError(f"{kind} driver {name!r} is not a pish {kind} driver")
    return obj


def load(kind: str, name: str, options: Mapping[str, str] | None = None) -> Driver:
    """Load, check and instantiate a driver; raise DriverError if it cannot work here."""
    cls = load_class(kind, name)
    why = cls.check()
    if why:
        raise DriverError(f"{kind} driver {name!r} cannot work on this host: {why}")
    return cls(options)


def available_names(kind: str) -> list[str]:
    from pish_core import entrypoints

    return entrypoints.names(group(kind))


@dataclass
class DriverInfo:
    kind: str
    name: str
    package: str
    version: str
    description: str
    available: bool
    reason: str | None


def describe_all() -> Iterator[DriverInfo]:
    """Every registered driver of every kind, loaded and checked: what `pish drivers list` prints."""
    import importlib.metadata as md

    from stevedore import _cache

    dists = md.packages_distributions()
    for kind in KINDS:
        for ep in sorted(_cache.get_group_all(group(kind)), key=lambda e: e.name):
            top = ep.value.split(":")[0].split(".")[0]
            package = (dists.get(top) or ["?"])[0]
            try:
                version = md.version(package)
            except md.PackageNotFoundError:
                version = "?"
            try:
                cls = load_class(kind, ep.name)
                reason = cls.check()
                description = cls.description
            except DriverError as exc:
                reason, description = str(exc), ""
            yield DriverInfo(kind, ep.name, package, version, description, reason is None, reason)
