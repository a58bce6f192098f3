"""A progress bar for long imports: drawn on stderr when it is a terminal, silent in a pipe or a log."""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

#: Imports smaller than this finish before a bar would be worth drawing.
MIN_BYTES = 16 << 20
WIDTH = 30


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """``advance(n)`` as bytes go by; ``done()`` at the end. Draws at most 10 times a second."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, min_bytes: int = MIN_BYTES) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = max(total, 1)
        self.label = label
        self.seen = 0
        self.last = 0.0
        self.enabled = total >= min_bytes and _is_terminal(self.stream) and not os.environ.get("PISH_NO_PROGRESS")

    def set_label(self, label: str) -> None:
        self.label = label

    def advance(self, n: int) -> None:
        self.seen += n
        if self.enabled and time.monotonic() - self.last >= 0.1:
            self.draw()

    def draw(self) -> None:
        self.last = time.monotonic()
        frac = min(self.seen / self.total, 1.0)
        bar = "#" * int(frac * WIDTH)
        self.stream.write(f"\r{self.label} [{bar:<{WIDTH}}] {frac:4.0%} {human(self.seen)}/{human(self.total)}\x1b[K")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.seen = max(self.seen, self.total)
            self.draw()
            self.stream.write("\n")
            self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
