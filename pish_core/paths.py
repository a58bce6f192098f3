"""Every host path pish uses, derived in one place.

Runtime state (gone after a reboot, like the containers) lives under ``/run/pish``; data that outlives a
reboot (image cache, writable layers) under ``/var/lib/pish``. ``PISH_ROOT`` and ``PISH_LIB`` move them,
which the tests use to keep each run apart.
"""
from __future__ import annotations

import os
from pathlib import Path


def run_root() -> Path:
    return Path(os.environ.get("PISH_ROOT", "/run/pish"))


def lib_root() -> Path:
    return Path(os.environ.get("PISH_LIB", "/var/lib/pish"))


def containers_dir() -> Path:
    return run_root() / "containers"


def container_dir(cid: str) -> Path:
    """The container's state directory: state.json, its lock, its log."""
    return containers_dir() / cid


def state_file(cid: str) -> Path:
    return container_dir(cid) / "state.json"


def supervisor_lock(cid: str) -> Path:
    """Held (flock) by the container's supervisor for its whole life: free means the supervisor is gone."""
    return container_dir(cid) / "supervisor.lock"


def log_file(cid: str) -> Path:
    """The detached container's stdout and stderr."""
    return container_dir(cid) / "container.log"


def supervisor_log(cid: str) -> Path:
    """What a detached supervisor itself says (pish's own [INFO] lines)."""
    return container_dir(cid) / "supervisor.log"


def start_fifo(cid: str) -> Path:
    """A created container's supervisor waits on this FIFO until `pish start` writes to it."""
    return container_dir(cid) / "start.fifo"


def layer_dir(cid: str) -> Path:
    """The container's writable layer (overlay upper/work, mount point)."""
    return lib_root() / "containers" / cid


def images_dir() -> Path:
    """Unpacked image root filesystems, keyed by a digest of their source."""
    return lib_root() / "images"


def networks_dir() -> Path:
    """Per-network shared state (users of a bridge), guarded by flock."""
    return run_root() / "networks"


def locks_dir() -> Path:
    return run_root() / "locks"


def demo_image() -> Path:
    """Where ``pish demo-image`` writes the busybox rootfs tar by default."""
    return lib_root() / "busybox.tar"
