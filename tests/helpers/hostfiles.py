"""Host files a test may change and must give back: /etc/subuid and /etc/subgid (pish adds its range
there on the first ``--userns auto``; useradd adds the new user's)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))


@contextlib.contextmanager
def preserved(*paths: Path) -> Iterator[None]:
    """Put ``paths`` back exactly as they were (content, mode; absent stays absent) after the block."""
    saved = {p: (p.read_bytes(), p.stat().st_mode & 0o7777) if p.exists() else None for p in paths}
    try:
        yield
    finally:
        for path, kept in saved.items():
            if kept is None:
                path.unlink(missing_ok=True)
                continue
            data, mode = kept
            tmp = path.with_name(f".{path.name}.test-restore")
            tmp.write_bytes(data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
