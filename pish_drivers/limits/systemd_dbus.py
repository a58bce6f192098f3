"""Talking to systemd over D-Bus: the few calls the ``systemd`` limits driver makes, with jeepney.

D-Bus in two paragraphs. A program calls a *method* of an *object* (``/org/freedesktop/systemd1``) through
an *interface* (``org.freedesktop.systemd1.Manager``) and gets a reply or an error; objects also send
*signals*, such as ``JobRemoved`` when a job systemd queued has finished. Every message is a header
(who, what, a serial number; a reply names the serial it answers) and a body of typed values, described
by a *signature*: ``s`` a string, ``b`` a boolean, ``t`` a uint64, ``au`` an array of uint32,
``a(sv)`` an array of (name, variant) pairs, where a variant carries its own signature. jeepney builds and
parses these messages (``new_method_call``, ``Parser``) and does nothing else behind our back: the
socket, the authentication and the wait for a reply are the forty lines below.

Where systemd listens. Usually at the *system bus* (``dbus-daemon`` or ``dbus-broker`` at
``/run/dbus/system_bus_socket``), which routes messages between programs: we first say ``Hello``, and we
ask it for the ``JobRemoved`` signals (``AddMatch``). A host without a bus daemon still has systemd's own
socket, ``/run/systemd/private``, which systemctl uses as root: a direct line to systemd, no ``Hello``,
and systemd sends the signals of the jobs we asked for unasked. A user's systemd (rootless pish) listens
at ``$XDG_RUNTIME_DIR/bus`` (the session bus) or ``$XDG_RUNTIME_DIR/systemd/private``.

Authentication is SASL's EXTERNAL: we say which uid we are, and the server checks it against the socket's
peer credentials. We say the uid the host sees (``paths.host_uid``), not ``geteuid()``: rootless pish runs
as root of a user namespace of its own, and a bus outside it sees the user's uid.
"""

from __future__ import annotations

import os
import select
import socket
import time
from binascii import hexlify
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from jeepney import (  # type: ignore[import-untyped]
    DBusAddress,
    HeaderFields,
    MatchRule,
    MessageType,
    Parser,
    new_method_call,
)
from jeepney.bus_messages import message_bus  # type: ignore[import-untyped]

from pish_core import paths
from pish_core.errors import DriverError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER = DBusAddress("/org/freedesktop/systemd1", bus_name=SYSTEMD, interface=f"{SYSTEMD}.Manager")
#: How long one method call may take (D-Bus's own default), and a whole job (a scope starting, stopping).
CALL_TIMEOUT = 25.0
JOB_TIMEOUT = 30.0
#: D-Bus error names the driver tells apart.
NO_SUCH_UNIT = f"{SYSTEMD}.NoSuchUnit"
UNIT_EXISTS = f"{SYSTEMD}.UnitExists"

Property = tuple[str, tuple[str, Any]]  # ("MemoryMax", ("t", 50331648)): a name and a variant


class BusError(DriverError):
    """An error reply from systemd; ``name`` is its D-Bus name (``org.freedesktop.systemd1.NoSuchUnit``)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name


def addresses(user: bool) -> list[tuple[str, bool]]:
    """Where to find the manager: (socket path, direct?) to try in order, the bus first."""
    if user:
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{paths.host_uid()}"
        bus = _unix_path(os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")) or f"{runtime}/bus"
        return [(bus, False), (f"{runtime}/systemd/private", True)]
    bus = _unix_path(os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "")) or "/run/dbus/system_bus_socket"
    return [(bus, False), ("/run/systemd/private", True)]


def _unix_path(address: str) -> str | None:
    """The socket path of a D-Bus address such as ``unix:path=/run/user/1000/bus,guid=...``."""
    for part in address.split(";"):
        kind, _, params = part.partition(":")
        if kind == "unix":
            options = dict(p.partition("=")[::2] for p in params.split(","))
            if "path" in options:
                return options["path"]
    return None


class Manager:
    """One connection to a systemd manager, the system's or (``user``) the user's."""

    def __init__(self, user: bool = False) -> None:
        self.user = user
        self.parser = Parser()
        self.serial = 0
        self.signals: list[Any] = []  # JobRemoved signals that came while we waited for something else
        self.matching = False  # whether the bus sends us JobRemoved signals yet
        found = [(path, direct) for path, direct in addresses(user) if Path(path).exists()]
        if not found:
            where = " or ".join(path for path, _ in addresses(user))
            raise DriverError(f"systemd: no D-Bus socket to reach the {self.what} ({where})")
        path, self.direct = found[0]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.settimeout(CALL_TIMEOUT)
            self.sock.connect(path)
            self._authenticate()
            self.sock.settimeout(None)
            if not self.direct:
                self.call(message_bus.Hello())
        except OSError as exc:
            self.close()
            why = exc.strerror or exc
            raise DriverError(f"systemd: cannot talk to the {self.what} at {path}: {why}") from None
        except BaseException:
            self.close()
            raise

    @property
    def what(self) -> str:
        return "user's systemd" if self.user else "system's systemd"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- the calls pish makes ---------------------------------------------------------------------

    def version(self) -> int:
        """systemd's version number: 252 for "252.22-1~deb12u1"."""
        text = str(self.get(MANAGER.object_path, MANAGER.interface, "Version"))
        digits = "".join(c for c in text.partition(".")[0] if c.isdigit())
        if not digits:
            raise DriverError(f"systemd: cannot read the version {text!r}")
        return int(digits)

    def start_transient_unit(self, name: str, properties: Sequence[Property],
                             aux: Sequence[tuple[str, Sequence[Property]]] = ()) -> str:
        """Make and start the unit ``name``; return its job. ``aux``: units made along with it (its slice)."""
        self._match_jobs()
        body = (name, "replace", list(properties), [(n, list(p)) for n, p in aux])
        (job,) = self.call(new_method_call(MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))", body))
        return str(job)

    def stop_unit(self, name: str) -> str:
        self._match_jobs()
        (job,) = self.call(new_method_call(MANAGER, "StopUnit", "ss", (name, "replace")))
        return str(job)

    def kill_unit(self, name: str, signal: int) -> None:
        self.call(new_method_call(MANAGER, "KillUnit", "ssi", (name, "all", signal)))

    def reset_failed_unit(self, name: str) -> None:
        self.call(new_method_call(MANAGER, "ResetFailedUnit", "s", (name,)))

    def unit_property(self, name: str, interface: str, prop: str) -> Any:
        """A property of a loaded unit, such as the ControlGroup of ``org.freedesktop.systemd1.Scope``."""
        (unit_path,) = self.call(new_method_call(MANAGER, "GetUnit", "s", (name,)))
        return self.get(unit_path, f"{SYSTEMD}.{interface}", prop)

    def get(self, path: str, interface: str, prop: str) -> Any:
        address = DBusAddress(path, bus_name=SYSTEMD, interface="org.freedesktop.DBus.Properties")
        ((_signature, value),) = self.call(new_method_call(address, "Get", "ss", (interface, prop)))
        return value

    def wait_job(self, job: str) -> str:
        """Wait for systemd to finish ``job``; return its result: ``done``, ``failed``, ``canceled``..."""
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            for msg in self.signals:
                _id, path, _unit, result = msg.body
                if path == job:
                    self.signals.remove(msg)
                    return str(result)
            self.signals.append(self._receive(deadline, f"job {job}"))

    # -- messages ---------------------------------------------------------------------------------

    def _match_jobs(self) -> None:
        """Ask the bus for systemd's JobRemoved signals, before the first job we will wait for. (systemd
        sends them to every direct connection, and on the bus to the clients that made the job.)"""
        if not self.direct and not self.matching:
            rule = MatchRule(type="signal", sender=SYSTEMD, interface=MANAGER.interface,
                             member="JobRemoved", path=MANAGER.object_path)
            self.call(message_bus.AddMatch(rule))
            self.matching = True

    def call(self, msg: Any) -> tuple[Any, ...]:
        """Send a method call, wait for its reply, return the reply's body; raise BusError for an error."""
        self.serial += 1
        self.sock.sendall(msg.serialise(serial=self.serial))
        deadline = time.monotonic() + CALL_TIMEOUT
        member = msg.header.fields.get(HeaderFields.member, "?")
        while True:
            reply = self._receive(deadline, f"the answer to {member}", replies=True)
            if reply.header.fields.get(HeaderFields.reply_serial) != self.serial:
                if reply.header.message_type is MessageType.signal:
                    self.signals.append(reply)
                continue
            if reply.header.message_type is MessageType.error:
                name = reply.header.fields.get(HeaderFields.error_name, "?")
                text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else name
                raise BusError(name, f"systemd: {member}: {text}")
            return tuple(reply.body)

    def _receive(self, deadline: float, waiting_for: str, replies: bool = False) -> Any:
        """The next message: a reply (with ``replies``) or a JobRemoved signal; other signals are dropped."""
        while True:
            msg = self.parser.get_next_message()
            if msg is not None:
                kind = msg.header.message_type
                if kind is MessageType.signal and msg.header.fields.get(HeaderFields.member) == "JobRemoved":
                    return msg
                if replies and kind in (MessageType.method_return, MessageType.error):
                    return msg
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise DriverError(f"systemd: no answer from the {self.what} in time ({waiting_for})")
            data = self.sock.recv(65536)
            if not data:
                raise DriverError(f"systemd: the {self.what} closed the connection ({waiting_for})")
            self.parser.add_data(data)

    def _authenticate(self) -> None:
        """SASL EXTERNAL: a NUL byte, ``AUTH EXTERNAL <uid in hex>``, ``OK <guid>`` back, ``BEGIN``."""
        uid = hexlify(str(paths.host_uid()).encode()).decode()
        self.sock.sendall(f"\0AUTH EXTERNAL {uid}\r\n".encode())
        answer = b""
        while not answer.endswith(b"\r\n"):
            data = self.sock.recv(512)
            if not data:
                break
            answer += data
        if not answer.startswith(b"OK "):
            said = answer.decode(errors="replace").strip()
            raise DriverError(f"systemd: the {self.what} refused us: {said}")
        self.sock.sendall(b"BEGIN\r\n")
