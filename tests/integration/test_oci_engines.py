"""Real engines drive ``pish-oci`` the way they drive runc: podman (through conmon) and containerd
(through its runc shim, ``ctr run --runc-binary``). Each test gives the engine private state directories
and checks afterwards that nothing of pish's (state records, cgroups) or of the engine's is left.

Podman runs with ``--cgroup-manager cgroupfs`` and the ulimits this kind of host needs (root here lacks
CAP_SYS_RESOURCE, so podman's default rlimits cannot be set: runc fails the same way without them).
containerd is started by the fixture on its own socket, root and state directories.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

PISH_OCI = str(Path(sys.executable).parent / "pish-oci")
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


def pish_cgroups() -> set[str]:
    found = [*Path("/sys/fs/cgroup").glob("*/libpod_parent/libpod-*"), *Path("/sys/fs/cgroup").glob("*/pish/*"),
             *Path("/sys/fs/cgroup").glob("libpod_parent/libpod-*"), *Path("/sys/fs/cgroup").glob("*/pishtest*"),
             *Path("/sys/fs/cgroup").glob("pishtest*")]
    return {str(p) for p in found if p.is_dir()}


class Podman:
    def __init__(self, top: Path) -> None:
        self.top = top
        self.oci_root = top / "pish-oci"
        # podman never passes --root and calls the runtime with a clean environment: a wrapper gives the
        # test's own state root
        runtime = top / "pish-oci-wrapper"
        runtime.write_text(f'#!/bin/sh\nexec {PISH_OCI} --root {self.oci_root} "$@"\n')
        runtime.chmod(0o755)
        conf = top / "containers.conf"
        conf.write_text(f'[engine]\nruntime_supports_json = ["runc", "crun", "pish-oci"]\n'
                        f'[engine.runtimes]\npish-oci = ["{runtime}"]\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.base = ["podman", "--root", str(top / "root"), "--runroot", str(top / "runroot"),
                     "--runtime", "pish-oci", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def __call__(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # cwd: conmon 2.1.6 drops an "oom" file in its working directory (on an OOM kill)
        proc = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              check=False, stdin=subprocess.DEVNULL, cwd=self.top)
        if check:
            assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc

    def script(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command under a real terminal (util-linux ``script``), for ``-it``."""
        line = " ".join([*self.base, command])
        return subprocess.run(["script", "-qec", line, "/dev/null"], capture_output=True, text=True,
                              timeout=timeout, env=self.env, check=False, stdin=subprocess.DEVNULL, cwd=self.top)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Podman]:
    if not shutil.which("podman") or not Path(PISH_OCI).exists():
        pytest.skip("needs podman (Debian package) and the pish-oci script")
    pm = Podman(tmp_path_factory.mktemp("podman"))
    before = pish_cgroups()
    pm("import", str(busybox_tar), "localhost/pishbb", check=True)
    yield pm
    pm("rm", "-af", "-t", "0")
    pm("system", "reset", "-f")
    assert pish_cgroups() <= before, "cgroups left"
    left = list((pm.oci_root / "containers").iterdir()) if (pm.oci_root / "containers").exists() else []
    assert left == [], "pish-oci state left"


def test_podman_run_rm_echo(podman: Podman) -> None:
    proc = podman("run", "--rm", *ULIMITS, "--net", "none", "localhost/pishbb", "echo", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"
    assert podman("ps", "-aq").stdout == ""


def test_podman_detached_exec_stop_kill_pause(podman: Podman, tmp_path: Path) -> None:
    script = "trap 'echo got-usr1 > /tmp/usr1' USR1; while :; do sleep 0.2; done"
    podman("run", "-d", "--name", "d1", *ULIMITS, "--net", "none", "localhost/pishbb", "sh", "-c", script,
           check=True)
    try:
        out = podman("exec", "d1", "sh", "-c", "echo exec-ok; id -u", check=True).stdout
        assert out.split() == ["exec-ok", "0"]
        tty = podman.script("exec -it d1 tty")
        assert "/dev/pts/" in tty.stdout, tty.stdout + tty.stderr
        missing = podman("exec", "d1", "/nonexistent")
        assert missing.returncode == 127, missing.stderr
        podman("kill", "-s", "USR1", "d1", check=True)
        deadline = time.monotonic() + 20
        while "got-usr1" not in podman("exec", "d1", "cat", "/tmp/usr1").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        podman("pause", "d1", check=True)
        assert json.loads(podman("inspect", "d1", check=True).stdout)[0]["State"]["Status"] == "paused"
        podman("unpause", "d1", check=True)
        assert json.loads(podman("inspect", "d1", check=True).stdout)[0]["State"]["Status"] == "running"
        podman("stop", "-t", "1", "d1", check=True)  # sh as PID 1 has no TERM handler: KILL after 1 s
        state = json.loads(podman("inspect", "d1", check=True).stdout)[0]["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 137
    finally:
        podman("rm", "-f", "-t", "0", "d1", check=True)


def test_podman_run_it_has_a_real_terminal(podman: Podman) -> None:
    proc = podman.script(f"run --rm -it {' '.join(ULIMITS)} --net none localhost/pishbb sh -c 'tty; stty size'")
    assert "/dev/pts/0" in proc.stdout, proc.stdout + proc.stderr


def test_podman_memory_limit_oom_as_runc_reports_it(podman: Podman) -> None:
    """A 32m container that allocates 100M is OOM-killed: exit 137, and podman's OOMKilled is what it shows
    for runc on the same host, side by side. Debian 12's podman 4.3.1 reads OOM kills only from
    <bundle>/oom, which its conmon 2.1.6 writes into its own working directory instead (the file appears in
    this test's directory): OOMKilled is false for runc too, here (cgroup v1) and on a Debian 12 VM (cgroup
    v2, systemd and cgroupfs managers alike). Only a process of the runtime's staying behind could write it
    in time, and an OCI runtime leaves none."""
    hog = ["--memory", "32m", "localhost/pishbb", "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]
    shown = {}
    for runtime in ("pish-oci", "runc"):
        name = f"oom-{runtime}"
        proc = podman("--runtime", runtime, "run", "--name", name, *ULIMITS, "--net", "none", *hog)
        try:
            assert proc.returncode == 137, proc.stderr
            inspected = json.loads(podman("inspect", name, check=True).stdout)[0]
            assert inspected["OCIRuntime"] == runtime
            assert inspected["State"]["ExitCode"] == 137
            shown[runtime] = inspected["State"]["OOMKilled"]
        finally:
            podman("rm", "-f", name)
    assert shown["pish-oci"] == shown["runc"], shown
    assert (podman.top / "oom").exists()  # conmon saw the kill (through the cgroup pish-oci made)


def test_podman_network_with_a_published_port(podman: Podman) -> None:
    podman("network", "create", "--subnet", "10.99.7.0/24", "pishtest", check=True)
    try:
        site = "mkdir -p /www; echo served-by-pish > /www/index.html; exec httpd -f -p 8080 -h /www"
        podman("run", "-d", "--name", "web", *ULIMITS, "--network", "pishtest", "-p", "127.0.0.1:18089:8080",
               "localhost/pishbb", "sh", "-c", site, check=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                body = urllib.request.urlopen("http://127.0.0.1:18089/", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert body == b"served-by-pish\n"
    finally:
        podman("rm", "-f", "-t", "0", "web")
        podman("network", "rm", "-f", "pishtest")


class Ctr:
    def __init__(self, top: Path) -> None:
        self.top, self.sock = top, top / "containerd.sock"
        self.rootfs = top / "rootfs"
        self.oci_root = Path("/run/containerd/runc/pishtest")

    def __call__(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ctr", "-a", str(self.sock), "-n", "pishtest", *args], capture_output=True,
                              text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        if check:
            assert proc.returncode == 0, f"ctr {' '.join(args)}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc


@pytest.fixture(scope="module")
def ctr(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Ctr]:
    if not shutil.which("containerd") or not shutil.which("ctr") or not Path(PISH_OCI).exists():
        pytest.skip("needs containerd (Debian package) and the pish-oci script")
    from pish_core.image.unpack import unpack_tar

    top = tmp_path_factory.mktemp("containerd")
    c = Ctr(top)
    c.rootfs.mkdir()
    unpack_tar(busybox_tar, c.rootfs)
    config = top / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{top}/root"\nstate = "{top}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", '
        '"io.containerd.snapshotter.v1.aufs"]\n'
        f'[grpc]\n  address = "{c.sock}"\n[ttrpc]\n  address = "{c.sock}.ttrpc"\n'
        '[debug]\n  address = ""\n[metrics]\n  address = ""\n')
    before = pish_cgroups()
    with open(top / "containerd.log", "w") as log:
        daemon = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while c("version").returncode != 0:
            assert daemon.poll() is None, (top / "containerd.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        yield c
    finally:
        for task in c("task", "ls", "-q").stdout.split():
            c("task", "kill", "-s", "9", "--all", task)
            c("task", "delete", "-f", task)
        for cont in c("container", "ls", "-q").stdout.split():
            c("container", "delete", cont)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        subprocess.run(["umount", "-R", str(top / "state")], check=False, capture_output=True)
        left = list((c.oci_root / "containers").iterdir()) if (c.oci_root / "containers").exists() else []
        shutil.rmtree(c.oci_root, ignore_errors=True)
        assert left == [], "pish-oci state left"
        assert pish_cgroups() <= before, "cgroups left"


def test_ctr_run_rm(ctr: Ctr) -> None:
    proc = ctr("run", "--rm", "--runc-binary", PISH_OCI, "--rootfs", str(ctr.rootfs), "r1",
               "/bin/sh", "-c", "echo hi from ctr")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi from ctr\n"


def test_ctr_detached_task_exec_ps_pause_kill_delete(ctr: Ctr) -> None:
    ctr("run", "-d", "--runc-binary", PISH_OCI, "--rootfs", str(ctr.rootfs), "t1", "/bin/sleep", "300", check=True)
    exec_out = ctr("task", "exec", "--exec-id", "e1", "t1", "/bin/sh", "-c", "echo exec-ok", check=True)
    assert exec_out.stdout == "exec-ok\n"
    pids = ctr("task", "ps", "t1", check=True).stdout.split()
    assert len(pids) >= 3  # header PID INFO, then the pid
    ctr("task", "pause", "t1", check=True)
    assert "PAUSED" in ctr("task", "ls", check=True).stdout
    ctr("task", "resume", "t1", check=True)
    assert "RUNNING" in ctr("task", "ls", check=True).stdout
    ctr("task", "kill", "--all", "-s", "9", "t1", check=True)
    deadline = time.monotonic() + 20
    while "STOPPED" not in ctr("task", "ls").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ctr("task", "delete", "t1", check=True)
    ctr("container", "delete", "t1", check=True)
    for _ in range(2):  # containerd's double delete --force of one id: exit 0 both times
        again = subprocess.run([PISH_OCI, "--root", str(ctr.oci_root), "delete", "--force", "t1"],
                               capture_output=True, text=True, check=False)
        assert again.returncode == 0, again.stderr


@pytest.fixture(scope="module")
def audit_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example third-party limits driver (tests/fixtures/pish-audit-limits), pip-installed."""
    from helpers.packages import installed

    with installed("pish-audit-limits", "pish-audit-limits", tmp_path_factory.mktemp("audit")) as dist:
        yield dist


def test_podman_chooses_a_third_party_limits_driver_by_annotation(podman: Podman, audit_driver: str,
                                                                  tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    proc = podman("run", "--rm", *ULIMITS, "--net", "none", "--memory", "48m",
                  "--annotation", "org.pish.limits=audit", "--annotation", f"org.pish.limits.opt.log={log}",
                  "localhost/pishbb", "sh", "-c", "echo limited")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "limited\n"
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("apply "), lines  # this driver made the container's cgroup
    features = json.loads(subprocess.run([PISH_OCI, "features"], capture_output=True, text=True,
                                         check=True).stdout)
    assert "audit" in features["annotations"]["org.pish.limits"].split()
