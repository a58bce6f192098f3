"""The eBPF device filter against the real kernel: a process in a cgroup v2 with the filter attached.

No container: a test cgroup ``<cgroup2 root>/pish-test-<random>``, a Python child that waits on a pipe
until the test has written its pid to ``cgroup.procs`` (as pish does before it releases a container),
then tries to open and make device nodes and reports what the kernel said. The child is root with every
capability, so whatever fails, fails only because of the filter.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pish_core import native
from pish_core.errors import DriverError, SpecError
from pish_core.security import devices
from pish_drivers.limits import bpfdevices
from pish_drivers.limits.cgroupv2 import default_root

pytestmark = [
    pytest.mark.integration,
    pytest.mark.hostkind,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(default_root() is None, reason="no cgroup2 hierarchy mounted"),
]

#: The child: wait for "go", then do each step and print {step: "ok" or the errno's name} as JSON.
CHILD = textwrap.dedent("""
    import errno, json, os, stat, sys
    steps, out = json.loads(sys.argv[1]), {}
    sys.stdin.readline()
    for name, (what, path, *dev) in steps.items():
        try:
            if what == "write":
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"x")
                os.close(fd)
            elif what == "read":
                os.close(os.open(path, os.O_RDONLY))
            elif what == "mknod":
                kind = stat.S_IFBLK if dev[0] == "b" else stat.S_IFCHR
                os.mknod(path, 0o600 | kind, os.makedev(dev[1], dev[2]))
            out[name] = "ok"
        except OSError as exc:
            out[name] = errno.errorcode[exc.errno]
    print(json.dumps(out))
""")


def root_disk() -> tuple[int, int]:
    """major:minor of the block device holding /, or of the first block device if / is on none."""
    dev = os.stat("/").st_dev
    if Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").exists():
        return os.major(dev), os.minor(dev)
    return next(iter(block_devices()), (8, 0))


def block_devices() -> list[tuple[int, int]]:
    return [(int(major), int(minor)) for major, minor in
            (entry.read_text().split(":") for entry in sorted(Path("/sys/block").glob("*/dev")))]


def openable_disk(nodes: Path) -> tuple[int, int]:
    """A block device this test (root, outside any filter) can open: the root disk if it can. Some hosts
    refuse even root an open of their root disk (this one does, with EPERM, for /dev/vda), and an
    allowed open of a device that is not there fails too (ENXIO); neither would show the filter's work."""
    for major, minor in [root_disk(), *block_devices()]:
        probe = nodes / "probe"
        os.mknod(probe, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
        try:
            os.close(os.open(probe, os.O_RDONLY))
            return major, minor
        except OSError:
            continue
        finally:
            probe.unlink()
    pytest.skip("this host has no block device that root can open")


def dev_node(major: int, minor: int) -> Path | None:
    """The host's own /dev node of a block device, from its uevent (DEVNAME=loop0)."""
    uevent = Path(f"/sys/dev/block/{major}:{minor}/uevent").read_text().splitlines()
    name = next((line.partition("=")[2] for line in uevent if line.startswith("DEVNAME=")), None)
    node = Path("/dev") / name if name else None
    return node if node is not None and node.is_block_device() else None


def run_in(cgroup: Path, steps: dict[str, list[object]]) -> dict[str, str]:
    """Start the child, put it in ``cgroup`` while it waits, let it go; what each step gave."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(steps)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        (cgroup / "cgroup.procs").write_text(str(child.pid))
        out, _ = child.communicate("go\n", timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    result: dict[str, str] = json.loads(out)
    return result


def prog_ids(cgroup: Path, effective: bool = False) -> list[int]:
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = native.BPF_F_QUERY_EFFECTIVE if effective else 0
        return native.bpf_prog_query(fd, native.BPF_CGROUP_DEVICE, flags)
    finally:
        os.close(fd)


def freed(prog_id: int) -> bool:
    try:
        os.close(native.bpf_prog_get_fd_by_id(prog_id))
    except FileNotFoundError:
        return True
    return False


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh cgroup under the cgroup2 root; removed afterwards, and every program attached to it (or
    below it) must then be freed by the kernel."""
    root = default_root()
    assert root is not None
    path = root / f"pish-test-{secrets.token_hex(4)}"
    path.mkdir()
    attached: list[int] = []
    try:
        yield path
    finally:
        for top, _, _ in os.walk(path, topdown=False):
            attached += prog_ids(Path(top))
            os.rmdir(top)
    deadline = time.monotonic() + 10  # the kernel frees a dead cgroup's programs from a work queue
    while not all(map(freed, attached)):
        assert time.monotonic() < deadline, f"BPF programs {attached} outlived their cgroup"
        time.sleep(0.02)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Path]:
    """A directory for device nodes, emptied afterwards (no stray node for the host's disk is left)."""
    path = tmp_path / "nodes"
    path.mkdir()
    yield path
    for node in path.iterdir():
        node.unlink()


def steps_for(nodes: Path) -> dict[str, list[object]]:
    """The same tries for every test. ``node of a disk`` is a block node made by the test outside the
    cgroup, as if it had been left in the container's rootfs; ``c 1:11`` is /dev/kmsg."""
    root_major, root_minor = root_disk()
    major, minor = openable_disk(nodes)
    disk, kmsg = nodes / "disk", nodes / "kmsg"
    for node, kind, numbers in [(disk, stat.S_IFBLK, (major, minor)), (kmsg, stat.S_IFCHR, (1, 11))]:
        if not node.exists():
            os.mknod(node, 0o600 | kind, os.makedev(*numbers))
    steps: dict[str, list[object]] = {
        "write /dev/null": ["write", "/dev/null"],
        "mknod c 1:3": ["mknod", str(nodes / "null"), "c", 1, 3],
        "write the new c 1:3": ["write", str(nodes / "null")],
        "mknod b of the root disk": ["mknod", str(nodes / "root"), "b", root_major, root_minor],
        "mknod b 7:0": ["mknod", str(nodes / "loop0"), "b", 7, 0],
        "open a node of a disk": ["read", str(disk)],
        "open c 1:11": ["read", str(kmsg)],
    }
    host_node = dev_node(major, minor)
    if host_node is not None:
        steps[f"open {host_node}"] = ["read", str(host_node)]
    return steps


def denied(steps: dict[str, list[object]]) -> dict[str, str]:
    """What the default allowlist gives: /dev/null and the new c 1:3 work, the rest is EPERM."""
    ok = {"write /dev/null", "mknod c 1:3", "write the new c 1:3"}
    return {name: "ok" if name in ok else "EPERM" for name in steps}


def test_available_here() -> None:
    assert bpfdevices.available() is None


def test_default_allowlist_is_enforced(cgroup: Path, nodes: Path) -> None:
    bpfdevices.attach(cgroup, devices.ALLOWLIST)
    assert len(prog_ids(cgroup)) == 1
    steps = steps_for(nodes)
    result = run_in(cgroup, steps)
    assert result == denied(steps)


def test_allow_all(cgroup: Path, nodes: Path) -> None:
    bpfdevices.attach(cgroup, [devices.ALLOW_ALL])
    steps = steps_for(nodes)
    assert run_in(cgroup, steps) == {name: "ok" for name in steps}


def test_without_a_filter_nothing_is_refused(cgroup: Path, nodes: Path) -> None:
    """The control: the same child in the same kind of cgroup, without a filter, may do everything, so
    the EPERMs above are the filter's."""
    steps = steps_for(nodes)
    assert run_in(cgroup, steps) == {name: "ok" for name in steps}


def test_a_cgroup_below_cannot_widen_it(cgroup: Path, nodes: Path) -> None:
    """With BPF_F_ALLOW_MULTI a child cgroup's programs run after its parent's, and every one must say
    yes: a container that manages its own cgroups cannot allow itself more devices."""
    bpfdevices.attach(cgroup, devices.ALLOWLIST)
    below = cgroup / "below"
    below.mkdir()
    bpfdevices.attach(below, [devices.ALLOW_ALL])
    assert len(prog_ids(below, effective=True)) == 2
    steps = steps_for(nodes)
    assert run_in(below, steps) == denied(steps)


def test_detach(cgroup: Path, nodes: Path) -> None:
    bpfdevices.attach(cgroup, devices.ALLOWLIST)
    [prog_id] = prog_ids(cgroup)
    prog = native.bpf_prog_get_fd_by_id(prog_id)
    target = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        native.bpf_prog_detach(prog, target, native.BPF_CGROUP_DEVICE)
    finally:
        os.close(target)
        os.close(prog)
    assert prog_ids(cgroup) == []
    steps = steps_for(nodes)
    assert run_in(cgroup, steps) == {name: "ok" for name in steps}
    deadline = time.monotonic() + 10
    while not freed(prog_id):  # detached and its last fd closed: gone
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_attach_to_a_plain_directory_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(DriverError) as caught:
        bpfdevices.attach(tmp_path, devices.ALLOWLIST)
    assert "cannot attach the device filter" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_bad_rule_is_refused_before_the_kernel_is_asked(cgroup: Path) -> None:
    with pytest.raises(SpecError):
        bpfdevices.attach(cgroup, ["c 1:3 rwm", "c 1:3 rwx"])
    assert prog_ids(cgroup) == []


def test_a_program_the_verifier_refuses_says_why() -> None:
    bad = [bpfdevices.Insn(bpfdevices.BPF_JMP | bpfdevices.BPF_EXIT)]  # returns r0, never set
    with pytest.raises(OSError) as caught:
        bpfdevices.load(bad)
    assert caught.value.errno == errno.EACCES
    assert "R0 !read_ok" in str(caught.value)
