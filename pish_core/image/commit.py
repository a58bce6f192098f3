"""``pish commit``: a container's changes as a new image of the store.

The new image is the container's image, layer for layer (the store's, shared, nothing copied), plus one
layer made from the container's upper directory by ``layertar`` (its whiteouts included, so what the
container deleted stays deleted). That layer goes into the store the way an imported one does: written
to a temporary tar, then unpacked and verified by ``importer.ensure_layer`` (so it is checked exactly as an
archive from elsewhere would be); its ``diff_id`` is the tar's digest. The config is the image's, with a
new ``created``, a history entry, the new ``diff_id`` appended and the ``--change`` instructions applied.

A container on the ``copy`` storage driver has no layer of changes: its whole root filesystem becomes the
one layer of the new image. A running container is paused while its files are read, as ``docker commit``
does.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pish_core import log, paths
from pish_core.errors import ImageError
from pish_core.image import containerfs, importer, layertar, oci
from pish_core.image.progress import Progress
from pish_core.image.store import Image, parse_name

_log = log.get("image")
_CHANGES = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER", "LABEL", "EXPOSE")


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _command(text: str) -> list[str]:
    """A Dockerfile command: a JSON array (exec form) or a shell line (``/bin/sh -c LINE``)."""
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ImageError(f"--change: {text!r} is no JSON array of strings")
        return value
    return ["/bin/sh", "-c", text]


def apply_changes(section: dict[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """The image config's ``config`` section with ``--change`` instructions (Dockerfile syntax) applied."""
    out = dict(section)
    for change in changes:
        word, _, rest = change.strip().partition(" ")
        word, rest = word.upper(), rest.strip()
        if word not in _CHANGES or not rest:
            raise ImageError(f"--change {change!r}: use one of {', '.join(_CHANGES)} followed by its value")
        if word in ("CMD", "ENTRYPOINT"):
            out["Cmd" if word == "CMD" else "Entrypoint"] = _command(rest)
        elif word in ("WORKDIR", "USER"):
            out["WorkingDir" if word == "WORKDIR" else "User"] = rest
        elif word == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            for port in rest.split():
                ports[port if "/" in port else f"{port}/tcp"] = {}
            out["ExposedPorts"] = ports
        else:
            pairs = _pairs(rest, change)
            if word == "ENV":
                env = [e for e in out.get("Env") or [] if e.split("=", 1)[0] not in pairs]
                out["Env"] = env + [f"{k}={v}" for k, v in pairs.items()]
            else:
                out["Labels"] = {**(out.get("Labels") or {}), **pairs}
    return out


def _pairs(text: str, change: str) -> dict[str, str]:
    try:
        words = shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        raise ImageError(f"--change {change!r}: {exc}") from None
    if len(words) == 2 and "=" not in words[0]:  # ENV KEY VALUE
        return {words[0]: words[1]}
    pairs = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise ImageError(f"--change {change!r}: use KEY=VALUE")
        pairs[key] = value
    return pairs


@contextlib.contextmanager
def _tmp_tar() -> Iterator[Path]:
    """A temporary file in the layer store (``pish gc`` removes it if pish is killed meanwhile)."""
    paths.layers_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = paths.layers_dir() / f".tmp-dir-{os.getpid()}.tar"
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def store_layer(root: Path, what: str, idmap: layertar.IdMap | None = None) -> str:
    """Make the layer of directory ``root`` and put it in the store (as an import would); its diff_id."""
    with _tmp_tar() as tmp:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
            made = layertar.write_layer(root, f, idmap)
        importer.ensure_layer(made.diff_id, made.digest, lambda: open(tmp, "rb"), what, Progress(0, what))  # noqa: SIM115
    return made.diff_id


def _history(config: dict[str, Any], base_layers: int) -> list[dict[str, Any]]:
    """The base image's history, with an entry for each of its layers it does not account for."""
    history = [h for h in config.get("history") or [] if isinstance(h, dict)]
    missing = base_layers - sum(1 for h in history if not h.get("empty_layer"))
    filler = [{"created": config.get("created") or "1970-01-01T00:00:00Z", "created_by": "pish import"}] * max(0, missing)
    return filler + history


def commit(ref: str, name: str | None = None, *, message: str = "", author: str = "",
           changes: Sequence[str] = (), pause: bool = True) -> Image:
    """Make the image of container ``ref``'s files; tag it ``name`` (NAME[:TAG]) if given."""
    names = [parse_name(name)] if name else []
    for d in (paths.layers_dir(), paths.images_dir()):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    section_changes = list(changes)
    apply_changes({}, section_changes)  # bad --change: refused before anything is read
    with containerfs.held(ref, pause=pause) as fs:
        what = f"the changes of container {fs.name}"
        if fs.flat:
            base_config: dict[str, Any] = dict(fs.image.config) if fs.image else {}
            diff_ids = [store_layer(fs.upper, f"the files of container {fs.name}", fs.idmap)]
            base_layers = 0
        else:
            base_config = dict(fs.image.config) if fs.image else {}
            diff_ids = list(fs.image.layers) if fs.image else \
                [store_layer(fs.lowers[0], f"directory {fs.lowers[0]}", fs.lower_idmap)]
            base_layers = len(diff_ids)
            diff_ids.append(store_layer(fs.upper, what, fs.idmap))
        if not base_config:
            base_config = json.loads(oci.rootfs_config(diff_ids[0]))
        created = now_rfc3339()
        config = {**base_config, "created": created}
        config["config"] = apply_changes(dict(base_config.get("config") or {}), section_changes)
        if author:
            config["author"] = author
        entry: dict[str, Any] = {"created": created, "created_by": f"pish commit {fs.name}"}
        if message:
            entry["comment"] = message
        if author:
            entry["author"] = author
        config["history"] = ([] if fs.flat else _history(base_config, base_layers)) + [entry]
        config["rootfs"] = {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]}
        raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        img = importer.commit(raw, config, diff_ids, names, f"commit of container {fs.name}")
    _log.info("committed container %s as image %s", fs.name, img.short_id)
    return img
