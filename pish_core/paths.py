"""Every host path pish uses, derived in one place.

Runtime state (gone after a reboot, like the containers) lives under ``/run/pish``; data that outlives a
reboot (image cache, writable layers) under ``/var/lib/pish``. ``PISH_ROOT`` and ``PISH_LIB`` move them,
which the tests use to keep each run apart. Run by a user other than root (rootless), pish keeps its state
under ``$XDG_RUNTIME_DIR/pish`` (else a private ``/tmp/pish-UID``) and its data under
``$XDG_DATA_HOME/pish`` (``~/.local/share/pish``).
"""
from __future__ import annotations

import os
from pathlib import Path


def run_root() -> Path:
    if "PISH_ROOT" in os.environ:
        return Path(os.environ["PISH_ROOT"])
    if not rootless():
        return Path("/run/pish")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "pish"
    return _private_tmp(Path(f"/tmp/pish-{host_uid()}"))


def lib_root() -> Path:
    if "PISH_LIB" in os.environ:
        return Path(os.environ["PISH_LIB"])
    if not rootless():
        return Path("/var/lib/pish")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "pish"


_host_uid: int | None = None


def host_uid() -> int:
    """Our effective uid as the host sees it, also from inside a user namespace (rootless pish is "root"
    in its own). Read once per process (a run asked ~40 times, each an open and read of uid_map): what
    it answers is pish's own identity, which a child's later setns into a container does not change."""
    global _host_uid
    if _host_uid is None:
        _host_uid = _read_host_uid()
    return _host_uid


def _read_host_uid() -> int:
    uid = os.geteuid()
    with open("/proc/self/uid_map") as f:
        for line in f:
            inside, outside, count = (int(x) for x in line.split())
            if inside <= uid < inside + count:
                return outside + uid - inside
    return uid


def rootless() -> bool:
    """True when pish runs without the host's root (see ``pish_core/userns.py``)."""
    return host_uid() != 0


def _private_tmp(path: Path) -> Path:
    """``/tmp/pish-UID``, made 0700 if missing; refused if someone else made it (it would hold our state)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = path.lstat()
        if not path.is_dir() or path.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            from pish_core.errors import StateError

            raise StateError(f"{path} is not a private directory of this user: remove it, or set XDG_RUNTIME_DIR")
    return path


def containers_dir() -> Path:
    return run_root() / "containers"


def container_dir(cid: str) -> Path:
    """The container's state directory: state.json, its lock, its log."""
    return containers_dir() / cid


def state_file(cid: str) -> Path:
    return container_dir(cid) / "state.json"


def name_file(cid: str) -> Path:
    """The container's name after a ``pish rename``: it overrides the record's, which its supervisor
    keeps rewriting from memory."""
    return container_dir(cid) / "name"


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


def stop_marker(cid: str) -> Path:
    """Made by ``pish stop`` / ``kill``: the user ended the container, so its restart policy does not
    restart it (as docker's); removed by the next ``pish start``."""
    return container_dir(cid) / "stopped-by-user"


def attach_socket(cid: str) -> Path:
    """A detached ``-t`` container's supervisor listens here for ``pish attach``."""
    return container_dir(cid) / "attach.sock"


def events_file() -> Path:
    """``pish events``' log: one JSON object a line, appended; rotated to ``events_old()`` when big."""
    return run_root() / "events.jsonl"


def events_old() -> Path:
    return run_root() / "events.jsonl.1"


def events_lock() -> Path:
    """Held while the events log is rotated."""
    return locks_dir() / "events.lock"


def layer_dir(cid: str) -> Path:
    """The container's writable layer (overlay upper/work, mount point)."""
    return lib_root() / "containers" / cid


def images_dir() -> Path:
    """The image store's image records (config and layer list), one directory per image id."""
    return lib_root() / "images"


def image_record(image_id: str) -> Path:
    """One image of the store: ``config.json`` (byte for byte) and ``image.json``."""
    return images_dir() / image_id


def layers_dir() -> Path:
    """The image store's layers, unpacked once each and shared by every image that uses them."""
    return lib_root() / "layers"


def store_layer(diff_id: str) -> Path:
    """One unpacked layer, named by its diff_id's hex digest: ``fs/`` (an overlay lower layer), ``layer.json``."""
    return layers_dir() / diff_id


def image_refs() -> Path:
    """Image names (``NAME:TAG``) -> image ids."""
    return lib_root() / "refs.json"


def store_lock() -> Path:
    """Shared by imports and runs, exclusive for ``pish image rm`` (which deletes layers)."""
    return lib_root() / "store.lock"


def unpack_lock() -> Path:
    """Held by an import while it unpacks a layer into the store."""
    return lib_root() / "unpack.lock"


def refs_lock() -> Path:
    """Guards ``refs.json`` (``image_refs``)."""
    return lib_root() / "refs.lock"


def image_sources_dir() -> Path:
    """What ``pish run PATH`` found at a path, keyed by the file's identity: the fast pre-check in front
    of the content hash."""
    return lib_root() / "sources"


def image_source(key: str) -> Path:
    return image_sources_dir() / f"{key}.json"


def seccomp_cache(key: str) -> Path:
    """A seccomp program libseccomp compiled, kept so the next container only has to load it."""
    return lib_root() / "seccomp" / f"{key}.bpf"


def networks_dir() -> Path:
    """Per-network shared state (users of a bridge), guarded by flock."""
    return run_root() / "networks"


def bridge_users(bridge: str) -> Path:
    """Which containers use a bridge, and whether pish made it (``bridge_lock`` guards it)."""
    return networks_dir() / f"{bridge}.json"


def locks_dir() -> Path:
    return run_root() / "locks"


def names_lock() -> Path:
    """Held while a container name is checked and taken, so two containers never get the same one."""
    return locks_dir() / "names.lock"


def subid_lock() -> Path:
    """Held while pish reads, and may add, its range in /etc/subuid and /etc/subgid."""
    return locks_dir() / "subid.lock"


def bridge_lock(bridge: str) -> Path:
    """Held while a container joins or leaves a bridge (its users are counted in ``bridge_users``)."""
    return locks_dir() / f"net-{bridge}.lock"


def demo_image() -> Path:
    """Where ``pish demo-image`` writes the busybox rootfs tar by default."""
    return lib_root() / "busybox.tar"


def network_defs_dir() -> Path:
    """Network definitions (``pish network create``): they outlive a reboot, like docker's. One lock
    (``networks_lock``) guards every file in it and the networks' allocations."""
    return lib_root() / "networks"


def network_file(name: str) -> Path:
    return network_defs_dir() / f"{name}.json"


def network_allocations(name: str) -> Path:
    """The addresses network ``name`` gave out, and to whom (IPAM): runtime state, as the containers are."""
    return networks_dir() / "addresses" / f"{name}.json"  # a directory of its own: names may hold dots


def networks_lock() -> Path:
    return network_defs_dir() / ".lock"


def hosts_file(network: str) -> Path:
    """The /etc/hosts shared by the containers of one network (bind-mounted read-only, rewritten in place)."""
    return networks_dir() / f"{network}.hosts"


def resolv_conf(cid: str) -> Path:
    """The container's /etc/resolv.conf (bind-mounted read-only)."""
    return container_dir(cid) / "resolv.conf"


def etc_hosts(cid: str) -> Path:
    """The /etc/hosts of a container on no network of pish's (``--net none``): its own, loopback only."""
    return container_dir(cid) / "hosts"


def connections_file(cid: str) -> Path:
    """The networks a running container was connected to with ``pish network connect``, each with the
    journal records of what that took (the container's own journal names this file)."""
    return container_dir(cid) / "connections.json"


def connections_lock(cid: str) -> Path:
    """Held while a container is connected to or disconnected from a network, or its connections released."""
    return container_dir(cid) / "connections.lock"


def etc_hostname(cid: str) -> Path:
    """The container's /etc/hostname (bind-mounted read-only)."""
    return container_dir(cid) / "hostname"


def host_lock(name: str) -> Path:
    """A lock on something every pish on the host shares, whatever PISH_ROOT says (the ``ip pish``
    nftables table): it lives in /run/lock, not under the state root."""
    return Path("/run/lock") / f"pish-{name}.lock"
