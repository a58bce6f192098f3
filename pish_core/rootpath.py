"""A path inside a container's root, as the container will see it.

An absolute symlink in the image (``/data -> /etc``) means the container's /etc, never the host's, so a
path is resolved one component at a time, every step kept inside the root, as runc's
filepath-securejoin does. Used before pivot_root by everything that writes into the root: mounts, masked
paths, device nodes, the user lookup of ``pish exec``.
"""
from __future__ import annotations

import os
from pathlib import Path

_MAX_LINKS = 40  # like the kernel's ELOOP limit


def resolve_in_root(root: Path, path: str) -> Path:
    """The host path of container path ``path``, following symlinks as if ``root`` were ``/``."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_LINKS:
                raise OSError(40, "too many levels of symbolic links", path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)
