"""A detached container's monitor: what its supervisor becomes while the container runs, as conmon is.

Once a detached container's command runs, its supervisor (``pish_core/detach.py``) execs this file as a
script with ``python -S -I``: the same process (same pid, the container's first process still its child,
the supervisor lock still held through the inherited fd), but only the interpreter and a few built-in
modules in memory: about 9 MB RSS, 3 MB of it its own, instead of ~19 MB of a pish with its drivers. It

- forwards SIGINT, SIGTERM and SIGHUP to the container's process, SIGKILL after the stop timeout or on a
  second signal (as ``runtime._Signals`` does in the foreground);
- with ``-t``, copies the container's terminal to its log and serves ``pish attach`` (``serve_pty``);
- waits for the process to end, then execs the full pish again (the command after ``--``, the wait status
  appended), which records the exit, releases what the journal lists and applies the restart policy.

Everything the container holds is in its journal before this runs, so a monitor killed at any moment
leaves what ``pish gc`` undoes, as a killed supervisor always has. It imports nothing of pish (``-S``:
not even site-packages), and ``pish_core.attach`` imports its attach server from here, so there is one.

    python -S -I monitor.py pid=PID stop_timeout=S [master=FD log=FD input=0|1 socket=PATH] -- CMD...
"""
import os
import sys

TYPE_CHECKING = False  # mypy reads the signal module's types; the interpreter the C module alone
if TYPE_CHECKING:
    import _socket
    import signal as _signal
else:
    import _signal  # signal.py would import enum and a dozen modules more: about 0.9 MB per container

DATA, WINSIZE = 0, 1  # the kinds of frame an attach client sends: one byte of kind, four of length
HEADER_SIZE = 5
HANDLED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)


class Forwarder:
    """The signal handlers: forward the first signal to the container's process, then SIGKILL."""

    def __init__(self, pid: int, timeout: float) -> None:
        self.pid, self.timeout = pid, timeout
        self.forwarded = False
        self.done = False  # the process has ended (not reaped yet): nothing more to send

    def on_signal(self, signum: int, frame: object) -> None:
        if self.forwarded:
            self.kill(_signal.SIGKILL)
        else:
            self.forwarded = True
            self.kill(signum)
            _signal.alarm(max(1, -int(-self.timeout // 1)))  # the timeout rounded up, as runtime's

    def on_alarm(self, signum: int, frame: object) -> None:
        self.kill(_signal.SIGKILL)

    def kill(self, sig: int) -> None:
        if not self.done:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_pty(master: int) -> bytes:
    """What the container wrote to its terminal; b"" once every holder of the slave end is gone."""
    try:
        return os.read(master, 65536)
    except OSError as exc:
        if exc.errno == 5:  # EIO: the slave end is closed (errno, the module, is one import more)
            return b""
        raise


def serve_pty(master: int, output: int, sock_path: str, accept_input: bool) -> None:
    """Copy a detached ``-t`` container's terminal to ``output`` (its log) and to every client of a unix
    socket at ``sock_path`` (``pish attach``), and what clients send to the terminal (``accept_input``:
    ``-i``), until the terminal closes. Removes the socket on the way out."""
    import _socket  # the C module: socket.py would import enum, selectors and more: ~1 MB RSS

    directory = os.open(os.path.dirname(sock_path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:  # a short path: a unix socket's must fit in 108 bytes
        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        listener.bind(f"/proc/self/fd/{directory}/{os.path.basename(sock_path)}")
    finally:
        os.close(directory)
    os.chmod(sock_path, 0o600)
    listener.listen(4)
    clients: dict[_socket.socket, bytearray] = {}
    try:
        _serve(master, output, listener, clients, accept_input)
    finally:
        for client in clients:
            client.close()
        listener.close()
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass


def _serve(master: int, output: int, listener: "_socket.socket", clients: "dict[_socket.socket, bytearray]",
           accept_input: bool) -> None:
    import _socket
    import select

    while True:
        watch: list[int | _socket.socket] = [master, listener, *clients]
        ready, _, _ = select.select(watch, [], [])
        if master in ready:
            data = read_pty(master)
            if not data:
                return
            write_all(output, data)
            for client in list(clients):
                try:
                    client.sendall(data)
                except OSError:  # gone, or too slow (its timeout): the container does not wait
                    clients.pop(client).clear()
                    client.close()
        if listener in ready:
            fd, _ = listener._accept()  # type: ignore[attr-defined]  # what socket.accept() wraps
            client = _socket.socket(fileno=fd)
            client.settimeout(2)
            clients[client] = bytearray()
        for client in [c for c in ready if isinstance(c, _socket.socket) and c in clients]:
            try:
                chunk = client.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                clients.pop(client)
                client.close()
                continue
            _frames(master, clients[client], chunk, accept_input)


def _frames(master: int, buffer: bytearray, chunk: bytes, accept_input: bool) -> None:
    buffer += chunk
    while len(buffer) >= HEADER_SIZE:
        kind, length = buffer[0], int.from_bytes(buffer[1:HEADER_SIZE], "big")
        if len(buffer) < HEADER_SIZE + length:
            return
        payload = bytes(buffer[HEADER_SIZE:HEADER_SIZE + length])
        del buffer[:HEADER_SIZE + length]
        if kind == DATA and accept_input:
            write_all(master, payload)
        elif kind == WINSIZE and len(payload) == 8:
            import fcntl
            import termios

            try:
                fcntl.ioctl(master, termios.TIOCSWINSZ, payload)
            except OSError:
                pass


def main(argv: list[str]) -> None:
    split = argv.index("--")
    opts = dict(arg.partition("=")[::2] for arg in argv[:split])
    then = argv[split + 1:]
    pid = int(opts["pid"])
    forwarder = Forwarder(pid, float(opts["stop_timeout"]))
    for sig in HANDLED:
        _signal.signal(sig, forwarder.on_signal)
    _signal.signal(_signal.SIGALRM, forwarder.on_alarm)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [*HANDLED, _signal.SIGALRM])  # blocked across the exec
    if "master" in opts:
        master, log = int(opts["master"]), int(opts["log"])
        try:
            serve_pty(master, log, opts["socket"], opts["input"] == "1")
        except Exception as exc:  # noqa: BLE001 - the container runs on: we still wait for it and record it
            os.write(2, f"[ERROR] monitor: attach server failed: {exc!r}\n".encode())
        os.close(master)
        os.close(log)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped: its pid cannot be reused yet
    _signal.pthread_sigmask(_signal.SIG_BLOCK, [*HANDLED, _signal.SIGALRM])  # the full pish takes them over
    forwarder.done = True
    _signal.alarm(0)
    _signal.signal(_signal.SIGALRM, _signal.SIG_IGN)  # drops one pending: it was for the ended process
    _, raw = os.waitpid(pid, 0)
    os.execv(then[0], [*then, str(raw)])


if __name__ == "__main__":
    main(sys.argv[1:])
