"""Custom seccomp profiles (``pish_core/security/profiles.py``): an OCI ``linux.seccomp`` object is checked
(a one-line SpecError naming the field), compiled by libseccomp, and loaded into a forked process here to
show each part means what the runtime spec says; docker's file format becomes that object.

``tests/fixtures/oci/podman-seccomp.json`` is the ``linux.seccomp`` podman 4.3.1 gave its OCI runtime
(recorded with a logging wrapper in front of runc). containerd's ``ctr run`` sent no ``linux.seccomp`` at all
(no ``--seccomp``), which for an OCI runtime means no filter, so it has no fixture here.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pish_core import native
from pish_core.errors import SpecError
from pish_core.security import capabilities, profiles
from pish_core.security.options import security_from_flags

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "oci"
PODMAN = (FIXTURES / "podman-seccomp.json").read_text()
DENY_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES}]}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Compiled programs go to this test's PISH_LIB, not the host's."""
    monkeypatch.setenv("PISH_LIB", str(tmp_path / "lib"))
    return tmp_path / "lib"


def text(profile: dict[str, Any]) -> str:
    return json.dumps(profile)


def allow_all(**extra: Any) -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ALLOW", **extra}


def errno_rule(**extra: Any) -> dict[str, Any]:
    return {"names": ["personality"], "action": "SCMP_ACT_ERRNO", **extra}


def arg0(value: Any, op: str = "SCMP_CMP_EQ") -> list[dict[str, Any]]:
    return [{"index": 0, "value": value, "op": op}]


# -- checking: one line, naming the field ----------------------------------------------------------

BAD = {
    "not-json": ("{", "seccomp profile: not JSON"),
    "not-an-object": ([], "seccomp profile: must be a JSON object"),
    "no-default-action": ({"syscalls": []}, "seccomp profile defaultAction: missing"),
    "unknown-default-action": ({"defaultAction": "SCMP_ACT_NOPE"},
                               "seccomp profile defaultAction: unknown action 'SCMP_ACT_NOPE'"),
    "unknown-key": (allow_all(syscall=[]), "seccomp profile syscall: unknown key"),
    "default-errno-for-allow": (allow_all(defaultErrnoRet=1),
                                "seccomp profile defaultErrnoRet: SCMP_ACT_ALLOW takes no errno"),
    "notify-default": ({"defaultAction": "SCMP_ACT_NOTIFY"},
                       "seccomp profile defaultAction: SCMP_ACT_NOTIFY needs a seccomp agent"),
    "notify-rule": (allow_all(syscalls=[{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]),
                    "seccomp profile syscalls[0].action: SCMP_ACT_NOTIFY needs a seccomp agent"),
    "unknown-action": (allow_all(syscalls=[{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
                                           {"names": ["rmdir"], "action": "DENY"}]),
                       "seccomp profile syscalls[1].action: unknown action 'DENY'"),
    "no-action": (allow_all(syscalls=[{"names": ["mkdir"]}]), "seccomp profile syscalls[0].action: missing"),
    "errno-for-allow": ({"defaultAction": "SCMP_ACT_ERRNO",
                         "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]},
                        "seccomp profile syscalls[0].errnoRet: SCMP_ACT_ALLOW takes no errno"),
    "errno-too-big": (allow_all(syscalls=[errno_rule(errnoRet=70000)]),
                      "seccomp profile syscalls[0].errnoRet: must be a whole number from 0 to 65535"),
    "errno-as-text": (allow_all(syscalls=[errno_rule(errnoRet="13")]),
                      "seccomp profile syscalls[0].errnoRet: must be a whole number"),
    "no-names": (allow_all(syscalls=[errno_rule(names=[])]),
                 "seccomp profile syscalls[0].names: must name at least one syscall"),
    "name-not-a-string": (allow_all(syscalls=[errno_rule(names=["read", 3])]),
                          "seccomp profile syscalls[0].names[1]: must be a non-empty string"),
    "old-name-key": (allow_all(syscalls=[{"name": "read", "action": "SCMP_ACT_ERRNO"}]),
                     "seccomp profile syscalls[0].name: unknown key"),
    "unknown-op": (allow_all(syscalls=[errno_rule(args=arg0(1, "SCMP_CMP_LIKE"))]),
                   "seccomp profile syscalls[0].args[0].op: unknown operator 'SCMP_CMP_LIKE'"),
    "index-6": (allow_all(syscalls=[errno_rule(args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}])]),
                "seccomp profile syscalls[0].args[0].index: a syscall's arguments are 0 to 5, not 6"),
    "negative-value": (allow_all(syscalls=[errno_rule(args=arg0(-1))]),
                       "seccomp profile syscalls[0].args[0].value: must be a whole number from 0 to"),
    "value-past-64-bits": (allow_all(syscalls=[errno_rule(args=arg0(1 << 64))]),
                           "seccomp profile syscalls[0].args[0].value: must be a whole number"),
    "boolean-value": (allow_all(syscalls=[errno_rule(args=arg0(True))]),
                      "seccomp profile syscalls[0].args[0].value: must be a whole number"),
    "no-op": (allow_all(syscalls=[errno_rule(args=[{"index": 0, "value": 1}])]),
              "seccomp profile syscalls[0].args[0].op: missing"),
    "unknown-arch": (allow_all(architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_VAX"]),
                     "seccomp profile architectures[1]: unknown architecture 'SCMP_ARCH_VAX'"),
    "arch-without-prefix": (allow_all(architectures=["x86_64"]),
                            "seccomp profile architectures[0]: unknown architecture 'x86_64'"),
    "unknown-flag": (allow_all(flags=["SECCOMP_FILTER_FLAG_FAST"]),
                     "seccomp profile flags[0]: unknown flag 'SECCOMP_FILTER_FLAG_FAST'"),
    "killable-recv": (allow_all(flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]),
                      "seccomp profile flags[0]: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a seccomp"),
    "syscalls-not-a-list": (allow_all(syscalls={"names": ["read"]}),
                            "seccomp profile syscalls: must be a JSON array"),
    "libseccomp-refuses": (allow_all(syscalls=[errno_rule(errnoRet=1, args=arg0(8)),
                                               errno_rule(errnoRet=2, args=arg0(8))]),
                           "seccomp profile syscalls[1]: libseccomp refused the rule for personality (File"),
}


@pytest.mark.parametrize(("profile", "message"), BAD.values(), ids=BAD.keys())
def test_a_bad_profile_is_one_line_naming_the_field(profile: Any, message: str, private_cache: Path) -> None:
    with pytest.raises(SpecError) as caught:
        profiles.check_profile(profile if isinstance(profile, str) else text(profile))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert not private_cache.exists()  # nothing compiled, nothing kept


def test_what_the_spec_lets_be_absent() -> None:
    profile = profiles.parse(text({"defaultAction": "SCMP_ACT_ERRNO", "architectures": None, "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": None},
        {"names": ["mkdir"], "action": "SCMP_ACT_TRACE"}]}))
    assert profile.default_action == native.SCMP_ACT_ERRNO(errno.EPERM)  # defaultErrnoRet: EPERM
    assert profile.rules[1].action == native.SCMP_ACT_TRACE(errno.EPERM)
    assert profile.architectures == () and profile.flags == () and profile.rules[0].comparisons == ()


def test_numbers_and_names_become_libseccomp_s() -> None:
    profile = profiles.parse(text({
        "defaultAction": "SCMP_ACT_KILL", "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97, "args": [
            {"index": 1, "value": 0xF, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]}]}))
    assert profile.default_action == native.SCMP_ACT_KILL_THREAD
    assert profile.architectures == ("x86", "aarch64")
    assert profile.load_flags == native.SECCOMP_FILTER_FLAG_LOG | native.SECCOMP_FILTER_FLAG_SPEC_ALLOW
    assert profile.rules[0].action == native.SCMP_ACT_ERRNO(97)
    assert profile.rules[0].comparisons == ((1, native.SCMP_CMP_MASKED_EQ, 0xF, 2),)


def test_unknown_syscalls_are_skipped_and_rules_like_the_default_too() -> None:
    bpf, flags = profiles.program(text({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["no_such_call_in_any_kernel", "read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}))  # the default action: nothing to add
    assert bpf and len(bpf) % 8 == 0 and flags == 0


# -- what engines send ------------------------------------------------------------------------------


def test_podman_s_profile_compiles(private_cache: Path) -> None:
    profiles.check_profile(PODMAN)
    assert len(list((private_cache / "seccomp").glob("*.bpf"))) == 1  # kept: prepare only reads it
    bpf, flags = profiles.program(PODMAN)
    assert len(bpf) > 1000 * 8 and flags == 0  # ~370 syscalls over three x86 ABIs
    parsed = profiles.parse(PODMAN)
    assert parsed.default_action == native.SCMP_ACT_ERRNO(errno.ENOSYS)  # podman's defaultErrnoRet 38
    assert parsed.architectures == ("x86_64", "x86", "x32")


def test_the_cache_is_per_profile(private_cache: Path) -> None:
    profiles.check_profile(text(DENY_MKDIR))
    profiles.check_profile(text(allow_all()))
    profiles.check_profile(text(allow_all()))
    assert len(list((private_cache / "seccomp").glob("*.bpf"))) == 2


# -- loaded into a forked process: each part does what the spec says ---------------------------------


def in_filtered_child(profile: dict[str, Any], probe: Callable[[], object]) -> int:
    """Fork; the child sets no_new_privs, loads ``profile`` (prepared here, as the supervisor does) and
    exits with the errno ``probe`` raised (0 if none; minus the signal if it was killed)."""
    body = text(profile)
    profiles.prepare(body)
    pid = os.fork()
    if pid == 0:
        code = 100
        try:
            native.prctl(native.PR_SET_NO_NEW_PRIVS, 1)
            profiles.load(body)
            try:
                probe()
                code = 0
            except OSError as exc:
                code = exc.errno or 99
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


_libc = ctypes.CDLL(None, use_errno=True)


def personality(value: int) -> None:
    if _libc.personality(ctypes.c_ulong(value)) == -1:
        raise OSError(ctypes.get_errno(), "personality")


def unix_socket(kind: int) -> None:
    socket.socket(socket.AF_UNIX, kind).close()


def test_errno_ret(tmp_path: Path) -> None:
    assert in_filtered_child(DENY_MKDIR, lambda: os.mkdir(tmp_path / "x")) == errno.EACCES
    assert in_filtered_child(DENY_MKDIR, os.getcwd) == 0


def test_an_argument_rule() -> None:
    """personality(0xffffffff) (a query) is allowed, any other value fails with EPERM."""
    profile = allow_all(syscalls=[errno_rule(errnoRet=errno.EPERM, args=[
        {"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_NE"}])])
    assert in_filtered_child(profile, lambda: personality(0xFFFFFFFF)) == 0
    assert in_filtered_child(profile, lambda: personality(0)) == errno.EPERM


def test_args_on_different_arguments_must_all_hold() -> None:
    """socket(AF_UNIX, SOCK_DGRAM...) is refused; AF_UNIX streams and AF_INET datagrams are not."""
    profile = allow_all(syscalls=[{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97, "args": [
        {"index": 0, "value": socket.AF_UNIX, "op": "SCMP_CMP_EQ"},
        {"index": 1, "value": 0xF, "valueTwo": socket.SOCK_DGRAM, "op": "SCMP_CMP_MASKED_EQ"}]}])
    assert in_filtered_child(profile, lambda: unix_socket(socket.SOCK_DGRAM)) == 97
    assert in_filtered_child(profile, lambda: unix_socket(socket.SOCK_STREAM)) == 0
    assert in_filtered_child(profile, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()) == 0


def test_args_on_the_same_argument_are_rules_of_their_own() -> None:
    """As in runc and crun: ``value >= 8`` and ``value <= 8`` on arg 0 become two rules, either matches."""
    profile = allow_all(syscalls=[errno_rule(errnoRet=errno.EINVAL, args=[
        {"index": 0, "value": 8, "op": "SCMP_CMP_GE"}, {"index": 0, "value": 8, "op": "SCMP_CMP_LE"}])])
    assert in_filtered_child(profile, lambda: personality(0xFFFFFFFF)) == errno.EINVAL
    assert in_filtered_child(profile, lambda: personality(0)) == errno.EINVAL


def test_kill_process() -> None:
    profile = allow_all(syscalls=[{"names": ["getcwd"], "action": "SCMP_ACT_KILL_PROCESS"}])
    assert in_filtered_child(profile, os.getcwd) == -31  # SIGSYS


def test_flags_are_passed_to_seccomp() -> None:
    profile = allow_all(flags=list(profiles.FLAGS), syscalls=[
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}])
    assert in_filtered_child(profile, lambda: os.mkdir("/nonexistent/x")) == errno.EROFS


def test_an_allowlist_from_podman_runs_python() -> None:
    assert in_filtered_child(json.loads(PODMAN), lambda: os.listdir("/")) == 0
    assert in_filtered_child(json.loads(PODMAN), lambda: os.sched_getaffinity(0)) == 0
    assert in_filtered_child(json.loads(PODMAN), lambda: personality(0x10)) == errno.ENOSYS


# -- docker's format, and --security-opt seccomp=FILE ----------------------------------------------

DOCKER_ARCH, NATIVE_ARCH = profiles.MACHINES.get(platform.machine(), (platform.machine(), ""))


def docker_profile() -> dict[str, Any]:
    return {
        "comment": "docker's form",
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_PPC", "subArchitectures": []},
                    {"architecture": NATIVE_ARCH, "subArchitectures": ["SCMP_ARCH_X32"]}],
        "syscalls": [
            {"name": "read", "action": "SCMP_ACT_ALLOW", "comment": "name, not names"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": [DOCKER_ARCH]}},
            {"names": ["vm86"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["kexec_load"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "999.0"}},
            {"names": ["uselib"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "4.8"}},
        ],
    }


def test_docker_s_format_becomes_the_oci_object() -> None:
    converted = profiles.from_docker(text(docker_profile()), capabilities.DEFAULT)
    assert converted is not None
    oci = json.loads(converted)
    assert oci["architectures"] == [NATIVE_ARCH, "SCMP_ARCH_X32"] and "archMap" not in oci
    assert [call["names"] for call in oci["syscalls"]] == [["read"], ["chroot"], ["arch_prctl"], ["ptrace"]]
    assert all(set(call) == {"names", "action"} for call in oci["syscalls"])
    profiles.check_profile(converted)
    with_admin = profiles.from_docker(text(docker_profile()), (*capabilities.DEFAULT, "CAP_SYS_ADMIN"))
    assert with_admin is not None
    names = [call["names"] for call in json.loads(with_admin)["syscalls"]]
    assert names[:3] == [["read"], ["mount"], ["arch_prctl"]]


def test_docker_s_empty_profile_is_no_filter() -> None:
    assert profiles.from_docker("{}", capabilities.DEFAULT) is None


@pytest.mark.parametrize(("change", "message"), [
    ({"architectures": ["SCMP_ARCH_X86_64"]}, "seccomp profile archMap: use either architectures or archMap"),
    ({"syscalls": [{"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}]},
     "seccomp profile syscalls[0].name: use either name or names"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]},
     "seccomp profile syscalls[0].includes.minKernel: 'new' is not a kernel version"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "excludes": {"kernel": "4.8"}}]},
     "seccomp profile syscalls[0].excludes.kernel: unknown key"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},  # refused although excluded here
                   {"names": ["write"], "action": "SCMP_ACT_NOPE", "includes": {"arches": ["s390"]}}]},
     "seccomp profile syscalls[1].action: unknown action 'SCMP_ACT_NOPE'"),
])
def test_docker_s_format_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match="^" + re.escape(message)):
        profiles.from_docker(text({**docker_profile(), **change}), capabilities.DEFAULT)


def test_security_opt_seccomp_file(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(text(DENY_MKDIR))
    sec = security_from_flags(security_opts=[f"seccomp={path}"])
    assert sec.seccomp and json.loads(sec.seccomp_profile)["syscalls"] == DENY_MKDIR["syscalls"]
    assert security_from_flags(security_opts=[f"seccomp:{path}"]).seccomp_profile == sec.seccomp_profile
    assert security_from_flags(security_opts=[f"seccomp={path}", "seccomp=builtin"]).seccomp_profile == ""
    assert not security_from_flags(security_opts=[f"seccomp={path}", "seccomp=unconfined"]).seccomp
    privileged = security_from_flags(privileged=True, security_opts=[f"seccomp={path}"])
    assert not privileged.seccomp and privileged.seccomp_profile == ""  # as docker: no filter at all
    path.write_text("{}")
    assert not security_from_flags(security_opts=[f"seccomp={path}"]).seccomp


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read {path}: No such file or directory"),
    (b"\xff\xfe", "cannot read {path}: not UTF-8 text"),
    (b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "NO"}]}',
     "seccomp profile syscalls[0].action: unknown action 'NO'"),
])
def test_security_opt_seccomp_file_refused(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "profile.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SpecError) as caught:
        security_from_flags(security_opts=[f"seccomp={path}"])
    expected = f"invalid --security-opt 'seccomp={path}': {message.format(path=path)}"
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
    with pytest.raises(SpecError, match="give a profile file, builtin or unconfined"):
        security_from_flags(security_opts=["seccomp="])
