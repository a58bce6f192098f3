"""``pish attach`` (issue 14): the terminal of a detached ``-it`` container, through its supervisor;
detach keys leave it running, its end ends the attach with its exit code. The attaching ``pish`` runs on a
pty the test holds, as a user's terminal. Bad requests are one line, exit 125."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import time

import pytest
from helpers import pish_command
from helpers.containers import ps_json, refused, run_detached

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.leak_check(at_teardown=True)]


class Terminal:
    """``pish attach ARGS`` on a pty: ``type`` keys, ``expect`` output, ``wait`` for its exit."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([*pish_command(), "attach", *args], stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.seen = b""

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, token: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout  # a safety net, not a timing assertion
        while token not in self.seen:
            assert time.monotonic() < deadline, f"no {token!r} in {self.seen[-300:]!r}"
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # the attach ended and closed the slave
                    time.sleep(0.05)

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


def attach_when_ready(name: str, *flags: str) -> Terminal:
    """Attach, then run a command whose output shows the keys reach the container's shell."""
    term = Terminal(*flags, name)
    deadline = time.monotonic() + 20
    marker = f"ready-{time.monotonic_ns()}"
    while True:  # the shell may not read its terminal yet: ask until it answers
        term.type(f"echo {marker[:6]}''{marker[6:]}\r".encode())
        try:
            term.expect(marker.encode(), timeout=1)
            return term
        except AssertionError:
            assert time.monotonic() < deadline, term.seen


def test_attach_detach_and_exit(pish, busybox_tar, leaks):
    cid = run_detached(pish, "--net", "none", "-it", "--name", "at-sh", str(busybox_tar), "sh")
    try:
        term = attach_when_ready("at-sh")
        term.type(b"echo $((6*7))-answer\r")
        term.expect(b"42-answer")
        term.type(b"\x10\x11")  # ctrl-p ctrl-q: detach, leave it running
        assert term.wait() == 0
        assert ps_json(pish)[cid]["status"] == "running"

        term = attach_when_ready("at-sh", "--detach-keys", "ctrl-x")
        term.type(b"exit 3\r")  # the container ends: so does the attach, with its exit code
        assert term.wait() == 3
        assert ps_json(pish, "-a")[cid]["status"] == "exited (3)"
        assert "42-answer" in pish("logs", "at-sh", check=True).stdout  # the log has it all too
    finally:
        pish("rm", "-f", "at-sh")




def test_bad_attach_requests(pish, busybox_tar, leaks):
    refused(pish, "attach", "at-nope", match="no such container: at-nope")
    run_detached(pish, "--net", "none", "--name", "at-plain", str(busybox_tar), "sleep", "100")
    run_detached(pish, "--net", "none", "--name", "at-done", "-t", str(busybox_tar), "true")
    try:
        refused(pish, "attach", "at-plain", match="has no terminal")
        refused(pish, "attach", "--detach-keys", "ctrl-1", "at-plain", match="invalid --detach-keys")
        pish("wait", "at-done", check=True)
        refused(pish, "attach", "at-done", match="is not running")
    finally:
        pish("rm", "-f", "at-plain", "at-done")
