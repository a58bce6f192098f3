"""Custom seccomp profiles in real containers: ``pish run --security-opt seccomp=FILE``.

A profile's errno reaches the command (mkdir fails with EACCES, "Permission denied"), an argument rule
tells two calls of one syscall apart (busybox ``linux32`` asks personality(PER_LINUX32), ``linux64``
personality(PER_LINUX)), podman's allowlist (defaultAction ERRNO, tests/fixtures/oci/podman-seccomp.json)
runs a shell, ``pish exec`` gets the container's profile too, and a bad profile is one line, exit 125, with
nothing left behind.
"""
from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers.containers import tree

pytestmark = [pytest.mark.integration, pytest.mark.leak_check]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "oci"
QUIET = ("--log-level", "warning")
DENY_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES}]}
PER_LINUX32 = 0x0008


@pytest.fixture
def img(busybox_tar: Path) -> str:
    return str(busybox_tar)


def profile_file(tmp_path: Path, profile: dict[str, Any] | str) -> str:
    path = tmp_path / "profile.json"
    path.write_text(profile if isinstance(profile, str) else json.dumps(profile))
    return str(path)


def run(pish: Any, img: str, profile: str, *command: str) -> Any:
    return pish("run", *QUIET, "--net", "none", "--security-opt", f"seccomp={profile}", img, *command)


def test_errno_ret_reaches_the_command(pish, img, tmp_path, leaks):
    proc = run(pish, img, profile_file(tmp_path, DENY_MKDIR), "/bin/sh", "-c",
               "grep Seccomp: /proc/self/status; mkdir /x")
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"^Seccomp:\s+2$", proc.stdout, re.MULTILINE), proc.stdout
    assert "mkdir: can't create directory '/x': Permission denied" in proc.stderr
    leaks.assert_clean()


def test_an_argument_rule(pish, img, tmp_path, leaks):
    """personality(PER_LINUX32) is allowed, any other persona gets EPERM."""
    profile = profile_file(tmp_path, {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
         "args": [{"index": 0, "value": PER_LINUX32, "op": "SCMP_CMP_NE"}]}]})
    assert run(pish, img, profile, "linux32", "true").returncode == 0
    proc = run(pish, img, profile, "linux64", "true")
    assert proc.returncode == 1 and "Operation not permitted" in proc.stderr, proc.stderr
    leaks.assert_clean()


def test_podman_s_allowlist_runs_a_shell(pish, img, leaks):
    """defaultAction SCMP_ACT_ERRNO (ENOSYS): only what podman's profile lists may run, and that is enough
    for pish's own last steps and a shell; a call it does not list fails with ENOSYS."""
    profile = str(FIXTURES / "podman-seccomp.json")
    proc = run(pish, img, profile, "/bin/sh", "-c", "echo ok")
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
    proc = run(pish, img, profile, "linux64", "-R", "true")  # persona 0x0040000: not among podman's five
    assert proc.returncode == 1 and "Function not implemented" in proc.stderr, proc.stderr
    leaks.assert_clean()


def test_exec_gets_the_container_s_profile(pish, img, tmp_path, leaks):
    profile = profile_file(tmp_path, DENY_MKDIR)
    pish("run", *QUIET, "-d", "--name", "profiled", "--net", "none", "--security-opt", f"seccomp={profile}",
         img, "sleep", "60", check=True)
    try:
        proc = pish("exec", "profiled", "mkdir", "/y")
        assert proc.returncode == 1 and "Permission denied" in proc.stderr, proc.stderr
    finally:
        pish("rm", "-f", "profiled", check=True)
    leaks.assert_clean()


@pytest.mark.parametrize(("profile", "message"), [
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_DENY"}]}',
     "seccomp profile syscalls[0].action: unknown action 'SCMP_ACT_DENY'"),
    (('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", '
      '"args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}'),
     "seccomp profile syscalls[0].args[0].op: unknown operator 'SCMP_CMP_ABOUT'"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}',
     "seccomp profile architectures[0]: unknown architecture 'SCMP_ARCH_Z80'"),
    ('{"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/run/agent.sock"}',
     "seccomp profile defaultAction: SCMP_ACT_NOTIFY needs a seccomp agent"),
    ('{"defaultAction": ', "seccomp profile: not JSON"),
], ids=["action", "op", "arch", "notify", "json"])
def test_a_bad_profile_is_one_line_and_leaves_nothing(pish, pish_env, img, tmp_path, leaks, profile, message):
    path = profile_file(tmp_path, profile)
    proc = run(pish, img, path, "true")
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.startswith(f"pish: invalid --security-opt 'seccomp={path}': {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert tree(pish_env.root) == [] and tree(pish_env.lib) == []  # refused before the image, even
    assert not leaks.ids
    leaks.assert_clean()
