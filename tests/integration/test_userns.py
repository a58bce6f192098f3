"""``--userns``: container root is an unprivileged uid on the host.

With ``--userns auto`` pish takes (and, the first time, adds) its own range in /etc/subuid and
/etc/subgid; inside, ``id`` says 0; on the host the container's process runs as the range's first uid,
and a file it creates in a ``-v`` volume belongs to that uid. The image is seen through id-mapped mounts.
/etc/subuid and /etc/subgid are restored after each test.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_pish
from helpers.hostfiles import SUBID_FILES, preserved
from helpers.hostsnap import snapshot

from pish_core import userns

pytestmark = pytest.mark.integration
QUIET = ("--log-level", "warning")


@pytest.fixture
def subids() -> Iterator[None]:
    with preserved(*SUBID_FILES):
        yield


@pytest.fixture
def world(busybox_tar: Path, subids: None) -> Iterator[dict[str, Path]]:
    """State, data and a volume under a directory the mapped root can walk through (the tests' tmp_path
    is 0700, as /var/lib/pish is not); the image copied there too. Checked empty and removed after."""
    top = Path(tempfile.mkdtemp(prefix="userns-test-"))
    top.chmod(0o711)
    dirs = {"root": top / "run", "lib": top / "lib", "vol": top / "vol", "top": top}
    for d in ("root", "lib", "vol"):
        dirs[d].mkdir()
        dirs[d].chmod(0o1777 if d == "vol" else 0o711)
    dirs["img"] = top / "busybox.tar"
    shutil.copy(busybox_tar, dirs["img"])
    try:
        yield dirs
        # The host-wide snapshot (no_leaks) would also see other runs' mounts; ours are all under `top`.
        after = snapshot(run_root=dirs["root"], lib_root=dirs["lib"])
        assert [m for m in after.mounts if m.startswith(str(top))] == []
        assert after.containers == () and after.layers == ()
    finally:
        shutil.rmtree(top)


def pish(world: dict[str, Path], *args: str, check: bool | int | None = None):
    return run_pish(*args, env={"PISH_ROOT": str(world["root"]), "PISH_LIB": str(world["lib"])}, check=check)


def test_auto_maps_root_to_pish_s_range(world):
    proc = pish(world, "run", *QUIET, "--net", "none", "--userns", "auto", "-v", f"{world['vol']}:/vol",
                str(world["img"]), "/bin/sh", "-c", "id -u; id -g; touch /vol/made-inside; ls -n / | grep ' bin$'",
                check=True)
    start = next(r.start for r in userns.read_ranges(Path("/etc/subuid")) if r.owner == "pish")
    assert next(r.start for r in userns.read_ranges(Path("/etc/subgid")) if r.owner == "pish") == start
    uid, gid, bin_line = proc.stdout.splitlines()
    assert (uid, gid) == ("0", "0")
    assert bin_line.split()[2:4] == ["0", "0"]  # the image's files are root's, seen through the id-mapped view
    made = world["vol"] / "made-inside"
    assert (made.stat().st_uid, made.stat().st_gid) == (start, start)


def test_host_sees_the_mapped_uid_and_inspect_shows_the_map(world):
    pish(world, "run", *QUIET, "-d", "--name", "mapped", "--net", "none", "--userns", "auto", str(world["img"]),
         "sleep", "60", check=True)
    try:
        record = json.loads(pish(world, "inspect", "mapped", check=True).stdout)[0]
        maps = record["spec"]["userns"]
        start = maps["uid_mappings"][0]["host_id"]
        assert maps == {"mode": "auto", "uid_mappings": [{"container_id": 0, "host_id": start, "size": 65536}],
                        "gid_mappings": [{"container_id": 0, "host_id": start, "size": 65536}]}
        status = Path(f"/proc/{record['pid']}/status").read_text()
        assert f"Uid:\t{start}\t{start}\t{start}\t{start}" in status
        inside = pish(world, "exec", "mapped", "/bin/sh", "-c", "id -u; cat /proc/self/uid_map", check=True)
        assert inside.stdout.split() == ["0", "0", str(start), "65536"]
    finally:
        pish(world, "rm", "-f", "mapped", check=True)


def test_explicit_mapping(world):
    proc = pish(world, "run", *QUIET, "--net", "none", "--userns", "0:300000:65536", "-v", f"{world['vol']}:/vol",
                str(world["img"]), "/bin/sh", "-c", "touch /vol/f; cat /proc/self/uid_map", check=True)
    assert proc.stdout.split() == ["0", "300000", "65536"]
    assert (world["vol"] / "f").stat().st_uid == 300000


@pytest.mark.parametrize(("value", "message"), [
    ("0:1", "invalid --userns '0:1': use auto, host or CONTAINERID:HOSTID:COUNT"),
    ("root:100000:65536", "invalid --userns"),
    ("0:100000:0", "invalid --userns '0:100000:0': the count must be at least 1"),
    ("1000:100000:10", "invalid --userns '1000:100000:10': the range must start at the container's root"),
])
def test_malformed_mapping_is_one_line(world, value, message):
    proc = pish(world, "run", *QUIET, "--userns", value, str(world["img"]), "true")
    assert proc.returncode == 125
    assert proc.stderr.startswith(f"pish: {message}") and proc.stderr.count("\n") == 1, proc.stderr


def test_a_range_overlapping_another_user_s_is_refused(world):
    for path in SUBID_FILES:  # (any range pish already has is put back after the test)
        kept = [line for line in path.read_text().splitlines(keepends=True) if not line.startswith("pish:")]
        path.write_text("".join(kept) + "pish-test-someone:400000:65536\n")
    proc = pish(world, "run", *QUIET, "--userns", "0:450000:65536", str(world["img"]), "true")
    assert proc.returncode == 125
    assert proc.stderr == ("pish: --userns 0:450000:65536: host ids 450000-515535 overlap the range of user "
                           "pish-test-someone in /etc/subuid (400000-465535)\n")
    for path in SUBID_FILES:  # pish's own range overlapping someone else's: refused too
        path.write_text(path.read_text() + "pish:460000:65536\n")
    proc = pish(world, "run", *QUIET, "--userns", "auto", str(world["img"]), "true")
    assert proc.returncode == 125 and "overlap the range of user pish-test-someone" in proc.stderr
    assert proc.stderr.count("\n") == 1
