"""Registry credentials in a docker-compatible ``auth.json``: ``{"auths": {"HOST": {"auth": base64(user:pass)}}}``.

``pish login`` writes (mode 0600) where podman keeps its own: ``$XDG_RUNTIME_DIR/containers/auth.json``,
or ``/run/containers/<uid>/auth.json`` when that variable is unset (root's podman does the same), so
``podman login`` and ``pish login`` share credentials. ``PISH_AUTH_FILE`` overrides the path (tests do).
Reading falls back to docker's ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``); credential
helpers (``credsStore``) are not run.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from pish_core import log
from pish_core.errors import ImageError

_log = log.get("image")


def auth_file() -> Path:
    if override := os.environ.get("PISH_AUTH_FILE"):
        return Path(override)
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "containers" / "auth.json"
    return Path(f"/run/containers/{os.getuid()}/auth.json")


def _docker_config() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read credentials in {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _keys(host: str) -> list[str]:
    """The names an auths entry may have for ``host`` (docker writes Docker Hub as a URL)."""
    if host == "docker.io":
        return ["docker.io", "index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io"]
    return [host, f"https://{host}", f"http://{host}"]


def credentials(host: str) -> tuple[str, str] | None:
    """The user and password stored for ``host``, or None."""
    files = [auth_file()] if os.environ.get("PISH_AUTH_FILE") else [auth_file(), _docker_config()]
    for path in files:
        auths = _read(path).get("auths")
        if not isinstance(auths, dict):
            continue
        for key in _keys(host):
            entry = auths.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise ImageError(f"the credentials for {host} in {path} are not base64 of USER:PASSWORD") from None
                return user, password
    return None


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def store(host: str, user: str, password: str) -> Path:
    path = auth_file()
    data = _read(path)
    auths = data.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise ImageError(f"{path} is not an auth file (its 'auths' is no object): fix or remove it")
    auths[host] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write(path, data)
    _log.info("stored credentials for %s in %s", host, path)
    return path


def forget(host: str) -> bool:
    """Remove the credentials for ``host``; False if there were none."""
    path = auth_file()
    data = _read(path)
    auths = data.get("auths")
    if not isinstance(auths, dict) or not any(k in auths for k in _keys(host)):
        return False
    for key in _keys(host):
        auths.pop(key, None)
    _write(path, data)
    _log.info("removed credentials for %s from %s", host, path)
    return True
