"""The security defaults as data (no root needed): capability lists, the flags, --userns parsing, the
subordinate-id ranges, --limits auto, and the seccomp filter itself, loaded into a forked process."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pish_core import native, userns
from pish_core.errors import SpecError
from pish_core.security import capabilities, seccomp
from pish_core.security.options import security_from_flags
from pish_core.spec import IDMapping, Resources, Security, UserNamespace
from pish_drivers.limits import auto

DOCKER_DEFAULT_CAPEFF = 0xA80425FB  # `grep CapEff /proc/self/status` in a default docker container


def test_default_set_is_docker_s() -> None:
    assert capabilities.mask(capabilities.DEFAULT) == DOCKER_DEFAULT_CAPEFF
    assert Security().capabilities == capabilities.DEFAULT


@pytest.mark.parametrize(("add", "drop", "has", "lacks"), [
    (["NET_ADMIN"], [], ["CAP_NET_ADMIN", "CAP_CHOWN"], []),
    (["cap_sys_time"], ["chown"], ["CAP_SYS_TIME"], ["CAP_CHOWN"]),
    (["ALL"], ["SYS_ADMIN"], ["CAP_SYS_MODULE", "CAP_NET_ADMIN"], ["CAP_SYS_ADMIN"]),
    (["NET_RAW"], ["ALL"], ["CAP_NET_RAW"], ["CAP_CHOWN", "CAP_KILL"]),
])
def test_resolve_like_docker(add: list[str], drop: list[str], has: list[str], lacks: list[str]) -> None:
    caps = capabilities.resolve(add, drop)
    assert set(has) <= set(caps)
    assert not set(lacks) & set(caps)


def test_drop_all_is_empty_and_privileged_is_everything() -> None:
    assert capabilities.resolve([], ["all"]) == ()
    assert capabilities.resolve(privileged=True) == capabilities.all_names()


@pytest.mark.parametrize("name", ["FOO", "CAP_", "", "SYS ADMIN"])
def test_unknown_capability(name: str) -> None:
    with pytest.raises(SpecError, match="unknown capability"):
        capabilities.resolve([name])


def test_security_opts() -> None:
    assert security_from_flags().no_new_privileges and security_from_flags().seccomp
    assert not security_from_flags(security_opts=["seccomp=unconfined"]).seccomp
    assert not security_from_flags(security_opts=["seccomp:unconfined"]).seccomp
    assert not security_from_flags(security_opts=["no-new-privileges=false"]).no_new_privileges
    assert security_from_flags(security_opts=["no-new-privileges"]).no_new_privileges
    for bad in ("seccomp=/tmp/profile.json", "apparmor=unconfined", "no-new-privileges=maybe"):
        with pytest.raises(SpecError, match="--security-opt"):
            security_from_flags(security_opts=[bad])


def test_privileged_turns_everything_off() -> None:
    sec = security_from_flags(privileged=True)
    assert sec.privileged and not sec.seccomp and not sec.no_new_privileges
    assert sec.masked_paths == () and sec.readonly_paths == ()
    assert set(sec.capabilities) == set(capabilities.all_names())
    assert security_from_flags(privileged=True, security_opts=["no-new-privileges"]).no_new_privileges


def test_mknod_only_where_a_device_allowlist_exists() -> None:
    assert "CAP_MKNOD" in security_from_flags(device_allowlist=True).capabilities
    assert "CAP_MKNOD" not in security_from_flags(device_allowlist=False).capabilities
    assert "CAP_MKNOD" in security_from_flags(["MKNOD"], device_allowlist=False).capabilities


def test_security_round_trips_through_json() -> None:
    sec = security_from_flags(["NET_ADMIN"], security_opts=["seccomp=unconfined"])
    assert Security(**{k: list(v) if isinstance(v, tuple) else v for k, v in vars(sec).items()}) == sec


# -- --userns --------------------------------------------------------------------------------------


@pytest.fixture
def subid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    uid, gid = tmp_path / "subuid", tmp_path / "subgid"
    uid.write_text("alice:100000:65536\n")
    gid.write_text("alice:100000:65536\n")
    monkeypatch.setattr(userns, "rootless", lambda: False)
    monkeypatch.setenv("PISH_ROOT", str(tmp_path / "run"))
    return uid, gid


def test_auto_adds_a_free_range_once(subid: tuple[Path, Path]) -> None:
    ns = userns.parse("auto", subid)
    assert ns.mode == "auto" and ns.uid_mappings == (IDMapping(0, 165536, 65536),)
    assert subid[0].read_text() == "alice:100000:65536\npish:165536:65536\n"
    assert subid[1].read_text() == subid[0].read_text()
    assert userns.parse("auto", subid) == ns  # found, not added again
    assert subid[0].read_text().count("pish:") == 1


def test_auto_refuses_a_pish_range_overlapping_another_user_s(subid: tuple[Path, Path]) -> None:
    for f in subid:
        f.write_text(f.read_text() + "pish:150000:65536\n")
    with pytest.raises(SpecError, match="overlap the range of user alice"):
        userns.parse("auto", subid)


def test_explicit_mapping(subid: tuple[Path, Path]) -> None:
    ns = userns.parse("0:300000:1000", subid)
    assert ns.mode == "map" and ns.private and ns.gid_mappings == (IDMapping(0, 300000, 1000),)
    assert userns.parse("host", subid) == UserNamespace()
    assert userns.parse(None, subid) == UserNamespace()


@pytest.mark.parametrize(("text", "message"), [
    ("0:1", "use auto, host or"),
    ("a:b:c", "use auto, host or"),
    ("0:100:0", "count must be at least 1"),
    ("5:300000:10", "must start at the container's root"),
    ("0:4294967290:100", "below"),
    ("0:120000:10", "overlap the range of user alice"),
])
def test_bad_mappings(subid: tuple[Path, Path], text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        userns.parse(text, subid)


def test_userns_spec_checks_itself() -> None:
    with pytest.raises(SpecError):
        UserNamespace("auto")  # no mappings
    with pytest.raises(SpecError):
        UserNamespace("sideways", (IDMapping(0, 1, 1),), (IDMapping(0, 1, 1),))


# -- --limits auto ---------------------------------------------------------------------------------


def test_limits_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from pish_drivers import limits

    hybrid = [(Path("/sys/fs/cgroup/memory"), "cgroup", {"memory"}), (Path("/sys/fs/cgroup/unified"), "cgroup2", set())]
    unified = [(Path("/sys/fs/cgroup"), "cgroup2", set())]
    monkeypatch.setattr(limits, "cgroup_mounts", lambda: hybrid)
    assert auto.choose(Resources(), rootless=False) == "cgroupv1"
    monkeypatch.setattr(auto, "systemd_booted", lambda: True)
    assert auto.choose(Resources(), rootless=False) == "cgroupv1", "systemd on a hybrid host: v1 has the controllers"
    monkeypatch.setattr(limits, "cgroup_mounts", lambda: unified)
    assert auto.choose(Resources(memory=1 << 20), rootless=False) == "systemd"
    monkeypatch.setattr(auto, "user_bus", lambda: Path("/run/user/1000/bus"))
    assert auto.choose(Resources(pids_limit=10), rootless=True) == "systemd"
    monkeypatch.setattr(auto, "systemd_booted", lambda: False)
    assert auto.choose(Resources(memory=1 << 20), rootless=False) == "cgroupv2"
    assert auto.choose(Resources(), rootless=True) == "none"
    with pytest.raises(SpecError, match="limits without root need systemd's user manager"):
        auto.choose(Resources(pids_limit=10), rootless=True)


# -- the seccomp filter, for real ----------------------------------------------------------------


def _in_filtered_child(caps: tuple[str, ...], probe: str) -> int:
    """Fork; the child sets no_new_privs, loads the default filter for ``caps`` and reports the errno of
    ``probe`` (0 if it worked) as its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 100
        try:
            native.prctl(native.PR_SET_NO_NEW_PRIVS, 1)
            seccomp.load(caps)
            try:
                if probe == "unshare_user":
                    native.unshare(native.CLONE_NEWUSER)
                elif probe == "mount":
                    native.mount("none", "/nonexistent", "tmpfs")
                elif probe == "getpid":
                    os.getpid()
                elif probe == "fork":
                    child = os.fork()
                    if child == 0:
                        os._exit(0)
                    os.waitpid(child, 0)
                code = 0
            except OSError as exc:
                code = exc.errno or 99
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_filter_blocks_what_docker_s_blocks() -> None:
    assert _in_filtered_child(capabilities.DEFAULT, "getpid") == 0
    assert _in_filtered_child(capabilities.DEFAULT, "fork") == 0
    assert _in_filtered_child(capabilities.DEFAULT, "unshare_user") == errno.EPERM
    assert _in_filtered_child(capabilities.DEFAULT, "mount") == errno.EPERM


def test_filter_follows_the_capabilities() -> None:
    """With CAP_SYS_ADMIN, docker's profile allows mount: then the kernel decides (ENOENT here, or
    EPERM from the missing capability when not root), not the filter."""
    result = _in_filtered_child((*capabilities.DEFAULT, "CAP_SYS_ADMIN"), "mount")
    assert result in ((errno.ENOENT,) if os.geteuid() == 0 else (errno.EPERM, errno.ENOENT))
    if os.geteuid() == 0:
        assert result == errno.ENOENT
