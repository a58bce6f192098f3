"""Reading what ``pish image import`` is given: which kind of image it is, and its images' parts.

Four kinds, told apart by what they hold:

- an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``), as a directory or a tar;
- a ``docker save`` archive (``manifest.json``, a config and one tar per layer), as a tar or directory;
- a plain root filesystem tar (anything else that is a tar), a layer of its own;
- a plain root filesystem directory (see ``importer.import_path``).

This module only reads and checks the JSON; the store verifies digests while it unpacks. Every path an
archive names is looked up inside the archive (a tar member, or a file below the directory that is no
symlink leading out), never on the host.
"""
from __future__ import annotations

import contextlib
import json
import platform
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pish_core.errors import ImageError
from pish_core.image import digest
from pish_core.image.unpack import describe

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
MAX_JSON = 8 << 20  # a manifest or config bigger than this is not one
# Names an image archive (OCI layout or docker save) is made of; a tar with any other member is a rootfs.
_ARCHIVE_NAME = re.compile(
    r"(oci-layout|index\.json|manifest\.json|repositories|blobs(/[a-z0-9]+(/[0-9a-f]{64})?)?"
    r"|[0-9a-f]{64}(\.json|\.tar|\.tar\.gz|/|/VERSION|/json|/layer\.tar)?)"
)


@dataclass
class LayerRef:
    """One layer as the archive stores it."""

    path: str  # inside the archive
    media_type: str
    digest: str | None  # hex sha256 of the stored blob, when the format names one (OCI)
    size: int | None


@dataclass
class ImageEntry:
    """One image of an archive: its config (raw bytes, to be verified and kept as is) and its layers."""

    config: bytes
    config_digest: str | None  # hex, when the archive names it
    layers: list[LayerRef]
    names: list[str] = field(default_factory=list)  # full references or bare tags, as the archive says


class Source:
    """Files of an archive, by path inside it."""

    description = ""

    def open(self, path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def read_json(self, path: str, want_digest: str | None = None) -> tuple[bytes, Any]:
        with self.open(path) as f:
            raw = f.read(MAX_JSON + 1)
        if len(raw) > MAX_JSON:
            raise ImageError(f"{path} in {self.description} is too big to be image metadata")
        if want_digest and digest.sha256_bytes(raw) != want_digest:
            raise ImageError(f"{path} in {self.description} does not match its digest sha256:{want_digest}")
        try:
            return raw, json.loads(raw)
        except ValueError as exc:
            raise ImageError(f"{path} in {self.description} is not valid JSON: {exc}") from None


def _clean(path: str, where: str) -> str:
    """``path`` normalised, or refused if it is absolute or climbs out with ``..``."""
    norm = posixpath.normpath(path) if isinstance(path, str) and path else ".."
    if norm.startswith(("/", "../")) or norm == "..":
        raise ImageError(f"{where} names {path!r}, which leaves the archive")
    return norm


class DirSource(Source):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.description = str(root)

    def _path(self, path: str) -> Path:
        full = (self.root / _clean(path, self.description)).resolve()
        if full != self.root and self.root not in full.parents:
            raise ImageError(f"{path!r} in {self.description} leads out of it through a symlink")
        return full

    def exists(self, path: str) -> bool:
        return self._path(path).is_file()

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[IO[bytes]]:
        try:
            f = open(self._path(path), "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise ImageError(f"cannot read {path} in {self.description}: {exc.strerror}") from None
        with f:
            yield f


class TarSource(Source):
    def __init__(self, tar: tarfile.TarFile, description: str) -> None:
        self.tar = tar
        self.description = description
        self.members = {_clean(m.name, description): m for m in tar.getmembers()}

    def exists(self, path: str) -> bool:
        m = self.members.get(_clean(path, self.description))
        return m is not None and (m.isreg() or m.issym() or m.islnk())

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[IO[bytes]]:
        member = self.members.get(_clean(path, self.description))
        f = None
        if member is not None:
            with contextlib.suppress(KeyError, tarfile.TarError):
                f = self.tar.extractfile(member)  # follows a symlink to another member, as docker save uses
        if f is None:
            raise ImageError(f"{path} is missing from {self.description}")
        with f:
            yield f


# -- telling the kinds apart -------------------------------------------------------------------------


def kind_of(path: Path) -> str:
    """``oci``, ``docker``, ``rootfs-tar`` or ``rootfs-dir``."""
    if path.is_dir():
        if (path / "index.json").is_file() and (path / "oci-layout").exists():
            return "oci"
        if (path / "manifest.json").is_file() and not (path / "etc").exists():
            return "docker"
        return "rootfs-dir"
    names = tar_names(path)
    if names is None:
        return "rootfs-tar"
    return "oci" if "index.json" in names else "docker" if "manifest.json" in names else "rootfs-tar"


def tar_names(path: Path) -> set[str] | None:
    """The member names of an image archive; None as soon as a member shows it is a rootfs tar."""
    names: set[str] = set()
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                name = member.name.removeprefix("./").rstrip("/")
                if name in ("", "."):
                    continue
                if not _ARCHIVE_NAME.fullmatch(name):
                    return None
                names.add(name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageError(f"cannot read {path}: it is neither a directory nor a tar archive ({describe(exc)})") from None
    return names


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[Source]:
    if path.is_dir():
        yield DirSource(path)
        return
    try:
        tar = tarfile.open(path)  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"cannot read {path}: {describe(exc)}") from None
    with tar:
        yield TarSource(tar, str(path))


# -- OCI image layout --------------------------------------------------------------------------------


def _host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _blob(descriptor: Any, what: str) -> tuple[str, str]:
    if not isinstance(descriptor, dict):
        raise ImageError(f"invalid descriptor for {what}: {descriptor!r}")
    hexd = digest.parse(descriptor.get("digest"), what)
    return f"blobs/sha256/{hexd}", hexd


def oci_images(src: Source) -> list[ImageEntry]:
    _, index = src.read_json("index.json")
    return [_oci_image(src, d, names) for d, names in _manifests(src, index, "index.json", [], 0)]


def _manifests(src: Source, index: Any, what: str, names: list[str], depth: int) -> Iterator[tuple[Any, list[str]]]:
    """The image manifests an index names (descending into nested indexes: this host's platform)."""
    if depth > 4:
        raise ImageError(f"{src.description}: image indexes nested too deep")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise ImageError(f"{what} in {src.description} lists no images")
    for d in manifests:
        ann = d.get("annotations") if isinstance(d, dict) else None
        ann = ann if isinstance(ann, dict) else {}
        tags = names + ([ann[REF_NAME]] if isinstance(ann.get(REF_NAME), str) else [])
        if isinstance(d, dict) and d.get("mediaType") in INDEX_TYPES:
            path, hexd = _blob(d, f"image index in {what}")
            _, nested = src.read_json(path, hexd)
            listed = nested.get("manifests") if isinstance(nested, dict) else None
            platform_ok = [m for m in listed if _for_this_host(m)] if isinstance(listed, list) else []
            if not platform_ok:
                raise ImageError(f"{path} in {src.description} has no image for linux/{_host_arch()}")
            yield from _manifests(src, {"manifests": platform_ok[:1]}, path, tags, depth + 1)
        else:
            yield d, tags


def _for_this_host(descriptor: Any) -> bool:
    plat = descriptor.get("platform") if isinstance(descriptor, dict) else None
    if plat and not isinstance(plat, dict):
        return False
    return not plat or (plat.get("os") == "linux" and plat.get("architecture") == _host_arch())


def _oci_image(src: Source, descriptor: Any, names: list[str]) -> ImageEntry:
    path, hexd = _blob(descriptor, "image manifest")
    _, manifest = src.read_json(path, hexd)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise ImageError(f"manifest sha256:{hexd} in {src.description} has no layer list")
    cpath, chex = _blob(manifest.get("config"), f"config of manifest sha256:{hexd}")
    with src.open(cpath) as f:
        config = f.read(MAX_JSON + 1)
    layers = []
    for d in manifest["layers"]:
        lpath, lhex = _blob(d, f"layer of manifest sha256:{hexd}")
        media = str(d.get("mediaType", ""))
        if "nondistributable" in media or d.get("urls"):
            raise ImageError(f"layer sha256:{lhex} is a foreign layer (urls), which pish cannot fetch")
        layers.append(LayerRef(lpath, media, lhex, d.get("size") if isinstance(d.get("size"), int) else None))
    return ImageEntry(config, chex, layers, names)


# -- docker save -------------------------------------------------------------------------------------


def docker_images(src: Source) -> list[ImageEntry]:
    _, manifest = src.read_json("manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ImageError(f"manifest.json in {src.description} lists no images")
    out = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise ImageError(f"manifest.json in {src.description} has an entry without Config or Layers")
        config_path = entry["Config"]
        stem = posixpath.basename(config_path).removesuffix(".json")
        with src.open(config_path) as f:
            config = f.read(MAX_JSON + 1)
        layers = [LayerRef(str(p), "", None, None) for p in entry["Layers"]]
        tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
        out.append(ImageEntry(config, stem if digest.is_hex64(stem) else None, layers, tags))
    return out


# -- what the importer calls -------------------------------------------------------------------------


def images(src: Source, kind: str) -> list[ImageEntry]:
    return oci_images(src) if kind == "oci" else docker_images(src)


def parse_config(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_JSON:
        raise ImageError(f"the config of {what} is too big")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise ImageError(f"the config of {what} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ImageError(f"the config of {what} is not a JSON object")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ImageError(f"the config of {what} has no rootfs.diff_ids")
    if config.get("os", "linux") != "linux":
        raise ImageError(f"{what} is an image for {config.get('os')!r}, not linux")
    return config


def rootfs_config(diff_id: str) -> bytes:
    """The config of a plain rootfs tar: no command, one layer. Same content, same bytes, same image id."""
    config = {"architecture": _host_arch(), "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()

