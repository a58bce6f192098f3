"""The ``bridge`` network: containers on one Linux bridge, each plugged in by a veth pair.

How a container gets its network here, in three steps:

1. **Join the bridge.** The bridge (``pish0`` unless ``--network`` names another) is shared by every
   container on it, so its users are counted in ``/run/pish/networks/<bridge>.json`` under a file
   lock: the first container creates the bridge, the last one out deletes it (only if pish made it).
2. **Plug in a cable.** A veth pair is a virtual cable with two ends. The host end (``pv`` + the
   container id) goes into the bridge; the other end is created directly inside the container's
   network namespace as ``eth0``. Creating it there is free; moving it there afterwards would cost
   20-40 ms.
3. **Configure the container's end.** We step into the container's namespace just long enough to open
   a netlink socket (it stays bound to the namespace it was made in), step back, and through that
   socket bring ``lo`` and ``eth0`` up and give ``eth0`` its address.

Undoing runs in reverse: delete the host end of the veth (the kernel deletes the other end with it),
then leave the bridge. Each step is written to the container's journal *before* it is taken, so
``pish gc`` can undo what a killed run left behind with ``release(record)`` alone.

All netlink work goes through pyroute2, imported inside the functions that use it: the import costs
~150 ms, and ``pish drivers list`` must not pay it.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pish_core import log as pish_log
from pish_core import names, paths, state
from pish_core.drivers import Attachment, Network, RunContext
from pish_core.errors import DriverError, SpecError
from pish_drivers.network import inside_netns

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec

log = pish_log.get("network")

#: The name of the container's end of the veth pair, inside its network namespace.
CONTAINER_IFNAME = "eth0"
IFF_UP = 0x1  # <net/if.h>


class BridgeNetwork(Network):
    name = "bridge"
    description = "a veth pair into a Linux bridge shared with other containers; address from --ip"

    @classmethod
    def check(cls) -> str | None:
        if importlib.util.find_spec("pyroute2") is None:  # finds it without importing it
            return "pyroute2 is not installed (pip install pyroute2)"
        return None

    def validate(self, spec: ContainerSpec) -> None:
        _address(spec)

    @contextlib.contextmanager
    def attach(self, ctx: RunContext, pid: int) -> Iterator[Attachment]:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]

        address = _address(ctx.spec)
        bridge = ctx.spec.network.network
        host_end = names.veth_host(ctx.id)
        with contextlib.ExitStack() as undo:
            with IPRoute() as ipr:  # one netlink socket in the host's namespace for steps 1 and 2
                # 1. Join the bridge, creating it if we are the first.
                membership = ctx.journal.add("network", self.name, "bridge", bridge=bridge, container=ctx.id)
                undo.callback(self._release_and_forget, ctx, membership)
                bridge_index = _join_bridge(ipr, bridge, ctx.id)

                # 2. Plug a veth pair in: host end into the bridge, the other end in the container.
                veth = ctx.journal.add("network", self.name, "veth", ifname=host_end, bridge=bridge)
                undo.callback(self._release_and_forget, ctx, veth)
                _plug_veth(ipr, host_end, bridge, bridge_index, pid)

            # 3. Configure the container's end, from inside its namespace.
            _configure_container_end(pid, address)
            yield Attachment(ifname=CONTAINER_IFNAME, address=str(address), network=bridge)

    def release(self, record: dict[str, Any]) -> None:
        what = record.get("what")
        if what == "veth":
            _delete_veth(record["ifname"])
        elif what == "bridge":
            _leave_bridge(record["bridge"], record["container"])
        else:
            raise DriverError(f"network driver 'bridge' cannot release an unknown resource {what!r}")

    def _release_and_forget(self, ctx: RunContext, record: dict[str, Any]) -> None:
        self.release(record)
        ctx.journal.drop(record)


def _address(spec: ContainerSpec) -> ipaddress.IPv4Interface:
    if spec.network.ip is None:  # no IPAM yet: the user picks the address
        raise SpecError("--net bridge needs --ip ADDRESS/PREFIX")
    return spec.network.ip


# -- step 1: the shared bridge, reference-counted under a lock ---------------------------------------


def _lock_file(bridge: str) -> Path:
    return paths.locks_dir() / f"net-{bridge}.lock"


def _users_file(bridge: str) -> Path:
    return paths.networks_dir() / f"{bridge}.json"


def _read_users(bridge: str) -> dict[str, Any] | None:
    """The bridge's bookkeeping, ``{"created_by_pish": bool, "users": [ids]}``, or None if there is none."""
    path = _users_file(bridge)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DriverError(f"{path} is corrupt ({exc}): remove it if no container uses bridge {bridge}") from None
    return data


def _write_users(bridge: str, data: dict[str, Any]) -> None:
    paths.networks_dir().mkdir(parents=True, exist_ok=True)
    state.write_json_atomic(_users_file(bridge), data)


def _live(users: list[str], leaving: str | None = None) -> list[str]:
    """The users still there: not ``leaving``, and with a state record (a removed container is gone)."""
    return [cid for cid in users if cid != leaving and paths.container_dir(cid).exists()]


def _link(ipr: Any, ifname: str) -> Any | None:
    """The link named ``ifname`` in the namespace of ``ipr``'s socket (a pyroute2 message), or None."""
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _index(ipr: Any, ifname: str) -> int:
    """The index of the link named ``ifname`` in the namespace of ``ipr``'s socket."""
    return int(ipr.link("get", ifname=ifname)[0]["index"])


def _is_bridge(link: Any) -> bool:
    return bool(link.get(("linkinfo", "kind")) == "bridge")


def _join_bridge(ipr: Any, bridge: str, cid: str) -> int:
    """Add ``cid`` to the bridge's users, creating the bridge if missing; return the bridge's index."""
    with state.flocked(_lock_file(bridge)):
        data = _read_users(bridge) or {"created_by_pish": False, "users": []}
        link = _link(ipr, bridge)
        if link is not None and not _is_bridge(link):
            raise DriverError(f"{bridge} exists on the host but is not a bridge: pick another --network")
        if link is None:
            data["created_by_pish"] = True
        data["users"] = _live(data["users"], leaving=cid) + [cid]
        _write_users(bridge, data)  # written before the bridge is created, so a crash leaves a trace
        if link is None:
            log.info("creating bridge %s", bridge)
            ipr.link("add", ifname=bridge, kind="bridge", state="up")
            return _index(ipr, bridge)
        if not link["flags"] & IFF_UP:
            ipr.link("set", index=link["index"], state="up")
        return int(link["index"])


def _leave_bridge(bridge: str, cid: str) -> None:
    """Remove ``cid`` from the bridge's users; delete the bridge if pish made it and nobody is left."""
    from pyroute2 import IPRoute

    with state.flocked(_lock_file(bridge)):
        data = _read_users(bridge)
        if data is None:  # never joined, or already cleaned up
            return
        data["users"] = _live(data["users"], leaving=cid)
        if data["users"]:
            _write_users(bridge, data)
            return
        if data["created_by_pish"]:
            with IPRoute() as ipr:
                link = _link(ipr, bridge)
                if link is not None and _is_bridge(link):
                    log.info("removing bridge %s", bridge)
                    ipr.link("del", index=link["index"])
        _users_file(bridge).unlink(missing_ok=True)


# -- step 2: the veth pair ---------------------------------------------------------------------------


def _plug_veth(ipr: Any, host_end: str, bridge: str, bridge_index: int, pid: int) -> None:
    """Create the veth pair with its peer born inside ``pid``'s netns; put the host end in the bridge."""
    log.info("creating veth %s in bridge %s", host_end, bridge)
    netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        # One request does it all: the host end is made in the bridge and up, and its peer is made
        # in the namespace that ``net_ns_fd`` points at, so nothing has to move afterwards.
        ipr.link(
            "add", ifname=host_end, kind="veth", master=bridge_index, state="up",
            peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": netns},
        )
    finally:
        os.close(netns)


def _delete_veth(host_end: str) -> None:
    """Delete the host end of a veth pair; the kernel deletes the container's end with it."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        if _link(ipr, host_end) is None:  # released before, or gone with the container's netns
            return
        log.info("removing veth %s", host_end)
        try:
            ipr.link("del", ifname=host_end)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # ENODEV: the netns took it away meanwhile
                raise


# -- step 3: inside the container's namespace --------------------------------------------------------


def _configure_container_end(pid: int, address: ipaddress.IPv4Interface) -> None:
    """Bring ``lo`` and ``eth0`` up in ``pid``'s netns and give ``eth0`` its address."""
    from pyroute2 import IPRoute

    with inside_netns(pid):
        ipr = IPRoute()  # its netlink socket belongs to the container's netns from now on
    with ipr:
        ipr.link("set", ifname="lo", state="up")
        eth0 = _index(ipr, CONTAINER_IFNAME)
        ipr.addr("add", index=eth0, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=eth0, state="up")
    log.debug("%s of process %d is %s", CONTAINER_IFNAME, pid, address)
