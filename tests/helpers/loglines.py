"""pish's log lines as a test sees them (the ``log_lines`` fixture of conftest.py)."""
from __future__ import annotations

import pytest


class LogLines:
    """pish's log lines written to stderr during a test (``log_lines``), every level shown."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._seen: list[str] = []

    def clear(self) -> None:
        self._capsys.readouterr()
        self._seen.clear()

    def messages(self, level: str = "debug") -> list[str]:
        """The messages (without ``[LEVEL] topic: ``) of ``level`` and above, oldest first."""
        from pish_core import log

        self._seen += self._capsys.readouterr().err.splitlines()
        wanted = {name.upper() for name in log.LEVELS[log.LEVELS.index(level):]}
        return [line.split(": ", 1)[1] for line in self._seen
                if line.startswith("[") and line[1:].split("]", 1)[0] in wanted and ": " in line]
