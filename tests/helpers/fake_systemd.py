"""A fake systemd manager on D-Bus, for testing the ``systemd`` limits driver on a host without systemd.

It answers the calls the driver makes (the Manager's Version, StartTransientUnit, GetUnit, KillUnit,
StopUnit, ResetFailedUnit; a scope's ControlGroup) as systemd does, sends ``JobRemoved`` when a job is done,
and plays the cgroup side in a plain directory: a started scope gets ``<root>/pish.slice/<unit>/`` with
the few files the driver reads, a stopped one loses it. Two ways to reach it, as the real one:

- ``serve_direct(path)``: a socket of its own, like ``/run/systemd/private`` (no bus daemon);
- ``serve_on_bus(address)``: as ``org.freedesktop.systemd1`` on a bus (a private ``dbus-daemon``).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jeepney import DBusAddress, MessageType, Parser, new_error, new_method_return, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

MANAGER = DBusAddress("/org/freedesktop/systemd1", interface="org.freedesktop.systemd1.Manager")
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
SCOPE_FILES = {"cgroup.procs": "", "cgroup.kill": "", "cgroup.events": "populated 1\nfrozen 0\n",
               "cgroup.controllers": "cpuset cpu io memory pids",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", "memory.max": "max",
               "memory.current": "4096", "pids.current": "1", "cpu.stat": "usage_usec 1500\n",
               "cpuset.cpus": "", "io.latency": ""}


class FakeSystemd:
    def __init__(self, cgroup_root: Path, version: str = "252.22-1~deb12u1") -> None:
        self.root = cgroup_root
        self.version = version
        self.units: dict[str, dict[str, Any]] = {}  # name -> its properties (as sent: name -> variant)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.device_programs: list[Path] = []  # where the driver attached its BPF device filter (patched in)
        self.stop_result = "done"  # what a stop job ends with
        self.answer = True  # False: take calls and never answer (a hung systemd)
        self._jobs = itertools.count(1)
        self._lock = threading.Lock()

    def unit_path(self, name: str) -> str:
        return "/org/freedesktop/systemd1/unit/" + "".join(
            c if c.isalnum() else f"_{ord(c):02x}" for c in name)

    def cgroup(self, name: str) -> Path:
        """Where systemd puts a unit's cgroup: in its slice's, each ``-`` of a slice's name a level."""
        if name.endswith(".slice"):
            parts = name.removesuffix(".slice").split("-")
            return self.root.joinpath(*("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts))))
        return self.cgroup(self.units[name].get("Slice", ("s", "pish.slice"))[1]) / name

    # -- the manager ------------------------------------------------------------------------------

    def handle(self, msg: Any) -> list[Any]:
        """The reply to one method call, and the signals that follow it."""
        fields = msg.header.fields
        member = fields.get(3)  # HeaderFields.member
        with self._lock:
            self.calls.append((member, tuple(msg.body)))
            if not self.answer:
                return []
            try:
                return getattr(self, f"_{member}")(msg, *msg.body)
            except KeyError as exc:
                return [new_error(msg, NO_SUCH_UNIT, "s", (f"Unit {exc.args[0]} not loaded.",))]

    def _job(self, msg: Any, unit: str, result: str) -> list[Any]:
        n = next(self._jobs)
        job = f"/org/freedesktop/systemd1/job/{n}"
        return [new_method_return(msg, "o", (job,)),
                new_signal(MANAGER, "JobRemoved", "uoss", (n, job, unit, result))]

    def _Get(self, msg: Any, interface: str, prop: str) -> list[Any]:
        if interface.endswith(".Manager") and prop == "Version":
            return [new_method_return(msg, "v", (("s", self.version),))]
        path = msg.header.fields[1]  # HeaderFields.path
        name = next(n for n in self.units if self.unit_path(n) == path)
        return [new_method_return(msg, "v", (("s", "/" + str(self.cgroup(name).relative_to(self.root))),))]

    def _GetUnit(self, msg: Any, name: str) -> list[Any]:
        self.units[name]  # KeyError: NoSuchUnit
        return [new_method_return(msg, "o", (self.unit_path(name),))]

    def _StartTransientUnit(self, msg: Any, name: str, mode: str, props: list[Any],
                            aux: list[Any]) -> list[Any]:
        for unit in [name, *(a[0] for a in aux)]:
            if unit in self.units:
                return [new_error(msg, UNIT_EXISTS, "s", (f"Unit {unit} already exists.",))]
        for unit, unit_props in aux:
            self.units[unit] = dict(unit_props)
        self.units[name] = dict(props)
        cgroup = self.cgroup(name)
        cgroup.mkdir(parents=True)
        for file, text in SCOPE_FILES.items():
            (cgroup / file).write_text(text)
        (cgroup.parent / "memory.events").write_text(SCOPE_FILES["memory.events"])  # its slice counts too
        if "MemoryMax" in self.units[name]:
            (cgroup / "memory.max").write_text(str(self.units[name]["MemoryMax"][1]))
        return self._job(msg, name, "done")

    def _KillUnit(self, msg: Any, name: str, whom: str, signal: int) -> list[Any]:
        self.units[name]
        return [new_method_return(msg)]

    def _StopUnit(self, msg: Any, name: str, mode: str) -> list[Any]:
        self.units[name]
        if self.stop_result == "done":
            shutil.rmtree(self.cgroup(name), ignore_errors=True)
            for unit in [n for n, props in self.units.items() if props.get("Slice", (0, ""))[1] == name]:
                del self.units[unit]  # what is in a slice stops with it
            del self.units[name]
            if not any(n.startswith("pish-") for n in self.units):  # pish.slice: StopWhenUnneeded
                self.units.pop("pish.slice", None)
                shutil.rmtree(self.root / "pish.slice", ignore_errors=True)
        return self._job(msg, name, self.stop_result)

    def _ResetFailedUnit(self, msg: Any, name: str) -> list[Any]:
        self.units[name]
        return [new_method_return(msg)]

    # -- transports -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def serve_direct(self, path: Path) -> Iterator[None]:
        """Listen at ``path`` as systemd does at /run/systemd/private."""
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen()
        stop = threading.Event()

        def serve(conn: socket.socket) -> None:
            with conn:
                buf = b""
                for answer in (b"OK 0123456789abcdef0123456789abcdef\r\n", None):  # AUTH..., then BEGIN
                    while b"\r\n" not in buf:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        buf += chunk
                    _line, _, buf = buf.partition(b"\r\n")
                    if answer:
                        conn.sendall(answer)
                parser, serials = Parser(), itertools.count(1)
                buf = buf or conn.recv(65536)
                while buf:
                    parser.add_data(buf)
                    while (msg := parser.get_next_message()) is not None:
                        for out in self.handle(msg):
                            conn.sendall(out.serialise(serial=next(serials)))
                    buf = conn.recv(65536)

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            server.shutdown(socket.SHUT_RDWR)
            server.close()
            thread.join(timeout=5)

    @contextlib.contextmanager
    def serve_on_bus(self, address: str) -> Iterator[None]:
        """Own org.freedesktop.systemd1 on the bus at ``address`` and answer calls made to it."""
        conn = open_dbus_connection(address)
        conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.systemd1"))
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    msg = conn.receive(timeout=0.05)
                except TimeoutError:
                    continue
                if msg.header.message_type is MessageType.method_call:
                    for out in self.handle(msg):
                        conn.send(out)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            conn.close()


@contextlib.contextmanager
def private_bus(directory: Path) -> Iterator[str]:
    """A dbus-daemon of our own with its socket in ``directory``; yields its address."""
    socket_path = directory / "bus"
    config = directory / "bus.conf"
    config.write_text(f"""<busconfig>
  <type>custom</type>
  <listen>unix:path={socket_path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_type="method_call"/><allow send_type="signal"/>
    <allow receive_type="method_call"/><allow receive_type="signal"/><allow send_destination="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
""")
    proc = subprocess.Popen(["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={config}",
                             "--print-address"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # it prints the address once it listens
        yield f"unix:path={socket_path}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(socket_path)
