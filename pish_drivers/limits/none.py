"""The ``none`` limits driver: no cgroup at all, for rootless pish (a non-root user cannot make cgroups
unless some were delegated to it). The container's processes stay in the cgroup pish runs in; when the
container ends, its PID namespace goes with PID 1, and the kernel kills what is left. Any requested
limit is refused, so nothing asked for is silently ignored.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pish_core.drivers import Group, Limits, RunContext
from pish_core.errors import SpecError

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec


class NoGroup(Group):
    def stats(self) -> dict[str, int]:
        return {}


class NoLimits(Limits):
    name = "none"
    description = "no cgroup, no limits (rootless pish); refuses --memory, --cpus, --pids-limit, --limit"

    def validate(self, spec: ContainerSpec) -> None:
        if not spec.resources.empty():
            raise SpecError("--limits none cannot limit anything: drop --memory, --cpus, --cpuset-cpus, "
                            "--pids-limit and --limit, or pick a cgroup limits driver (needs root)")

    @contextlib.contextmanager
    def apply(self, ctx: RunContext, pid: int) -> Iterator[Group]:
        yield NoGroup()

    def join(self, record: dict[str, Any], pid: int) -> None:
        """Nothing to join: there is no group (and nothing is journaled, so this is never called)."""

    def release(self, record: dict[str, Any]) -> None:
        """Nothing to undo."""
