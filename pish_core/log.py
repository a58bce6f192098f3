"""Logging in the original pish's style: ``[INFO] network: creating bridge pish0``.

Each driver logs through ``get(kind)``; one line per host change, so a user can follow the run.
"""
from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error")


def get(topic: str) -> logging.Logger:
    return logging.getLogger(f"pish.{topic}")


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        topic = record.name.removeprefix("pish.")
        return f"[{record.levelname}] {topic}: {record.getMessage()}"


def setup(level: str = "info") -> None:
    root = logging.getLogger("pish")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Format())
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())
