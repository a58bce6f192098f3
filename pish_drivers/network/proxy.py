"""A published TCP port on the host's ``[::1]``: a proxy thread of the container's supervisor.

IPv6 has no ``route_localnet``: a packet with source ``::1`` never leaves ``lo``, so the DNAT that serves
``127.0.0.1`` cannot serve ``[::1]`` (the kernel drops the rewritten packet). docker runs a
``docker-proxy`` process per port for that; pish runs a thread in the process that already supervises
the container (``pish run`` itself, or the ``pish run -d`` supervisor). It lives exactly as long as the
container's network: closed when the attachment is undone, and gone with the supervisor if that is
killed, so there is nothing to journal and nothing for ``pish gc`` to find. TCP only; UDP on ``[::1]``
is not served.
"""
from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections.abc import Iterator

from pish_core import log as pish_log
from pish_core.errors import SpecError

log = pish_log.get("network")

LOOPBACK6 = "::1"
_CHUNK = 65536


class NoLoopback6(Exception):
    """The host's ``lo`` has no ``::1`` (IPv6 disabled): there is nothing to serve."""


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends; then end ``dst``'s sending side."""
    with contextlib.suppress(OSError):
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class LoopbackProxy:
    """Accept on ``[::1]:host_port``; connect each client to ``target``; copy bytes both ways."""

    def __init__(self, host_port: int, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((LOOPBACK6, host_port))
        except OSError as exc:
            self.listener.close()
            if exc.errno == errno.EADDRINUSE:
                raise SpecError(f"host port [::1]:{host_port}/tcp is in use on the host") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise NoLoopback6 from None
            raise
        self.listener.listen(64)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"pish-proxy-{host_port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed: the attachment is being undone
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        client.close()
        upstream.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)


@contextlib.contextmanager
def loopback6(host_port: int, address: str, container_port: int) -> Iterator[LoopbackProxy | None]:
    """Serve ``[::1]:host_port`` from ``[address]:container_port`` for the duration of the block (nothing,
    with a warning, on a host without ``::1``)."""
    try:
        proxy = LoopbackProxy(host_port, (address, container_port))
    except NoLoopback6:
        log.warning("the host has no ::1 on lo: host port %d/tcp is not served on [::1]", host_port)
        yield None
        return
    log.info("serving host port [::1]:%d/tcp from [%s]:%d (proxy thread)", host_port, address, container_port)
    try:
        yield proxy
    finally:
        proxy.close()
