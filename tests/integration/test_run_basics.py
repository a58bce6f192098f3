"""``pish run`` in the foreground: output and exit status, and what the command sees inside.

Inside: its own PID namespace (``ps`` shows only the container, and PID 1 is the command), its own
hostname, an overlay as ``/``, no host file, a clean environment, the working directory asked for. And the
exit status: the command's; 127 and 126 with one line when it cannot be executed; 128+N when a signal
kills it.
"""
from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest
from helpers.containers import no_traceback, pish_in_background, wait_running

pytestmark = pytest.mark.integration

QUIET = ("--log-level", "warning")  # pish's own [INFO] lines off, so stderr is only what we look for


@pytest.fixture
def img(busybox_tar: Path) -> str:
    return str(busybox_tar)


def run(pish, *args: str, check: bool | int | None = None):
    """``pish run --log-level warning --net none ARGS...``."""
    return pish("run", *QUIET, "--net", "none", *args, check=check)


def test_output_and_exit_status(pish, img):
    proc = pish("run", "--net", "none", img, "/bin/sh", "-c", "echo hi; exit 3")
    assert proc.stdout == "hi\n"
    assert proc.returncode == 3, proc.stderr
    no_traceback(proc.stderr)
    assert run(pish, img, "true").returncode == 0
    assert run(pish, img, "false").returncode == 1


def test_ps_sees_only_the_container(pish, img):
    # sh is PID 1 (the command itself, no init in between) and ps its child: nothing of the host.
    out = run(pish, img, "sh", "-c", "ps -o pid,comm; true", check=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows == [["1", "sh"], ["2", "ps"]], out


def test_pid_1_is_the_command(pish, img):
    out = run(pish, img, "cat", "/proc/1/cmdline", check=True).stdout
    assert out.split("\0") == ["cat", "/proc/1/cmdline", ""]


def test_hostname_is_the_container_name(pish, img):
    out = run(pish, "--name", "basics-host", img, "sh", "-c", 'hostname; echo "$HOSTNAME"',
              check=True).stdout
    assert out == "basics-host\nbasics-host\n"


def test_hostname_option(pish, img):
    out = run(pish, "--name", "basics-name", "--hostname", "box.example", img, "sh", "-c",
              'hostname; echo "$HOSTNAME"', check=True).stdout
    assert out == "box.example\nbox.example\n"


def test_host_hostname_is_untouched(pish, img):
    before = os.uname().nodename
    run(pish, "--hostname", "not-the-host", img, "true", check=True)
    assert os.uname().nodename == before


def test_root_is_an_overlay(pish, img, pish_env):
    out = run(pish, img, "grep", " / ", "/proc/mounts", check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 1, out
    _, mount_point, fstype, options = lines[0].split()[:4]
    assert (mount_point, fstype) == ("/", "overlay"), out
    assert f"upperdir={pish_env.lib}/containers/" in options  # the container's own writable layer


def test_host_files_are_unreachable(pish, img):
    name = f"hostfile-{uuid.uuid4().hex}"
    host_file = Path("/tmp") / name
    host_file.write_text("host secret\n")
    try:
        script = (f"cat /tmp/{name} 2>/dev/null && echo visible; "
                  f"echo from-container > /tmp/{name}; cat /tmp/{name}; "
                  "ls / | tr '\\n' ' '")
        out = run(pish, img, "sh", "-c", script, check=True).stdout
        lines = out.splitlines()
        assert "host secret" not in out and "visible" not in lines, out
        assert lines[0] == "from-container"  # written to the container's layer...
        assert host_file.read_text() == "host secret\n"  # ...not the host's /tmp
        # / is the image's root: no trace of the host's old root (pivot_root detached it)
        assert "work" not in lines[1].split() and "home" not in lines[1].split(), out
    finally:
        host_file.unlink()


def test_environment_is_clean(pish, img, monkeypatch):
    monkeypatch.setenv("PISH_HOST_ONLY", "must-not-leak")
    out = run(pish, "--name", "envbox", "-e", "FOO=bar baz", "-e", "EMPTY=", "-e", "BARE",
              "-e", "HOME=/home/me", img, "env", check=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/home/me",  # -e overrides the default /root
        "HOSTNAME": "envbox",
        "FOO": "bar baz",
        "EMPTY": "",
        "BARE": "",
    }


def test_environment_defaults(pish, img):
    out = run(pish, "--name", "envdef", img, "env", check=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert env == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                   "HOSTNAME": "envdef"}  # no TERM without -t


def test_workdir(pish, img):
    assert run(pish, "-w", "/etc", img, "pwd", check=True).stdout == "/etc\n"
    assert run(pish, img, "pwd", check=True).stdout == "/\n"
    # a missing working directory is created, as docker does
    assert run(pish, "-w", "/new/dir", img, "pwd", check=True).stdout == "/new/dir\n"


@pytest.mark.parametrize("command", ["/bin/nope", "nope"])
def test_missing_command_is_127(pish, img, command):
    proc = run(pish, img, command, "arg")
    assert proc.returncode == 127
    assert proc.stderr == f"pish: exec {command}: no such file or directory\n"
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["/etc/passwd", "/tmp"], ids=["plain-file", "directory"])
def test_not_executable_is_126(pish, img, command):
    proc = run(pish, img, command)
    assert proc.returncode == 126
    assert proc.stderr == f"pish: exec {command}: permission denied\n"


def test_killed_by_a_signal_is_128_plus_n(pish, pish_env, busybox_tar):
    """A PID 1 ignores every signal it has no handler for, even from the host, except SIGKILL: the kernel's
    rule for a namespace's init. So the signal that can kill the command is SIGKILL, and pish exits 137."""
    with pish_in_background("run", *QUIET, "--name", "victim", str(busybox_tar), "sleep", "100") as proc:
        record = wait_running(pish_env, proc, name="victim")
        os.kill(record["pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL, err
    no_traceback(err)


def test_killed_by_pish_kill(pish, pish_env, busybox_tar):
    """The same through the CLI: ``pish kill NAME`` (SIGKILL) ends the foreground ``pish run`` with 137."""
    with pish_in_background("run", *QUIET, "--name", "victim2", str(busybox_tar), "sleep", "100") as proc:
        wait_running(pish_env, proc, name="victim2")
        assert pish("kill", "victim2").returncode == 0
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 137, err
