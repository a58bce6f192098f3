"""Logging in the original pish's style: ``[INFO] network: creating bridge pish0``.

Each driver logs through ``get(topic)``: ``debug``, ``info``, ``warning`` and ``error`` take a message and
%-style arguments as the standard library's loggers do; one line per host change, so a user can follow the
run. The lines go to stderr (looked up at each line, so a redirected or captured stderr gets them);
``setup(level)`` says from which level on (warnings and errors until a command calls it).

Not the standard library's ``logging``: importing it cost 6-7 ms of every command here (it compiles its
format regexes and loads threading, traceback and string), for one format to one stream.
"""
from __future__ import annotations

import sys

LEVELS = ("debug", "info", "warning", "error")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}
_threshold = _RANK["warning"]  # until a command calls setup: pish used as a library says only what went wrong
_loggers: dict[str, Logger] = {}


class Logger:
    """The lines of one topic (``storage``, ``network``, ...)."""

    __slots__ = ("topic",)

    def __init__(self, topic: str) -> None:
        self.topic = topic

    def _emit(self, rank: int, msg: str, args: tuple[object, ...]) -> None:
        if rank < _threshold:
            return
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):  # a message that does not fit its arguments still says something
            text = f"{msg} {args!r}"
        try:
            sys.stderr.write(f"[{LEVELS[rank].upper()}] {self.topic}: {text}\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone (a hung-up terminal): a log line is not worth a failed run
            pass

    def debug(self, msg: str, *args: object) -> None:
        self._emit(0, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._emit(1, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._emit(2, msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._emit(3, msg, args)


def get(topic: str) -> Logger:
    logger = _loggers.get(topic)
    if logger is None:
        logger = _loggers[topic] = Logger(topic)
    return logger


def setup(level: str = "info") -> None:
    """Print the lines of ``level`` (one of ``LEVELS``) and above."""
    global _threshold
    _threshold = _RANK[level.lower()]


def level() -> str:
    """The level set by ``setup`` (a supervisor hands it on to the process it execs)."""
    return LEVELS[_threshold]
