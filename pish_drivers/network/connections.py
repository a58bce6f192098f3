"""The journal of ``pish network connect``: what a running container took on the networks it joined late.

The container's own journal (its state record's ``resources``) belongs to its supervisor, which keeps it
in memory and writes it whole: a record another process added there would be lost at the supervisor's
next write. So ``connect`` journals into a file of its own, ``paths.connections_file(id)``, with the
same records the bridge driver writes for the first network (``address``, ``bridge``, ``veth``), each
written before it is taken; and the supervisor's journal holds one record, ``connections``, written
when the container was first attached, whose release replays this file in reverse. A container stopped,
``rm -f``-ed or ``gc``-ed therefore releases its later networks with the rest, and ``disconnect``
releases one network's records alone.

Everything here happens under ``paths.connections_lock(id)``. Once the connections were released the
file says ``closed``, and ``connect`` refuses: the container is going away.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from pish_core import paths, state
from pish_core.errors import StateError

Release = Callable[[dict[str, Any]], None]


class Connections:
    """The open file of one container: ``networks`` maps a network to the records of its connection."""

    def __init__(self, cid: str, data: dict[str, Any]) -> None:
        self.cid = cid
        self.networks: dict[str, list[dict[str, Any]]] = data.get("networks", {})
        self.closed: bool = data.get("closed", False)

    def save(self) -> None:
        if paths.container_dir(self.cid).exists():
            state.write_json_atomic(paths.connections_file(self.cid),
                                    {"networks": self.networks, "closed": self.closed})

    def add(self, network: str, what: str, /, **data: Any) -> dict[str, Any]:
        """Record a resource of ``network``'s connection before it is taken."""
        record = {"kind": "network", "driver": "bridge", "what": what, **data}
        self.networks.setdefault(network, []).append(record)
        self.save()
        return record

    def update(self, record: dict[str, Any], **data: Any) -> None:
        record.update(data)
        self.save()

    def release(self, network: str, release: Release) -> None:
        """Undo ``network``'s connection, newest record first, each forgotten once released."""
        records = self.networks.get(network, [])
        while records:
            release(records[-1])
            records.pop()
            self.save()
        self.networks.pop(network, None)
        self.save()

    def ifnames(self) -> set[str]:
        """The container's interfaces its connections made (``eth1``, ...)."""
        return {r["container_ifname"] for rs in self.networks.values() for r in rs if r.get("container_ifname")}


@contextlib.contextmanager
def opened(cid: str) -> Iterator[Connections]:
    """The container's connections, locked for the block."""
    if not paths.container_dir(cid).exists():
        raise StateError(f"no such container: {cid[:12]}")
    with state.flocked(paths.connections_lock(cid)):
        try:
            data = json.loads(paths.connections_file(cid).read_text())
        except FileNotFoundError:
            data = {}
        except ValueError as exc:
            raise StateError(f"{paths.connections_file(cid)} is corrupt ({exc})") from None
        yield Connections(cid, data)


def reopen(cid: str) -> None:
    """Let ``connect`` in again: the container (re)starts, its earlier connections were released."""
    if not paths.connections_file(cid).exists():  # never connected: nothing to reopen (and no lock to take)
        return
    with opened(cid) as conns:
        if conns.closed and not conns.networks:
            conns.closed = False
            conns.save()


def release_all(cid: str, release: Release) -> None:
    """Undo every connection of ``cid`` and close the file (what the ``connections`` record's release
    does); idempotent, and nothing to do once the container's directory is gone."""
    if not paths.container_dir(cid).exists():
        return
    with opened(cid) as conns:
        for network in list(conns.networks):
            conns.release(network, release)
        conns.closed = True
        conns.save()
