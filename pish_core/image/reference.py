"""Image references as docker normalizes them: ``alpine`` is ``docker.io/library/alpine:latest``.

``[HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]``: the first component is a registry host when it holds a ``.``
or a ``:``, or is ``localhost``; otherwise the registry is Docker Hub, where a one-component path lives
under ``library/``. A reference with a digest is pulled by that digest (the tag, if any, only names it).

A short name (no registry) is looked for in the registries ``unqualified-search-registries`` lists in
``/etc/pish/registries.conf`` (``PISH_REGISTRIES_CONF``; the TOML key of podman's registries.conf), in
order; without that file, Docker Hub only, as docker does.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pish_core.errors import ImageError
from pish_core.image import digest

DOCKER_HUB = "docker.io"
#: Where Docker Hub's registry API answers (docker.io itself is only a name).
DOCKER_HUB_API = "registry-1.docker.io"
_HOST_RE = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?\.?)+(?::[0-9]{1,5})?|\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?")
_PATH_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Reference:
    registry: str  # docker.io, quay.io, 127.0.0.1:5000
    repository: str  # library/alpine
    tag: str | None  # None only with a digest
    digest: str | None  # hex sha256

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def wanted(self) -> str:
        """What to ask the manifest endpoint for: the digest if there is one, else the tag."""
        return f"sha256:{self.digest}" if self.digest else str(self.tag)

    @property
    def store_name(self) -> str | None:
        """The NAME:TAG the store keeps it under (Docker Hub's prefix dropped, as ``pish image ls`` shows)."""
        if self.tag is None:
            return None
        repo = self.repository
        if self.registry == DOCKER_HUB:
            return f"{repo.removeprefix('library/')}:{self.tag}"
        return f"{self.registry}/{repo}:{self.tag}"

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@sha256:{self.digest}"
        return out


def parse(text: str) -> Reference:
    """Parse ``text`` as docker does; a name docker would refuse is refused, in one line."""
    bad = ImageError(f"invalid image reference {text!r}: use [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]")
    rest, hexd = text.strip(), None
    if "@" in rest:
        rest, _, dig = rest.partition("@")
        hexd = digest.parse(dig, f"image reference {text!r}")
    registry, path = DOCKER_HUB, rest
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.fullmatch(first):
            raise bad
        registry, path = first, remainder
    tag: str | None = None
    if ":" in path:
        path, tag = path.rsplit(":", 1)
        if not _TAG_RE.fullmatch(tag):
            raise bad
    if not _PATH_RE.fullmatch(path) or len(path) > 255 or digest.is_hex64(path):
        raise bad
    if registry in (DOCKER_HUB, "index.docker.io", DOCKER_HUB_API):
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if tag is None and hexd is None:
        tag = "latest"
    return Reference(registry, path, tag, hexd)


def looks_like_reference(text: str) -> bool:
    try:
        parse(text)
    except ImageError:
        return False
    return True


REGISTRIES_CONF = "/etc/pish/registries.conf"


def search_registries() -> list[str]:
    path = Path(os.environ.get("PISH_REGISTRIES_CONF") or REGISTRIES_CONF)
    try:
        conf = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return [DOCKER_HUB]
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    listed = conf.get("unqualified-search-registries", [DOCKER_HUB])
    if not isinstance(listed, list) or not all(isinstance(r, str) and _HOST_RE.fullmatch(r) for r in listed):
        raise ImageError(f"{path}: unqualified-search-registries must be a list of registry hosts")
    return listed or [DOCKER_HUB]


def candidates(text: str) -> list[Reference]:
    """The references ``text`` may mean: itself when it names a registry, else one per search registry."""
    first, slash, _ = text.strip().partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return [parse(text)]
    parse(text)  # a bad name is refused as it is, not as REGISTRY/name
    return [parse(f"{registry}/{text.strip()}") for registry in search_registries()]
