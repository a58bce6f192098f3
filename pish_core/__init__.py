"""pish: a small Linux container runtime whose every resource is owned by a pluggable driver.

Importing this package is cheap on purpose: the CLI's start-up time is a feature. ``run`` loads the
runtime (and through it the drivers) only when called.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec

__all__ = ["run"]


def run(spec: ContainerSpec) -> int:
    """Run one container to completion and return its exit status (see ``pish_core.runtime``)."""
    from pish_core.runtime import run as _run

    return _run(spec)
