"""Where ``pish push`` sent an image: ``images/<id>/pushed.json`` in the image's record, one entry per
reference pushed, with the manifest digest the registry stored (``pish image inspect``'s repo digests)
and the blobs that repository got (a later push of them to another repository of the same registry
mounts them instead of sending them again). Read by ``pish image ls --json`` too: no HTTP client here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pish_core import paths
from pish_core.image import store
from pish_core.state import flocked, write_json_atomic

PUSHED = "pushed.json"


def _pushed_file(image_id: str) -> Path:
    return paths.image_record(image_id) / PUSHED


def pushed(image_id: str) -> list[dict[str, Any]]:
    """Where an image was pushed: ``{"reference", "repo_digest", "registry", "repository", "blobs"}``."""
    try:
        data = json.loads(_pushed_file(image_id).read_text())
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def record(image_id: str, entry: dict[str, Any]) -> None:
    with flocked(paths.refs_lock()):
        entries = [e for e in pushed(image_id) if e.get("reference") != entry["reference"]]
        write_json_atomic(_pushed_file(image_id), [*entries, entry])


def mount_sources(registry: str, repository: str) -> dict[str, str]:
    """Blob digest -> another repository of ``registry`` pish pushed it to."""
    out: dict[str, str] = {}
    for img in store.list_images():
        for entry in pushed(img.id):
            if entry.get("registry") == registry and entry.get("repository") != repository:
                for blob in entry.get("blobs") or []:
                    out.setdefault(str(blob), str(entry.get("repository")))
    return out
