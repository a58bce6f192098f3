"""Bad input to ``pish run``: one line on stderr starting with ``pish: ``, exit 125, and nothing created.

"Nothing created": no container record, lock or layer in this test's ``PISH_ROOT`` / ``PISH_LIB``, the
image store unchanged, and the host snapshot unchanged (no mount, cgroup, link, netns; our test bridge
``pisht2`` is named where an address would need it, so a check that came too late would create it).

Most cases run with the image already in the store, as after any earlier run (``warm_lib``), so they show
how each flag is checked; ``test_bad_input_on_a_cold_store`` shows that a first run is refused the same
way, before the image is imported.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_pish
from helpers.containers import tree
from helpers.leaks import RUN_BRIDGE, bridge_path, fail_if_bridge_exists

pytestmark = [pytest.mark.integration, pytest.mark.leak_check(bridge=RUN_BRIDGE)]

BRIDGE_PATH = bridge_path(RUN_BRIDGE)
ON_BRIDGE = ("--net", "bridge", "--network", RUN_BRIDGE)

CASES = {
    # names that could escape a directory or break a derived name
    "name-with-slash": (("--name", "a/b"), "invalid container name 'a/b'"),
    "name-dotdot": (("--name", ".."), "invalid container name '..'"),
    "name-dotdot-path": (("--name", "../x"), "invalid container name '../x'"),
    "name-dotdot-inside": (("--name", "a..b"), "invalid container name 'a..b'"),
    "name-with-space": (("--name", "a b"), "invalid container name 'a b'"),
    "name-65-chars": (("--name", "n" * 65), "invalid container name"),
    "name-empty": (("--name", ""), "invalid container name ''"),
    "name-leading-dash": (("--name", "-x"), "invalid container name '-x'"),
    # addresses
    "ip-without-prefix": ((*ON_BRIDGE, "--ip", "10.0.4.6"), "invalid --ip '10.0.4.6'"),
    "ip-out-of-range": ((*ON_BRIDGE, "--ip", "300.1.1.1/24"), "invalid --ip '300.1.1.1/24'"),
    "ip-bad-prefix": ((*ON_BRIDGE, "--ip", "10.0.4.6/33"), "invalid --ip '10.0.4.6/33'"),
    "ip-network-address": ((*ON_BRIDGE, "--ip", "10.0.4.0/24"), "invalid --ip '10.0.4.0/24'"),
    "ip-with-net-none": (("--net", "none", "--ip", "10.0.4.6/24"), "--ip needs --net bridge"),
    "network-name-with-slash": (("--net", "bridge", "--network", "a/b", "--ip", "10.0.4.6/24"),
                                "invalid network name 'a/b'"),
    "network-name-too-long": (("--net", "bridge", "--network", "x" * 16, "--ip", "10.0.4.6/24"),
                              "invalid network name"),
    # unknown drivers
    "unknown-net-driver": (("--net", "nope"), "unknown network driver 'nope'"),
    "unknown-storage-driver": (("--storage", "nope"), "unknown storage driver 'nope'"),
    "unknown-limits-driver": (("--limits", "nope"), "unknown limits driver 'nope'"),
    "unknown-isolation-driver": (("--isolation", "nope"), "unknown isolation driver 'nope'"),
    "driver-name-path": (("--storage", "../overlay"), "invalid storage driver name"),
    # limits and other values
    "memory-lots": (("--memory", "lots"), "invalid --memory 'lots'"),
    "memory-zero": (("--memory", "0"), "invalid --memory '0'"),
    "cpus-lots": (("--cpus", "lots"), "invalid --cpus 'lots'"),
    "cpus-more-than-the-host": (("--cpus", "1000"), "--cpus"),
    "cpuset-garbage": (("--cpuset-cpus", "zero"), "invalid --cpuset-cpus 'zero'"),
    "cpuset-missing-cpu": (("--cpuset-cpus", "0-999"), "--cpuset-cpus 0-999"),
    "pids-limit-negative": (("--pids-limit", "-1"), "invalid --pids-limit '-1'"),
    "limit-without-value": (("--limit", "memory.swappiness"), "invalid --limit 'memory.swappiness'"),
    "limit-unknown-key": (("--limit", "memory.bogus=1"), "memory.bogus"),
    "env-bad-key": (("-e", "1X=y"), "invalid environment variable '1X=y'"),
    "hostname-bad": (("--hostname", "a_b"), "invalid hostname 'a_b'"),
    "stop-timeout-bad": (("--stop-timeout", "soon"), "invalid --stop-timeout 'soon'"),
    "storage-opt-unknown": (("--storage-opt", "size=1g"), "size"),
    # click's own errors get the same one-line treatment
    "unknown-flag": (("--bogus",), "no such option"),
}


@pytest.fixture
def image(busybox_tar: Path) -> str:
    return str(busybox_tar)


@pytest.fixture(scope="module")
def warm_lib(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``PISH_LIB`` whose image store already holds the busybox image: one real run put it there."""
    top = tmp_path_factory.mktemp("warm")
    env = {"PISH_ROOT": str(top / "pish-root"), "PISH_LIB": str(top / "pish-lib")}
    run_pish("run", "--log-level", "warning", str(busybox_tar), "true", env=env, check=True)
    return top / "pish-lib"


def assert_refused(proc, expected: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 125, f"exit {proc.returncode}; stderr: {proc.stderr!r}"
    assert len(lines) == 1, f"wanted one line on stderr, got: {proc.stderr!r}"
    assert lines[0].startswith("pish: "), lines[0]
    assert expected.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def assert_nothing_created(pish_env, leaks) -> None:
    assert tree(pish_env.root) == []
    assert tree(pish_env.lib) == []
    assert not leaks.ids
    assert not BRIDGE_PATH.exists()
    leaks.assert_clean()


@pytest.mark.parametrize(("args", "expected"), CASES.values(), ids=CASES.keys())
def test_bad_input(pish_env, image, warm_lib, leaks, args, expected):
    fail_if_bridge_exists(RUN_BRIDGE)
    store = tree(warm_lib)
    proc = run_pish("run", *args, image, "true", env={"PISH_ROOT": str(pish_env.root), "PISH_LIB": str(warm_lib)})
    assert_refused(proc, expected)
    assert tree(warm_lib) == store
    assert_nothing_created(pish_env, leaks)


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(("--name", "a/b"), "invalid container name 'a/b'", id="name-with-slash"),
    pytest.param(("--memory", "lots"), "invalid --memory 'lots'", id="memory-lots"),
    pytest.param((*ON_BRIDGE, "--ip", "10.0.4.6"), "invalid --ip '10.0.4.6'", id="ip-without-prefix"),
    pytest.param(("--net", "nope"), "unknown network driver 'nope'", id="unknown-net-driver"),
    pytest.param(("--storage", "nope"), "unknown storage driver 'nope'", id="unknown-storage-driver"),
])
def test_bad_input_on_a_cold_store(pish, pish_env, image, leaks, args, expected):
    """A first run with a bad flag: refused before anything, the image included, is made."""
    proc = pish("run", *args, image, "true")
    assert_refused(proc, expected)
    assert_nothing_created(pish_env, leaks)


@pytest.mark.parametrize("missing", ["no-such-image.tar", "no-such-dir/"])
def test_missing_image(pish, pish_env, tmp_path, leaks, missing):
    path = str(tmp_path / missing)
    proc = pish("run", path, "true")
    assert_refused(proc, path)
    assert_nothing_created(pish_env, leaks)


def test_not_an_image(pish, pish_env, tmp_path, leaks):
    """Not an image at all: refused, and whatever was begun is undone."""
    junk = tmp_path / "junk.tar"
    junk.write_text("this is not a tar file\n")
    proc = pish("run", str(junk), "true")
    assert proc.returncode == 125
    assert "Traceback" not in proc.stderr
    assert any(line.startswith("pish: ") and str(junk) in line for line in proc.stderr.splitlines()), proc.stderr
    assert not (pish_env.root / "containers").exists() or list((pish_env.root / "containers").iterdir()) == []
    leaks.assert_clean()


def test_not_an_image_is_one_line(pish, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_text("this is not a tar file\n")
    proc = pish("run", "--log-level", "warning", str(junk), "true")
    assert proc.returncode == 125
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_no_command(pish_env, image, warm_lib, leaks):
    """The busybox image has no default command, so one must be given."""
    proc = run_pish("run", image, env={"PISH_ROOT": str(pish_env.root), "PISH_LIB": str(warm_lib)})
    assert_refused(proc, "no command")
    assert_nothing_created(pish_env, leaks)


def test_no_image(pish, pish_env, leaks):
    proc = pish("run")
    assert_refused(proc, "missing argument 'IMAGE'")
    assert_nothing_created(pish_env, leaks)


def test_name_in_use(pish, pish_env, image, leaks):
    cid = pish("run", "-d", "--name", "taken", image, "sleep", "100", check=True).stdout.strip()
    try:
        proc = pish("run", "--name", "taken", image, "true")
        assert_refused(proc, "the container name 'taken' is already in use")
        assert [p.name for p in (pish_env.root / "containers").iterdir()] == [cid]
    finally:
        pish("rm", "-f", cid, check=True)
    leaks.assert_clean()


def test_a_64_char_name_is_fine(pish, image, leaks):
    """The boundary: 64 characters is the longest name, and it works."""
    name = "n" * 64
    proc = pish("run", "--log-level", "warning", "--name", name, image, "hostname")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "n" * 63 + "\n"  # a hostname label holds 63 characters
    leaks.assert_clean()
