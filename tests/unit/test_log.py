"""pish_core/log.py: the original pish's line format, levels, and a log line that never fails a run."""
from __future__ import annotations

import io
import sys

import pytest
from helpers.loglines import LogLines

from pish_core import log


def test_lines_levels_and_format(log_lines: LogLines) -> None:
    log.get("network").info("creating bridge %s", "pish0")
    log.get("storage").debug("nothing much")
    log.get("limits").warning("%d%% of %s", 50, "memory")
    assert log_lines.messages() == ["creating bridge pish0", "nothing much", "50% of memory"]
    assert log_lines.messages("warning") == ["50% of memory"]


def test_setup_sets_the_threshold_and_level_reads_it_back(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "_threshold", log._threshold)
    log.setup("WARNING")
    assert log.level() == "warning"
    log.get("network").info("not shown")
    log.get("network").error("shown")
    assert capsys.readouterr().err == "[ERROR] network: shown\n"


def test_a_bad_message_or_a_closed_stderr_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "_threshold", 0)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    log.get("t").info("%s and %s", "one")  # too few arguments: said anyway
    assert out.getvalue() == "[INFO] t: %s and %s ('one',)\n"
    out.close()
    log.get("t").info("to a closed stream")  # ValueError inside: swallowed
