"""Units of issue 14 with no container: --restart parsing and docker's back-off, events' time and filter
parsing, detach keys, and supervisor_alive only looking at a lock (no root needed)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pish_core import paths, state
from pish_core.attach import parse_detach_keys
from pish_core.cli.events import matches, parse_filters, parse_time
from pish_core.errors import SpecError
from pish_core.restartpolicy import Backoff, RestartPolicy, parse


@pytest.mark.parametrize(("text", "want"), [
    (None, RestartPolicy("no")), ("no", RestartPolicy("no")), ("always", RestartPolicy("always")),
    ("unless-stopped", RestartPolicy("unless-stopped")), ("on-failure", RestartPolicy("on-failure", 0)),
    ("on-failure:5", RestartPolicy("on-failure", 5)),
])
def test_restart_values(text, want):
    assert parse(text) == want


@pytest.mark.parametrize("text", ["sometimes", "on-failure:-1", "on-failure:", "on-failure:1x", "always:2",
                                  "on-failure:99999999999", "ON-FAILURE"])
def test_bad_restart_values(text):
    with pytest.raises(SpecError, match="invalid --restart"):
        parse(text)


def test_restart_with_rm_conflicts():
    with pytest.raises(SpecError, match="conflict"):
        parse("always", auto_remove=True)
    assert parse("no", auto_remove=True).name == "no"


def test_should_restart():
    on_failure = RestartPolicy("on-failure", 2)
    assert on_failure.should_restart(1, 0, False) and on_failure.should_restart(1, 1, False)
    assert not on_failure.should_restart(1, 2, False)  # 1 + 2 restarts: done
    assert not on_failure.should_restart(0, 0, False)
    assert RestartPolicy("on-failure").should_restart(1, 1000, False)  # 0: no limit
    for name in ("always", "unless-stopped"):
        assert RestartPolicy(name).should_restart(0, 1000, False)
        assert not RestartPolicy(name).should_restart(1, 0, True)  # the user stopped it
    assert not RestartPolicy("no").should_restart(1, 0, False)


def test_back_off_doubles_caps_and_resets():
    b = Backoff()
    assert [b.next(0.1) for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert max(b.next(0.1) for _ in range(20)) == 60.0
    assert b.next(10.0) == 0.1  # a run of 10 s or more starts the back-off again


def test_event_times():
    now = 1_800_000_000.0
    assert parse_time("1700000000.5", "--since", now) == 1_700_000_000_500_000_000
    assert parse_time("10m", "--since", now) == int((now - 600) * 1e9)
    assert parse_time("1h30m", "--since", now) == int((now - 5400) * 1e9)
    assert parse_time("2026-12-02T06:00:00Z", "--since", now) == 1796191200 * 10**9
    for bad in ("yesterday", "10x", ""):
        with pytest.raises(SpecError, match="invalid --since"):
            parse_time(bad, "--since", now)


def test_event_times_out_of_range_are_one_line():
    """A date the platform cannot place (year 1 in local time) was a ValueError traceback, a number past a
    float's range an OverflowError one."""
    for bad in ("0001-01-01", "0001-01-01T00:00:00", "9" * 400, "9" * 400 + "h"):  # the last two: infinity
        with pytest.raises(SpecError, match="invalid --until"):
            parse_time(bad, "--until", 1_800_000_000.0)


def test_event_filters():
    event = {"Type": "container", "Action": "die", "Actor": {"ID": "ab" * 32, "Attributes": {"name": "web"}}}
    assert matches(event, parse_filters(("container=web",)))
    assert matches(event, parse_filters(("container=abab", "event=start", "event=die")))
    assert not matches(event, parse_filters(("container=web", "event=start")))
    assert not matches(event, parse_filters(("type=network",)))
    for bad in ("colour=red", "container", "event="):
        with pytest.raises(SpecError, match="invalid --filter"):
            parse_filters((bad,))


def test_detach_keys():
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-@,x") == b"\x00x"
    for bad in ("ctrl-1", "ctrl-pq", "", "ab"):
        with pytest.raises(SpecError, match="invalid --detach-keys"):
            parse_detach_keys(bad)


def test_supervisor_alive_does_not_make_a_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A --rm supervisor removing its directory raced ``pish stop``'s polling: the poll made the lock file
    again between the removal's unlinks and its rmdir, and the directory stayed for good."""
    monkeypatch.setenv("PISH_ROOT", str(tmp_path))
    cid = "c" * 64
    paths.container_dir(cid).mkdir(parents=True)
    assert state.supervisor_alive(cid) is False
    assert os.listdir(paths.container_dir(cid)) == []
    fd = state.try_lock(cid)  # a live supervisor holds it
    assert fd is not None
    try:
        assert state.supervisor_alive(cid) is True
    finally:
        os.close(fd)
    assert state.supervisor_alive(cid) is False
