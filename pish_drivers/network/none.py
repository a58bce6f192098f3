"""The ``none`` network: the container gets its own network namespace with only ``lo``, brought up.

That is all a new network namespace needs to be useful on its own: ``lo`` starts down, and programs
that talk to 127.0.0.1 expect it up. One flag on one interface does not justify pyroute2 (~150 ms to
import, and a ``--net none`` run must not pay it), so this speaks to the kernel the old way: the
``SIOCGIFFLAGS``/``SIOCSIFFLAGS`` ioctls, on a socket opened inside the container's namespace.
"""
from __future__ import annotations

import _socket  # the C module: socket.py's enums and selectors cost a --net none run ~3 ms
import contextlib
import fcntl
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pish_core import log as pish_log
from pish_core.drivers import Attachment, Network, RunContext
from pish_core.errors import SpecError
from pish_drivers.network import hosts, inside_netns

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec

log = pish_log.get("network")

# <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
#: struct ifreq: a 16-byte interface name, then a union whose member we use is ``short ifr_flags``;
#: 40 bytes in all on 64-bit Linux.
IFREQ_FLAGS = struct.Struct("16sh22x")


class NoNetwork(Network):
    name = "none"
    description = "a network namespace of its own with only the loopback interface"

    def validate(self, spec: ContainerSpec) -> None:
        if spec.network.ip is not None:
            raise SpecError("--ip needs --net bridge: a container on --net none has only lo")
        if spec.network.ports:
            raise SpecError("-p needs --net bridge: a container on --net none has only lo")

    @contextlib.contextmanager
    def attach(self, ctx: RunContext, pid: int) -> Iterator[Attachment]:
        with inside_netns(pid):
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)  # bound to the container's netns
        try:
            bring_up(sock, "lo")
        finally:
            sock.close()
        log.debug("lo of process %d is up", pid)
        # /etc/hosts, /etc/hostname and /etc/resolv.conf, as every container gets them (docker's too)
        spec = ctx.spec
        yield Attachment(mounts=[hosts.loopback_hosts_mount(ctx.id, spec.hostname),
                                 *hosts.hostname_mounts(ctx.id, spec.hostname),
                                 hosts.resolv_conf_mount(ctx.id, spec.network.dns)])

    def release(self, record: dict[str, Any]) -> None:
        """Nothing to undo: ``lo`` goes away with the namespace, and nothing was journaled."""


def bring_up(sock: _socket.socket, ifname: str) -> None:
    """Set IFF_UP on ``ifname`` in the network namespace ``sock`` belongs to."""
    name = ifname.encode()
    flags = IFREQ_FLAGS.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ_FLAGS.pack(name, 0)))[1]
    if not flags & IFF_UP:
        fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ_FLAGS.pack(name, flags | IFF_UP))
