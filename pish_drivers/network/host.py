"""The ``host`` network: the container keeps the host's network namespace, so there is nothing to wire.

The isolation driver sees ``shares_host_netns`` and makes no network namespace for the container; the
container then sees, and can change, the host's interfaces. Use it when that is what you want.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pish_core import log as pish_log
from pish_core.drivers import Attachment, Network, RunContext
from pish_core.errors import SpecError
from pish_drivers.network import hosts

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec

log = pish_log.get("network")


class HostNetwork(Network):
    name = "host"
    description = "the host's own network namespace, shared (no isolation)"
    shares_host_netns = True

    def validate(self, spec: ContainerSpec) -> None:
        if spec.network.ip is not None:
            raise SpecError("--ip needs --net bridge: a container on --net host uses the host's addresses")
        if spec.network.ports:  # docker's word for it, too
            log.warning("published ports are discarded when using host network mode")

    @contextlib.contextmanager
    def attach(self, ctx: RunContext, pid: int) -> Iterator[Attachment]:
        """Nothing to wire; the container gets the host's nameservers (or ``--dns``) and /etc/hosts, as
        docker gives."""
        yield Attachment(mounts=[hosts.resolv_conf_mount(ctx.id, ctx.spec.network.dns),
                                 *hosts.hostname_mounts(ctx.id, ctx.spec.hostname), *hosts.host_hosts_mounts()])

    def release(self, record: dict[str, Any]) -> None:
        """Nothing to undo: nothing was created."""
