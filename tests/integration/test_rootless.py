"""Rootless: a user without root runs ``pish run --net none IMG /bin/sh -c 'id; ls /'``.

The test makes a user (``useradd``; ``userdel -r`` at the end, /etc/subuid and /etc/subgid restored) and
runs pish as that user: pish enters a user namespace where the user is root (with the user's subordinate
ids too, through newuidmap, when it has some), mounts the overlay there, makes no cgroup, and keeps its
state under $XDG_RUNTIME_DIR/pish and its data under ~/.local/share/pish. Afterwards nothing of the run is
left: no mount, no process, no container record, no layer.

The user must be able to run the same Python as the tests. When that lives under a directory others cannot
enter (pyenv under /root, say), each run gets a private mount namespace where a tmpfs covers that
directory and only the needed subdirectories are bound back: nothing on the host changes.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.hostfiles import SUBID_FILES, preserved

import pish_core

pytestmark = [pytest.mark.integration, pytest.mark.hostkind]


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    image: Path

    @property
    def runtime_dir(self) -> Path:
        return self.home / "run"


@pytest.fixture
def user(busybox_tar: Path) -> Iterator[User]:
    name = f"pishrl{uuid.uuid4().hex[:6]}"
    with preserved(*SUBID_FILES):
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
        try:
            pw = pwd.getpwnam(name)
            u = User(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir), Path(pw.pw_dir) / "busybox.tar")
            shutil.copy(busybox_tar, u.image)
            u.runtime_dir.mkdir(mode=0o700)
            for path in (u.image, u.runtime_dir):
                os.chown(path, u.uid, u.gid)
            yield u
            # Zombies do not count: this machine's PID 1 is slow to reap the orphans it inherits.
            ps = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-u", str(u.uid)], capture_output=True, text=True,
                                check=False)
            left = [line for line in ps.stdout.splitlines() if line.split()[1][:1] != "Z"]
            assert left == [], f"processes of {name} left running: {left}"
        finally:
            subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def _hidden_dirs() -> dict[Path, set[Path]]:
    """Directories others cannot enter on the way to this Python and to pish's source, each with the
    children on those ways (to bind back over a tmpfs)."""
    wanted = {Path(os.path.realpath(sys.executable)), Path(sys.prefix), Path(sys.base_prefix),
              Path(pish_core.__file__).resolve().parent.parent}
    hidden: dict[Path, set[Path]] = {}
    for path in wanted:
        for parent in reversed(path.parents):
            if parent != Path("/") and not parent.stat().st_mode & 0o001:
                hidden.setdefault(parent, set()).add(parent / path.relative_to(parent).parts[0])
                break
    return hidden


def as_user(u: User, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
            module: str = "pish_core.cli.main") -> subprocess.CompletedProcess[str]:
    """Run ``pish ARGS...`` (``module``: pish-oci's) as ``u``, with only the environment a login would give
    (plus ``env``)."""
    lines = ["set -e"]
    for n, (top, children) in enumerate(_hidden_dirs().items()):
        for m, child in enumerate(sorted(children)):
            lines.append(f"t{n}_{m}=$(mktemp -d) && mount --bind '{child}' \"$t{n}_{m}\"")
        lines.append(f"mount -t tmpfs -o mode=755 tmpfs '{top}'")
        for m, child in enumerate(sorted(children)):
            lines.append(f"mkdir -p '{child}' && mount --move \"$t{n}_{m}\" '{child}' && rmdir \"$t{n}_{m}\"")
    user_env = {"HOME": str(u.home), "PATH": "/usr/local/bin:/usr/bin:/bin", "USER": u.name,
                "XDG_RUNTIME_DIR": str(u.runtime_dir), **(env or {})}
    lines.append(f'exec setpriv --reuid={u.uid} --regid={u.gid} --init-groups env -i "$@"')
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines), "as-user",
               *(f"{k}={v}" for k, v in user_env.items() if v), sys.executable, "-m", module, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def nothing_left(u: User, runtime_dir: Path | None = None) -> None:
    state = (runtime_dir or u.runtime_dir) / "pish" / "containers"
    data = u.home / ".local" / "share" / "pish" / "containers"
    assert list(state.iterdir()) == [], "container records left"
    assert list(data.iterdir()) == [], "writable layers left"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(u.home) not in mounts


def test_rootless_run(user):
    proc = as_user(user, "run", "--net", "none", str(user.image), "/bin/sh", "-c",
                   "id; ls /; cat /proc/self/uid_map; grep CapEff /proc/self/status")
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("uid=0(root) gid=0(root)")
    assert {"bin", "etc", "proc", "dev", "sys", "tmp"} <= set(lines)
    maps = [line.split() for line in lines if line.strip()[:1].isdigit() and len(line.split()) == 3]
    assert maps[0] == ["0", str(user.uid), "1"]  # the user is root inside...
    sub = [line.split(":") for line in Path("/etc/subuid").read_text().splitlines()
           if line.startswith(f"{user.name}:")]
    if sub and shutil.which("newuidmap") and shutil.which("newgidmap"):  # ...and its subordinate ids the rest
        assert maps[1:] == [["1", sub[0][1], sub[0][2]]]
    else:
        assert maps[1:] == []
    nothing_left(user)


def test_rootless_pish_oci_spec_rootless_then_run(user):
    """``pish-oci spec --rootless`` and ``pish-oci run`` as a user, as rootless podman uses runc: the user
    is root in the container's user namespace, state under $XDG_RUNTIME_DIR/pish-oci, nothing left."""
    from pish_core.image.unpack import unpack_tar

    bundle = user.home / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    unpack_tar(user.image, bundle / "rootfs")
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(bundle)], check=True)
    oci = "pish_core.oci.cli"
    assert as_user(user, "spec", "--rootless", "--bundle", str(bundle), module=oci).returncode == 0
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=["sh", "-c", "id -u; cat /proc/self/uid_map; exit 3"])
    (bundle / "config.json").write_text(json.dumps(config))
    proc = as_user(user, "run", "--bundle", str(bundle), "rl1", module=oci)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.split() == ["0", "0", str(user.uid), "1"]
    state = user.runtime_dir / "pish-oci"
    assert state.is_dir() and list((state / "containers").iterdir()) == []
    assert str(user.home) not in Path("/proc/self/mountinfo").read_text()


def test_rootless_without_subordinate_ids_maps_one_uid(user):
    for path in SUBID_FILES:
        path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                if not line.startswith(f"{user.name}:")))
    proc = as_user(user, "run", "--log-level", "warning", "--net", "none", str(user.image),
                   "/bin/sh", "-c", "cat /proc/self/uid_map; id -u")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", str(user.uid), "1", "0"]
    nothing_left(user)


def test_rootless_detached_exec_and_rm(user):
    started = as_user(user, "run", "-d", "--name", "bg", "--net", "none", str(user.image), "sleep", "60")
    assert started.returncode == 0, started.stderr
    try:
        proc = as_user(user, "exec", "bg", "/bin/sh", "-c", "id -u; grep Seccomp: /proc/self/status")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["0", "Seccomp:", "2"]
    finally:
        removed = as_user(user, "rm", "-f", "bg")
        assert removed.returncode == 0, removed.stderr
    nothing_left(user)


def test_rootless_rm_removes_files_a_container_user_owns(user):
    """Files a container's non-root user writes belong to one of the user's subordinate ids on the host,
    which the user cannot delete; ``rm`` removes them as root of the user's namespace (before, the layer
    stayed: the exited container's root filesystem is kept until rm)."""
    import time

    sub = [line for line in Path("/etc/subuid").read_text().splitlines() if line.startswith(f"{user.name}:")]
    if not (sub and shutil.which("newuidmap") and shutil.which("newgidmap")):
        pytest.skip("needs a subordinate id range for the user and newuidmap/newgidmap")
    script = "mkdir -p /data/deep && touch /data/deep/f && chown -R 1000:1000 /data && chmod -R 700 /data"
    started = as_user(user, "run", "-d", "--name", "owner", "--net", "none", str(user.image), "sh", "-c", script)
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    while "exited" not in as_user(user, "ps", "-a").stdout:
        assert time.monotonic() < deadline, as_user(user, "ps", "-a").stdout
        time.sleep(0.2)
    layers = list((user.home / ".local/share/pish/containers").glob("*/upper/data/deep"))
    assert layers and layers[0].stat().st_uid == int(sub[0].split(":")[1]) + 999  # a subordinate id's
    removed = as_user(user, "rm", "owner")
    assert removed.returncode == 0, removed.stderr
    nothing_left(user)


def test_rootless_start_again_sees_the_files_of_the_first_run(user):
    import time

    def exited(times: int) -> None:
        deadline = time.monotonic() + 30
        while as_user(user, "logs", "again").stdout.count("run") < times or "exited" not in as_user(
                user, "ps", "-a").stdout:
            assert time.monotonic() < deadline, as_user(user, "ps", "-a").stdout
            time.sleep(0.2)

    started = as_user(user, "run", "-d", "--name", "again", "--net", "none", str(user.image), "sh", "-c",
                      "echo run >> /runs; cat /runs")
    assert started.returncode == 0, started.stderr
    exited(1)
    again = as_user(user, "start", "again")
    assert again.returncode == 0, again.stderr
    exited(3)  # the second run printed "run" twice: its own line and the first run's
    assert as_user(user, "rm", "again").returncode == 0
    nothing_left(user)


def test_state_in_a_private_tmp_dir_without_xdg_runtime_dir(user):
    tmp_state = Path(f"/tmp/pish-{user.uid}")
    try:
        proc = as_user(user, "run", "--net", "none", str(user.image), "true", env={"XDG_RUNTIME_DIR": ""})
        assert proc.returncode == 0, proc.stderr
        st = tmp_state.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (user.uid, 0o700)
        assert list((tmp_state / "containers").iterdir()) == []
    finally:
        shutil.rmtree(tmp_state, ignore_errors=True)


@pytest.mark.parametrize(("flags", "message"), [
    (("--net", "bridge"), "pish: --net bridge needs root"),
    (("--memory", "64m"), "pish: limits without root need systemd's user manager on a cgroup v2 host"),
    (("--limits", "cgroupv1"), "pish: --limits cgroupv1 needs root; rootless pish has limits only through"),
    (("--userns", "0:100000:65536"), "pish: --userns 0:100000:65536: rootless pish always runs in its own"),
])
def test_what_needs_root_is_one_line(user, flags, message):
    proc = as_user(user, "run", "--log-level", "warning", *flags, str(user.image), "true")
    assert proc.returncode == 125
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr


def _user_manager_possible() -> str | None:
    from pish_drivers.limits import auto

    if not (auto.systemd_booted() and auto.unified()):
        return "needs systemd as PID 1 on a cgroup v2 host (the Debian 12 VM stage has one)"
    if not shutil.which("loginctl"):
        return "needs loginctl"
    return None


@pytest.mark.skipif(_user_manager_possible() is not None, reason=str(_user_manager_possible()))
def test_rootless_limits_through_the_users_systemd(user):
    """systemd delegates a cgroup subtree to each user's manager (user@UID.service): a rootless
    ``--memory 32m`` is a real limit there, seen inside at /sys/fs/cgroup and from the host."""
    import time

    subprocess.run(["loginctl", "enable-linger", user.name], check=True)
    runtime = Path(f"/run/user/{user.uid}")
    try:
        deadline = time.monotonic() + 180  # a safety net: user@.service starts slowly under emulation
        while not (runtime / "bus").exists():
            assert time.monotonic() < deadline, "systemd --user did not start"
            time.sleep(0.5)
        env = {"XDG_RUNTIME_DIR": str(runtime), "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus"}
        proc = as_user(user, "run", "--log-level", "warning", "--net", "none", "--memory", "32m", str(user.image),
                       "cat", "/sys/fs/cgroup/memory.max", env=env, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [str(32 << 20)]
        started = as_user(user, "run", "-d", "--name", "lim", "--net", "none", "--memory", "32m", str(user.image),
                          "sleep", "120", env=env, timeout=180)
        assert started.returncode == 0, started.stderr
        try:
            record = as_user(user, "inspect", "lim", env=env)
            pid = __import__("json").loads(record.stdout)[0]["pid"]
            path = Path(f"/proc/{pid}/cgroup").read_text().strip().split("::", 1)[1]
            assert f"user@{user.uid}.service" in path
            assert (Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max").read_text().strip() == str(32 << 20)
        finally:
            assert as_user(user, "rm", "-f", "lim", env=env).returncode == 0
        nothing_left(user, runtime)
    finally:
        subprocess.run(["loginctl", "disable-linger", user.name], check=False)
        subprocess.run(["loginctl", "terminate-user", user.name], check=False, capture_output=True)
        subprocess.run(["systemctl", "stop", f"user@{user.uid}.service"], check=False, capture_output=True)


def test_rootless_export_and_commit_record_the_containers_owners(user):
    """Rootless, the store's layers and a container's upper layer hold the user's ids (the user is root):
    export, commit and save must record the image's (0, here), as for --userns. They recorded the user's."""
    import tarfile
    import time

    started = as_user(user, "run", "-d", "--name", "out", "--net", "none", str(user.image), "sh", "-c",
                      "echo x > /new; touch /bin/changed")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    while "exited" not in as_user(user, "ps", "-a").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    tar_path = user.home / "out.tar"
    exported = as_user(user, "export", "-o", str(tar_path), "out")
    assert exported.returncode == 0, exported.stderr
    with tarfile.open(tar_path) as tar:
        owners = {m.name: (m.uid, m.gid) for m in tar.getmembers()}
    assert owners["new"] == (0, 0) and owners["bin/changed"] == (0, 0), owners
    committed = as_user(user, "commit", "out", "outimg:1")
    assert committed.returncode == 0, committed.stderr
    saved = user.home / "saved.tar"
    result = as_user(user, "image", "save", "-o", str(saved), "outimg:1")
    assert result.returncode == 0, result.stderr
    with tarfile.open(saved) as archive:
        for member in archive.getmembers():
            if member.name.endswith(".tar"):
                layer = archive.extractfile(member)
                assert layer is not None
                with tarfile.open(fileobj=layer) as tar:
                    assert {(m.uid, m.gid) for m in tar.getmembers()} == {(0, 0)}, member.name
    assert as_user(user, "rm", "out").returncode == 0
    assert as_user(user, "image", "rm", "outimg:1").returncode == 0
    nothing_left(user)
