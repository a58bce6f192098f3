"""pish's own rtnetlink socket: pyroute2 encodes and decodes every message, this module only sends them.

Why not pyroute2's ``IPRoute``, and how pyroute2 is still used (see also docs/networking.md):

- ``import pyroute2`` (any submodule) first runs the package's ``__init__``, which loads ndb, ipdb,
  conntrack and asyncio: 130-200 ms here. ``IPRoute`` itself sits on an asyncio core: >= 145 ms even
  without that ``__init__``. A ``--net bridge`` run would pay that on every start.
- pyroute2's netlink *message classes* (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``) load in ~35 ms on
  their own, and they are the part worth having: every attribute of a link, address or route, nested
  ones (a veth's peer) included, encoded and decoded by a library that tracks the kernel. pish packs
  no netlink struct by hand.
- So ``messages()`` imports those three modules with the package's ``__init__`` skipped: for the
  duration of the import, ``sys.modules["pyroute2"]`` is a placeholder module whose ``__path__`` is the
  real package's directory (``importlib.util.find_spec`` finds it without importing anything). It is
  taken out again at once, so any later ``import pyroute2`` in the process (a test, another tool) gets
  the real package, which finds these submodules already loaded.
- ``Netlink`` is the socket: one ``NETLINK_ROUTE`` socket, bound to the network namespace it was
  opened in (opened inside a container's netns with ``inside_netns``, from this thread, which comes
  home at once: no fork). ``request`` sends a message with ``NLM_F_REQUEST | NLM_F_ACK``, reads until the
  kernel's answer to that sequence number, decodes what came back with the request's own class and
  raises ``NetlinkError`` (with the errno) on an error.
"""
from __future__ import annotations

import errno as errno_codes
import importlib
import importlib.util
import os
import socket
import struct
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any, Self

from pish_core.errors import DriverError

# <linux/netlink.h>
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, sequence number, port id
_ERRNO = struct.Struct("=i")  # struct nlmsgerr starts with the (negative) errno, after the header

# <linux/rtnetlink.h>
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE = 24
#: the main table, a route made by an admin (as ``ip route add`` makes it), a unicast route
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFF_UP = 0x1  # <net/if.h>
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a link's answer without its counters: less for pyroute2 to decode

#: Big enough for any one read of a dump (the kernel fills at most ~32 KiB per read).
RECV_BYTES = 1 << 16

_messages: types.SimpleNamespace | None = None


class NetlinkError(DriverError):
    """The kernel refused a netlink request; ``errno`` says why (ENODEV, EEXIST, ...)."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(f"netlink: {what}: {os.strerror(code)}")
        self.errno = code


def messages() -> types.SimpleNamespace:
    """pyroute2's rtnetlink message classes (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``), imported without
    running the ``pyroute2`` package's ``__init__`` (saves its 130-200 ms: ndb, ipdb, asyncio)."""
    global _messages
    if _messages is None:
        placeholder = None
        if "pyroute2" not in sys.modules:
            spec = importlib.util.find_spec("pyroute2")
            if spec is None or not spec.submodule_search_locations:
                raise DriverError("pyroute2 is not installed (pip install pyroute2)")
            placeholder = types.ModuleType("pyroute2")
            placeholder.__path__ = list(spec.submodule_search_locations)
            placeholder.__spec__ = spec
            sys.modules["pyroute2"] = placeholder
        try:
            _messages = types.SimpleNamespace(
                ifinfmsg=importlib.import_module("pyroute2.netlink.rtnl.ifinfmsg").ifinfmsg,
                ifaddrmsg=importlib.import_module("pyroute2.netlink.rtnl.ifaddrmsg").ifaddrmsg,
                rtmsg=importlib.import_module("pyroute2.netlink.rtnl.rtmsg").rtmsg,
            )
        finally:
            if placeholder is not None and sys.modules.get("pyroute2") is placeholder:
                del sys.modules["pyroute2"]  # a later `import pyroute2` gets the real package
    return _messages


class Netlink:
    """One ``NETLINK_ROUTE`` socket, bound to the network namespace this thread is in when it is made
    (made inside a container's, with ``inside_netns``, it works on that one from home)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))  # no multicast groups: only answers to our own requests arrive
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _encode(self, msg: Any, msg_type: int, flags: int) -> bytes:
        """pyroute2 encodes ``msg`` as ``msg_type`` with the next sequence number; its bytes."""
        self._seq += 1
        header = msg["header"]
        header["type"] = msg_type
        header["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        header["sequence_number"] = self._seq
        msg.encode()
        return bytes(msg.data)

    def _answers(self) -> Iterator[tuple[int, int, int, bytes]]:
        """What the kernel sends back, one message at a time: (sequence number, type, the errno an ack, an
        error or a dump's end carries (0: none), the message's bytes)."""
        while True:
            data = self._sock.recv(RECV_BYTES)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno_codes.EBADMSG, "read an answer")
                code = 0
                if kind in (NLMSG_ERROR, NLMSG_DONE) and length >= _HEADER.size + _ERRNO.size:
                    code = -_ERRNO.unpack_from(data, offset + _HEADER.size)[0]
                yield seq, kind, code, data[offset:offset + length]
                offset += (length + 3) & ~3  # NLMSG_ALIGN

    def request(self, msg: Any, msg_type: int, flags: int = 0, what: str = "request") -> list[Any]:
        """Send the pyroute2 message ``msg`` as ``msg_type``; return the messages the kernel answered with
        (a get's object, a dump's list), decoded as ``msg``'s class. Raise ``NetlinkError`` on an error."""
        self._sock.send(self._encode(msg, msg_type, flags))
        answers: list[Any] = []
        for seq, kind, code, data in self._answers():
            if seq != self._seq:
                continue
            if kind in (NLMSG_ERROR, NLMSG_DONE):  # the ack or error, or a dump's end
                if code > 0:
                    raise NetlinkError(code, what)
                return answers
            reply = type(msg)(data)
            reply.decode()
            answers.append(reply)
        raise AssertionError("unreachable")  # _answers reads until the socket is closed

    def request_all(self, requests: Sequence[tuple[Any, int, int, str]]) -> None:
        """Send requests that only want an ack, (msg, type, flags, what) each, in one write: the kernel
        handles them in order and acks each. One round trip instead of one per request (a container's
        end takes four). Raise ``NetlinkError`` for the first one refused, once all are answered."""
        pending: dict[int, str] = {}
        data = b""
        for msg, msg_type, flags, what in requests:
            data += self._encode(msg, msg_type, flags)
            pending[self._seq] = what
        self._sock.send(data)
        error = None
        for seq, _, code, _ in self._answers():
            answered = pending.pop(seq, None)
            if answered is not None and code > 0 and error is None:
                error = NetlinkError(code, answered)
            if not pending:
                break
        if error is not None:
            raise error

    # -- the few requests pish makes, each one message built by pyroute2 --------------------------------

    def link(self, ifname: str) -> Any | None:
        """The link named ``ifname`` (a decoded ``ifinfmsg``), or None if there is none."""
        msg = messages().ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", ifname), ("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
        try:
            return self.request(msg, RTM_GETLINK, what=f"get link {ifname}")[0]
        except NetlinkError as exc:
            if exc.errno == errno_codes.ENODEV:
                return None
            raise

    def add_link(self, ifname: str, kind: str, what: str, *, master: int = 0, up: bool = False,
                 info_data: list[tuple[str, Any]] | None = None, mac: str = "") -> None:
        """Create link ``ifname`` of ``kind`` (bridge, veth with ``info_data`` naming its peer), optionally
        in bridge ``master``, up, with MAC address ``mac``, in one request."""
        msg = messages().ifinfmsg()
        if up:
            msg["flags"] = msg["change"] = IFF_UP
        linkinfo: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
        if info_data:
            linkinfo.append(("IFLA_INFO_DATA", {"attrs": info_data}))
        msg["attrs"] = [("IFLA_IFNAME", ifname), ("IFLA_LINKINFO", {"attrs": linkinfo})]
        if master:
            msg["attrs"].append(("IFLA_MASTER", master))
        if mac:
            msg["attrs"].append(("IFLA_ADDRESS", mac))
        self.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, what)

    def set_up(self, index: int, what: str) -> None:
        self.request(*set_up_request(index, what))

    def del_link(self, what: str, *, index: int = 0, ifname: str = "", missing_ok: bool = False) -> bool:
        """Delete a link by index or name, in one request; False if there was none (and ``missing_ok``)."""
        msg = messages().ifinfmsg()
        msg["index"] = index
        if ifname:
            msg["attrs"] = [("IFLA_IFNAME", ifname)]
        try:
            self.request(msg, RTM_DELLINK, what=what)
        except NetlinkError as exc:
            if missing_ok and exc.errno == errno_codes.ENODEV:
                return False
            raise
        return True

    def addresses(self, index: int, family: int) -> list[Any]:
        """The addresses (decoded ``ifaddrmsg``) of ``family`` on link ``index`` (0: every link)."""
        msg = messages().ifaddrmsg()
        msg["family"] = family
        found = self.request(msg, RTM_GETADDR, NLM_F_DUMP, what="list addresses")
        return [a for a in found if not index or a["index"] == index]

    def address(self, op: int, index: int, family: int, address: str, prefixlen: int, what: str,
                flags: int = 0) -> None:
        """Add (``RTM_NEWADDR``) or delete (``RTM_DELADDR``) ``address/prefixlen`` on link ``index``."""
        self.request(*address_request(op, index, family, address, prefixlen, what, flags))


# -- requests, built by pyroute2, to send one by one (``Netlink.request``) or together (``request_all``) --

Request = tuple[Any, int, int, str]  # (pyroute2 message, its type, its flags, what it does: for errors)


def set_up_request(index: int, what: str) -> Request:
    msg = messages().ifinfmsg()
    msg["index"], msg["flags"], msg["change"] = index, IFF_UP, IFF_UP
    return msg, RTM_NEWLINK, 0, what


def address_request(op: int, index: int, family: int, address: str, prefixlen: int, what: str,
                    flags: int = 0) -> Request:
    """Add (``RTM_NEWADDR``) or delete (``RTM_DELADDR``) ``address/prefixlen`` on link ``index``."""
    msg = messages().ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"], msg["flags"] = family, prefixlen, index, flags
    msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)] if family == socket.AF_INET \
        else [("IFA_ADDRESS", address)]
    if flags:
        msg["attrs"].append(("IFA_FLAGS", flags))
    return msg, op, NLM_F_CREATE | NLM_F_EXCL if op == RTM_NEWADDR else 0, what


def default_route_request(family: int, gateway: str, oif: int, what: str) -> Request:
    """A default route of ``family`` via ``gateway`` out of link ``oif`` (main table, as ``ip route``)."""
    msg = messages().rtmsg()
    msg["family"], msg["dst_len"] = family, 0
    msg["table"], msg["proto"], msg["scope"], msg["type"] = RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST
    msg["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", oif)]
    return msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, what
