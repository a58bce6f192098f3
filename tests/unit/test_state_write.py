"""``state.write_json_atomic``: one line through json's C encoder, replaced whole, nothing left on failure."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from pish_core.state import write_json_atomic


def test_written_whole_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    data = {"id": "x" * 64, "spec": {"process": {"args": ["sh", "-c", "echo hi"]}}, "resources": [{"k": 1}]}
    write_json_atomic(path, data)
    text = path.read_text()
    assert "\n" not in text and json.loads(text) == data
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"status": "running"})

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        write_json_atomic(path, {"status": "stopped"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "running"}
    assert os.listdir(tmp_path) == ["state.json"]
