"""``pish run -it``: the container's shell behaves as a terminal, driven here through a real pty."""
from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import time
from pathlib import Path

import pytest
from helpers import pish_command
from helpers.containers import wait_running
from helpers.leaks import RUN_BRIDGE

pytestmark = [pytest.mark.integration, pytest.mark.leak_check(bridge=RUN_BRIDGE)]

CGROUP = Path("/sys/fs/cgroup/pids")


class Terminal:
    """``pish ARGS...`` on the slave end of a new pty, as if a user ran it in a terminal."""

    def __init__(self, *args: str) -> None:
        argv = [*pish_command(), *args]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its stdin, stdout, stderr and controlling terminal
            try:
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        self.output = b""

    def read_until(self, pattern: bytes, timeout: float = 20) -> re.Match[bytes]:
        """Read until ``pattern`` (a regex) shows up; fail with what was read after ``timeout`` s (a safety
        net, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.output)):
            if time.monotonic() > deadline or not self._read(deadline - time.monotonic()):
                pytest.fail(f"no {pattern!r} in the terminal; it showed {self.output!r}")
        return match

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: every process holding the slave end is gone
            return False
        self.output += data
        return bool(data)

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30) -> int:
        """Read to the end and return pish's exit status (``timeout`` is a safety net only)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
            pass
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        pytest.fail(f"pish did not exit; the terminal showed {self.output!r}")

    def close(self) -> None:
        """End pish if it still runs: SIGTERM, which it forwards and then unwinds (never SIGKILL first:
        a supervisor killed outright leaves its container's resources to `pish gc`)."""
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                os.kill(self.pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                    if time.monotonic() > deadline:
                        os.kill(self.pid, signal.SIGKILL)  # the `leaks` fixture's clean-up runs `pish gc`
                        os.waitpid(self.pid, 0)
                        break
                    self._read(0.02)
                    time.sleep(0.02)
        os.close(self.fd)


def processes_in(cid: str) -> list[str]:
    """The command names of the processes in a container's cgroup, seen from the host."""
    names = []
    for pid in (CGROUP / "pish" / cid / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def test_ctrl_c_reaches_the_container(pish_env, busybox_tar, leaks):
    """Ctrl-C interrupts the container's foreground job (pish puts its own terminal in raw mode and passes
    the byte on), not pish; and the shell's exit status is pish's."""
    term = Terminal("run", "--log-level", "warning", "--stop-timeout", "1", "-it", str(busybox_tar), "/bin/sh")
    try:
        cid = wait_running(pish_env)["id"]
        term.read_until(rb"# ")
        term.type("sleep 100; echo after-sleep\r")
        deadline = time.monotonic() + 20  # a safety net, not a timing assertion
        while "sleep" not in processes_in(cid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "sleep" in processes_in(cid)
        term.type("\x03")  # Ctrl-C: the container's terminal sends SIGINT to sleep
        term.read_until(rb"\^C\r\n.*# ")  # back at the prompt...
        assert b"\r\nafter-sleep" not in term.output  # ...and the rest of the line was abandoned
        assert "sleep" not in processes_in(cid)
        term.type("exit 4\r")
        assert term.wait() == 4, term.output
    finally:
        term.close()
    leaks.assert_clean()


def test_t_gives_a_terminal(pish, busybox_tar):
    proc = pish("run", "--log-level", "warning", "-t", str(busybox_tar), "sh", "-c",
                'test -t 0 && test -t 1 && test -t 2 && echo is-a-tty; echo "TERM=$TERM"; exit 5')
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout.splitlines() == ["is-a-tty", "TERM=xterm"]


def test_no_terminal_without_t(pish, busybox_tar):
    proc = pish("run", "--log-level", "warning", str(busybox_tar), "sh", "-c",
                "test -t 0 || test -t 1 || echo no-tty")
    assert proc.stdout == "no-tty\n"


def test_tty_names_the_terminal(pish, busybox_tar):
    proc = pish("run", "--log-level", "warning", "-t", str(busybox_tar), "tty")
    assert proc.returncode == 0, proc.stdout
    assert re.fullmatch(r"/dev/pts/\d+", proc.stdout.strip()), proc.stdout


def test_pish_log_lines_end_in_crlf_on_a_terminal(pish_env, busybox_tar, leaks):
    term = Terminal("run", "--stop-timeout", "1", "-it", str(busybox_tar), "/bin/sh")  # log level info
    try:
        term.read_until(rb"# ")
        term.type("exit\r")
        assert term.wait() == 0, term.output
    finally:
        term.close()
    leaks.assert_clean()
    assert b"[INFO] limits: creating cgroup" in term.output
    bare = re.findall(rb"\[INFO\][^\r\n]*\n", term.output)  # a line that ends without \r
    assert bare == [], term.output
