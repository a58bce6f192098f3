"""``pish-oci`` on a bundle made from the busybox rootfs: runc's lifecycle, each config.json field shown
in a real container, and bad input as runc reports it (one message, exit 1, nothing left).

Each test has its own state root (``--root``) and bundle; ``OciRun`` runs the CLI. The engines' own
use of pish-oci (podman, containerd) is in test_oci_engines.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration]

PISH_OCI = [sys.executable, "-m", "pish_core.oci.cli"]


def _script() -> list[str]:
    script = Path(sys.executable).parent / "pish-oci"
    return [str(script)] if script.exists() else PISH_OCI


class Oci:
    """``pish-oci --root ROOT ARGS...`` in a bundle directory."""

    def __init__(self, root: Path, bundle: Path) -> None:
        self.root, self.bundle = root, bundle
        self.config: dict[str, Any] = {}

    def __call__(self, *args: str, check: bool | int | None = None, timeout: float = 60,
                 input: str | None = None, log: Path | None = None) -> subprocess.CompletedProcess[str]:
        globals_ = ["--root", str(self.root)] + (["--log", str(log), "--log-format", "json"] if log else [])
        # Files, not pipes: a created container keeps the stdout and stderr it was given (as with runc), so
        # a pipe would not end when pish-oci does.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            code = subprocess.run([*_script(), *globals_, *args], cwd=self.bundle, stdout=out, stderr=err,
                                  text=True, timeout=timeout, input=input, check=False).returncode
            out.seek(0)
            err.seek(0)
            proc = subprocess.CompletedProcess(args, code, out.read(), err.read())
        if check is not None and check is not False:
            want = 0 if check is True else int(check)
            assert proc.returncode == want, f"pish-oci {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc

    def write(self, **changes: Any) -> None:
        """Write config.json: the default ``pish-oci spec`` made, with ``process`` args etc. changed."""
        config = json.loads(json.dumps(self.config))
        for key, value in changes.items():
            where = config
            *parents, last = key.split(".")
            for p in parents:
                where = where.setdefault(p, {})
            where[last] = value
        (self.bundle / "config.json").write_text(json.dumps(config))

    def states(self) -> list[str]:
        containers = self.root / "containers"
        return sorted(os.listdir(containers)) if containers.exists() else []


@pytest.fixture(scope="session")
def rootfs_dir(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pish_core.image.unpack import unpack_tar  # tarfile's own filters differ between Pythons

    top = tmp_path_factory.mktemp("oci-rootfs")
    (top / "rootfs").mkdir()
    unpack_tar(busybox_tar, top / "rootfs")
    return top / "rootfs"


@pytest.fixture
def oci(tmp_path: Path, rootfs_dir: Path) -> Iterator[Oci]:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "rootfs").symlink_to(rootfs_dir)
    o = Oci(tmp_path / "oci-root", bundle)
    o("spec", check=True)
    o.config = json.loads((bundle / "config.json").read_text())
    o.config["process"]["terminal"] = False
    o.write()
    yield o
    for cid in json.loads(o("list", "--format", "json").stdout or "[]"):
        o("delete", "--force", cid["id"])


def cgroups_of(oci: Oci) -> list[str]:
    return [str(p) for p in Path("/sys/fs/cgroup").glob("*/pish/*") if p.is_dir()]


@pytest.mark.hostkind  # runs in the Debian 12 VM too: cgroup v2, the BPF device filter
def test_spec_then_run_prints_and_exits_with_the_status(oci: Oci) -> None:
    oci.write(**{"process.args": ["sh", "-c", "echo hello from $(hostname); exit 7"]})
    proc = oci("run", "c1")
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "hello from pish\n"
    assert oci.states() == []


def test_no_pivot_runs_on_the_moved_root_with_the_same_mount_table(oci: Oci) -> None:
    """runc's --no-pivot (MS_MOVE onto /, then chroot): the container sees its rootfs and the same mounts as
    after pivot_root, none of the host's (before the fix the flag was accepted and ignored)."""
    oci.write(**{"process.args": ["sh", "-c", "cut -d' ' -f5 /proc/self/mountinfo | sort; test -x /bin/busybox"]})
    moved = oci("run", "--no-pivot", "np1")
    pivoted = oci("run", "p1")
    assert moved.returncode == 0 and pivoted.returncode == 0, moved.stderr + pivoted.stderr
    assert moved.stdout == pivoted.stdout
    assert "/" in moved.stdout.split() and str(oci.bundle) not in moved.stdout
    assert oci.states() == []


@pytest.mark.hostkind  # runs in the Debian 12 VM too: cgroup v2, the BPF device filter
def test_create_start_state_kill_delete(oci: Oci, tmp_path: Path) -> None:
    oci.write(**{"process.args": ["sleep", "300"]})
    pid_file = tmp_path / "pid"
    oci("create", "--pid-file", str(pid_file), "c2", check=True)
    pid = int(pid_file.read_text())
    assert not pid_file.read_text().endswith("\n")
    state = json.loads(oci("state", "c2", check=True).stdout)
    assert state["status"] == "created" and state["pid"] == pid and state["id"] == "c2"
    assert state["bundle"] == str(oci.bundle.resolve())
    assert b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()  # held before the user's program
    oci("start", "c2", check=True)
    deadline = time.monotonic() + 10
    while b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert json.loads(oci("state", "c2").stdout)["status"] == "running"
    again = oci("start", "c2")
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    busy = oci("delete", "c2")
    assert busy.returncode == 1 and "not stopped: running" in busy.stderr
    oci("kill", "c2", "KILL", check=True)
    deadline = time.monotonic() + 10
    while json.loads(oci("state", "c2").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    oci("delete", "c2", check=True)
    assert oci.states() == []
    assert oci("delete", "--force", "c2").returncode == 0  # twice, as containerd does
    assert oci("delete", "c2").returncode == 1


def test_exec_with_a_process_file_detached_and_in_the_foreground(oci: Oci, tmp_path: Path) -> None:
    oci.write(**{"process.args": ["sleep", "300"]})
    oci("run", "--detach", "c3", check=True)
    process = {"args": ["sh", "-c", "id -u; echo $FOO; exit 4"], "cwd": "/tmp", "env": ["PATH=/bin", "FOO=bar"],
               "user": {"uid": 1, "gid": 1}}
    (tmp_path / "p.json").write_text(json.dumps(process))
    proc = oci("exec", "--process", str(tmp_path / "p.json"), "c3")
    assert proc.returncode == 4 and proc.stdout.split() == ["1", "bar"], proc.stderr
    oci("exec", "--detach", "--pid-file", str(tmp_path / "epid"), "c3", "sleep", "300", check=True)
    epid = int((tmp_path / "epid").read_text())
    assert epid in json.loads(oci("ps", "--format", "json", "c3", check=True).stdout)
    oci("kill", "--all", "c3", "9", check=True)
    deadline = time.monotonic() + 10
    while json.loads(oci("state", "c3").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped = oci("exec", "c3", "true")
    assert stopped.returncode == 1 and "stopped" in stopped.stderr
    oci("delete", "c3", check=True)


@pytest.mark.hostkind  # runs in the Debian 12 VM too: cgroup v2, the BPF device filter
def test_pause_and_resume(oci: Oci) -> None:
    oci.write(**{"process.args": ["sleep", "300"]})
    oci("run", "-d", "c4", check=True)
    oci("pause", "c4", check=True)
    assert json.loads(oci("state", "c4").stdout)["status"] == "paused"
    oci("resume", "c4", check=True)
    assert json.loads(oci("state", "c4").stdout)["status"] == "running"
    stats = json.loads(oci("events", "--stats", "c4", check=True).stdout)
    assert stats["type"] == "stats" and stats["data"]["pids"]["current"] == 1
    oci("delete", "--force", "c4", check=True)
    assert oci.states() == []


def test_hooks_get_the_state_and_run_in_order(oci: Oci, tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nread state\necho \"$1 $state\" >> {log}\n")
    hook.chmod(0o755)
    hooks = {kind: [{"path": str(hook), "args": ["hook.sh", kind]}]
             for kind in ("createRuntime", "poststart", "poststop")}
    inside = tmp_path / "inside.log"
    oci.write(**{"process.args": ["true"], "hooks": hooks})
    oci("run", "c5", check=True)
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["createRuntime", "poststart", "poststop"]
    first = json.loads(lines[0].split(" ", 1)[1])
    assert first["id"] == "c5" and first["status"] == "created" and first["pid"] > 0
    assert not inside.exists()


def test_a_failing_hook_fails_create_and_leaves_nothing(oci: Oci) -> None:
    oci.write(hooks={"createRuntime": [{"path": "/bin/false"}]})
    before = cgroups_of(oci)
    proc = oci("create", "c6")
    assert proc.returncode == 1 and "createRuntime hook /bin/false failed" in proc.stderr
    assert oci.states() == [] and cgroups_of(oci) == before


def test_sysctl_rlimit_umask_hostname_and_readonly_root(oci: Oci) -> None:
    oci.write(**{"process.args": ["sh", "-c", ("cat /proc/sys/kernel/shmmax; ulimit -n; umask; hostname; "
                                  "touch /x 2>&1 || true")],
                 "process.rlimits": [{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}],
                 "process.user": {"uid": 0, "gid": 0, "umask": 0o027},
                 "linux.sysctl": {"kernel.shmmax": "4096000"}, "hostname": "box"})
    proc = oci("run", "c7", check=True)
    lines = proc.stdout.splitlines()
    assert lines[:4] == ["4096000", "123", "0027", "box"], proc.stdout
    assert "Read-only file system" in lines[4]


def test_a_network_namespace_given_by_path_is_joined(oci: Oci) -> None:
    name = f"pishoci{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "marker0", "type", "veth", "peer", "name", "marker1"], check=True)
        namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")] + [
            {"type": "network", "path": f"/run/netns/{name}"}]
        oci.write(**{"process.args": ["ip", "link"], "linux.namespaces": namespaces})
        proc = oci("run", "c8", check=True)
        assert "marker0" in proc.stdout
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_a_seccomp_rule_returns_its_errno(oci: Oci) -> None:
    seccomp = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    oci.write(**{"process.args": ["mkdir", "/tmp/x"], "linux.seccomp": seccomp})
    proc = oci("run", "c9")
    assert proc.returncode == 1 and "Permission denied" in proc.stderr


def test_an_annotation_chooses_the_limits_driver(oci: Oci) -> None:
    oci.write(**{"process.args": ["cat", "/proc/self/cgroup"], "annotations": {"org.pish.limits": "none"}})
    proc = oci("run", "c10", check=True)
    assert "pish/" not in proc.stdout


def test_features_and_version(oci: Oci) -> None:
    features = json.loads(oci("features", check=True).stdout)
    assert "cgroupv2" in features["annotations"]["org.pish.limits"]
    assert "network" in features["linux"]["namespaces"]
    version = oci("--version", check=True).stdout
    assert version.startswith("pish-oci version ") and "\nspec: 1." in version


@pytest.mark.parametrize(("setup", "args", "message"), [
    (lambda o: (o.bundle / "config.json").write_text("{not json"), ("create", "b1"), "is not valid JSON"),
    (lambda o: o.write(**{"root.path": "nowhere"}), ("create", "b2"), "no such file or directory"),
    (lambda o: None, ("create", "a/b"), "invalid container id"),
    (lambda o: None, ("create", ".."), "invalid container id"),
    (lambda o: o.write(**{"linux.intelRdt": {}}), ("create", "b3"), "linux.intelRdt is not supported"),
    (lambda o: o.write(**{"linux.sysctl": {"vm.swappiness": "1"}}), ("create", "b4"), "would change the host"),
    (lambda o: None, ("start", "nosuch"), "does not exist"),
    (lambda o: None, ("delete", "nosuch"), "does not exist"),
    (lambda o: o.write(**{"process.args": ["/nope"]}), ("create", "b5"), 'exec: "/nope": no such file or directory'),
])
def test_bad_input_is_one_runc_style_line(oci: Oci, tmp_path: Path, setup: Callable[[Oci], None],
                                          args: tuple[str, ...], message: str) -> None:
    setup(oci)
    before = cgroups_of(oci)
    log = tmp_path / "log.json"
    proc = oci(*args, log=log)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and message in entry["msg"] and entry["time"].endswith("Z")
    assert oci.states() == [] and cgroups_of(oci) == before


def test_a_duplicate_id_is_refused(oci: Oci) -> None:
    oci.write(**{"process.args": ["sleep", "300"]})
    oci("create", "dup", check=True)
    proc = oci("create", "dup")
    assert proc.returncode == 1 and "container with id exists: dup" in proc.stderr
    oci("delete", "--force", "dup", check=True)
    assert oci.states() == []


def test_nothing_is_left_after_a_killed_container_is_deleted(oci: Oci) -> None:
    before = cgroups_of(oci)
    oci.write(**{"process.args": ["sleep", "300"]})
    oci("run", "-d", "c11", check=True)
    assert len(cgroups_of(oci)) > len(before)
    oci("delete", "--force", "c11", check=True)
    assert cgroups_of(oci) == before and oci.states() == []
    assert shutil.which("true")


def container_cgroup_file(pid: int, controller: str, name: str) -> str:
    """A cgroup file of ``pid``'s cgroup, v1 (``controller``'s hierarchy) or v2."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or (controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists()):
            base = Path("/sys/fs/cgroup") / (controller if controllers else "")
            return (base / path.lstrip("/") / name).read_text().strip()
    raise AssertionError(f"no {controller} cgroup for {pid}")


@pytest.mark.hostkind  # runs in the Debian 12 VM too: cgroup v2, the BPF device filter
def test_resources_cgroups_path_and_update(oci: Oci) -> None:
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    oci.write(**{"process.args": ["sleep", "300"], "linux.cgroupsPath": "/pishtest/r1",
                 "linux.resources": {"memory": {"limit": 64 << 20}, "pids": {"limit": 40},
                                     "cpu": {"quota": 50000, "period": 100000}}})
    oci("run", "-d", "r1", check=True)
    pid = json.loads(oci("state", "r1").stdout)["pid"]
    assert "/pishtest/r1" in Path(f"/proc/{pid}/cgroup").read_text()
    memory = "memory.max" if v2 else "memory.limit_in_bytes"
    assert container_cgroup_file(pid, "memory", memory) == str(64 << 20)
    assert container_cgroup_file(pid, "pids", "pids.max") == "40"
    oci("update", "--memory", "32m", "--pids-limit", "20", "r1", check=True)
    assert container_cgroup_file(pid, "memory", memory) == str(32 << 20)
    assert container_cgroup_file(pid, "pids", "pids.max") == "20"
    oci("delete", "--force", "r1", check=True)
    assert not list(Path("/sys/fs/cgroup").glob("*/pishtest")) and not Path("/sys/fs/cgroup/pishtest").exists()


def test_a_user_namespace_from_the_mappings(oci: Oci, rootfs_dir: Path) -> None:
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network", "user")]
    # The container's root is host uid 231072: the rootfs must be reachable by it (pytest's tmp is 0700)
    reachable = Path(tempfile.mkdtemp(prefix="pish-oci-userns-"))
    try:
        reachable.chmod(0o755)
        shutil.copytree(rootfs_dir, reachable / "rootfs", symlinks=True)
        oci.write(**{"process.args": ["sh", "-c", "cat /proc/self/uid_map; id -u"], "linux.namespaces": namespaces,
                     "root.path": str(reachable / "rootfs"),
                     "linux.uidMappings": [{"containerID": 0, "hostID": 231072, "size": 65536}],
                     "linux.gidMappings": [{"containerID": 0, "hostID": 231072, "size": 65536}]})
        proc = oci("run", "u1")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["0", "231072", "65536", "0"]
    finally:
        shutil.rmtree(reachable)


def test_devices_mounts_and_start_container_hooks(oci: Oci, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note").write_text("from the host\n")
    mounts = [*oci.config["mounts"],
              {"destination": "/data", "type": "bind", "source": str(shared), "options": ["rbind", "ro"]},
              {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "mode=1770"]}]
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "echo started-inside > /scratch/hook"]}
    oci.write(**{"process.args": ["sh", "-c", ("ls -l /dev/fuse | cut -c1; cat /data/note; touch /data/x 2>&1; "
                                  "stat -c %a /scratch; cat /scratch/hook; df -k /scratch | tail -1")],
                 "mounts": mounts, "hooks": {"startContainer": [hook]},
                 "linux.devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}]})
    proc = oci("run", "m1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "c" and lines[1] == "from the host"
    assert "Read-only file system" in lines[2]
    assert lines[3] == "1770" and lines[4] == "started-inside"
    assert lines[5].split()[1] == "1024"


def test_ambient_capabilities_without_inheritable_ones_are_left_out_as_runc_does(oci: Oci) -> None:
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]  # what `runc spec` writes
    oci.write(**{"process.args": ["grep", "CapAmb", "/proc/self/status"],
                 "process.capabilities": {k: caps for k in ("bounding", "effective", "permitted", "ambient")}})
    proc = oci("run", "a1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["CapAmb:", "0000000000000000"]


def test_oom_score_domainname_groups_and_no_new_privileges(oci: Oci) -> None:
    oci.write(**{"process.args": ["sh", "-c", ("cat /proc/self/oom_score_adj; cat /proc/sys/kernel/domainname; id -G; "
                                  "grep NoNewPrivs /proc/self/status")],
                 "process.oomScoreAdj": 500, "domainname": "example.org", "process.noNewPrivileges": True,
                 "process.user": {"uid": 0, "gid": 0, "additionalGids": [10, 20]}})
    proc = oci("run", "o1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "500" and lines[1] == "example.org"
    assert set(lines[2].split()) == {"0", "10", "20"}
    assert lines[3].split() == ["NoNewPrivs:", "1"]


def test_a_hook_past_its_timeout_is_killed_and_fails_create(oci: Oci) -> None:
    oci.write(hooks={"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]})
    proc = oci("create", "h1")
    assert proc.returncode == 1 and "prestart hook /bin/sleep timed out after 1 s" in proc.stderr
    assert oci.states() == []


def _systemd_host() -> str | None:
    from pish_drivers.limits import auto

    if not (auto.systemd_booted() and auto.unified()):
        return "needs systemd as PID 1 on a cgroup v2 host (the Debian 12 VM stage has one)"
    return None


@pytest.mark.hostkind
@pytest.mark.skipif(_systemd_host() is not None, reason=str(_systemd_host()))
def test_systemd_cgroup_makes_the_scope_the_config_names(oci: Oci) -> None:
    """runc's --systemd-cgroup: cgroupsPath slice:prefix:name is a transient scope prefix-name.scope in
    that slice, made by the systemd limits driver, with the config's memory limit; delete removes it."""
    oci.write(**{"process.args": ["sleep", "300"], "linux.cgroupsPath": "system.slice:pishoci:s1",
                 "linux.resources": {"memory": {"limit": 48 << 20}}})
    oci("--systemd-cgroup", "run", "-d", "s1", check=True)
    try:
        pid = json.loads(oci("state", "s1", check=True).stdout)["pid"]
        path = Path(f"/proc/{pid}/cgroup").read_text().strip().split("::", 1)[1]
        assert path == "/system.slice/pishoci-s1.scope", path
        assert (Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max").read_text().strip() == str(48 << 20)
        shown = subprocess.run(["systemctl", "show", "-p", "MemoryMax", "pishoci-s1.scope"], capture_output=True,
                               text=True, check=True).stdout.strip()
        assert shown == f"MemoryMax={48 << 20}"
    finally:
        oci("delete", "--force", "s1", check=True)
    units = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "pishoci-*"],
                           capture_output=True, text=True, check=True).stdout
    assert units.strip() == ""
