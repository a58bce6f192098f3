"""``pish push``: an image of the store into a registry, the writing half of the OCI distribution spec.

The blobs are made by ``save.make_image`` (each layer written again by ``layertar``, gzip'd; the config
with those layers' diff_ids), then, for each blob:

1. ``HEAD /v2/REPO/blobs/DIGEST``: the registry has it already: nothing is sent;
2. ``POST /v2/REPO/blobs/uploads/?mount=DIGEST&from=OTHER`` when pish pushed the same blob to another
   repository of the same registry before (recorded with the image): ``201`` means mounted, no bytes sent;
3. else ``POST /v2/REPO/blobs/uploads/``, then one ``PUT LOCATION?digest=DIGEST`` with the whole blob
   (monolithic), or, for a blob bigger than ``PISH_PUSH_CHUNK`` bytes (default 32 MiB), ``PATCH`` chunks
   with ``Content-Range`` and a closing ``PUT ...?digest=``;

then ``PUT /v2/REPO/manifests/TAG`` (an OCI manifest; ``--format docker`` for docker's schema 2). The
registry's ``Docker-Content-Digest`` must be the digest of the bytes sent; it is recorded with the image as
a repo digest (``REGISTRY/REPO@sha256:...``) that ``pish image inspect`` shows. Because layers are made again,
that digest is the one of what pish sent, not of what was once pulled (see docs/images.md).

Auth is the pull's (``registry.py``): a ``401`` is answered once with Basic credentials or a Bearer token
for the scope the challenge names (``repository:REPO:pull,push`` when it names none).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3

from pish_core import log
from pish_core.errors import ImageError
from pish_core.image import auth, store
from pish_core.image.pushrecord import mount_sources, record
from pish_core.image.reference import Reference, parse
from pish_core.image.registry import DOCKER_MANIFEST, OCI_MANIFEST, Registry, _error_detail, _http_error
from pish_core.image.save import MadeImage, make_image, workdir

_log = log.get("image")
DEFAULT_CHUNK = 32 << 20
_REDIRECTS = (301, 302, 303, 307, 308)


def chunk_size() -> int:
    try:
        return max(1, int(os.environ.get("PISH_PUSH_CHUNK", DEFAULT_CHUNK)))
    except ValueError:
        raise ImageError(f"PISH_PUSH_CHUNK={os.environ['PISH_PUSH_CHUNK']!r} is not a whole number") from None


@dataclass
class PushResult:
    reference: str  # REGISTRY/REPO:TAG
    digest: str  # hex sha256 of the manifest sent
    uploaded: int  # blobs whose bytes were sent
    mounted: int  # blobs mounted from another repository
    present: int  # blobs the registry had


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``: where credentials may go."""
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"https": 443, "http": 80}.get(parts.scheme)


class Uploader:
    """Requests of any method to one repository, answering one auth challenge as ``Registry.get`` does."""

    def __init__(self, registry: Registry) -> None:
        self.reg = registry

    def request(self, method: str, url: str, what: str, body: Any = None,
                headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200, 201, 202, 204)) -> urllib3.BaseHTTPResponse:
        url = urljoin(self.reg.base + "/", url)
        # The credentials go to the registry only, never to another host or scheme an upload's Location
        # names (a CDN, a bucket: its URL carries its own authorization), as docker's client.
        ours = _origin(url) == _origin(self.reg.base)
        sent = {"User-Agent": "pish", **(headers or {})}
        for attempt in (1, 2):
            if self.reg.authorization and ours:
                sent["Authorization"] = self.reg.authorization
            try:
                resp = self.reg.pool.request(method, url, body=body, headers=sent, preload_content=False,
                                             redirect=False)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise _http_error(self.reg.host, exc) from None
            if resp.status == 401 and attempt == 1 and ours and (body is None or isinstance(body, bytes)):
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.drain_conn()
                if "scope=" not in challenge and challenge.lower().startswith("bearer"):
                    challenge += f',scope="repository:{self.reg.repository}:pull,push"'
                self.reg.authorization = self.reg._authorize(challenge)
                continue
            break
        if resp.status not in ok:
            status, detail = resp.status, _error_detail(resp)
            resp.drain_conn()
            if status in (401, 403):
                how = "wrong username or password, or no push access" if self.reg.credentials else \
                    f"log in first with `pish login {self.reg.host}`"
                raise ImageError(f"registry {self.reg.host}: not authorized to push {what} ({how})")
            raise ImageError(f"registry {self.reg.host}: {what}: HTTP {status}{detail}")
        return resp

    def has_blob(self, hexd: str) -> bool:
        resp = self.request("HEAD", f"/v2/{self.reg.repository}/blobs/sha256:{hexd}", f"blob sha256:{hexd[:12]}",
                            ok=(200, 404, *_REDIRECTS))
        resp.drain_conn()
        return resp.status != 404  # a redirect (to a CDN, a storage bucket) is the registry serving it

    def mount(self, hexd: str, source: str) -> str | None:
        """Mount the blob from repository ``source``: None when done, else the upload URL it started."""
        resp = self.request("POST", f"/v2/{self.reg.repository}/blobs/uploads/?mount=sha256:{hexd}&from={source}",
                            f"a mount of blob sha256:{hexd[:12]}", body=b"", ok=(201, 202))
        resp.drain_conn()
        return None if resp.status == 201 else self._location(resp)

    def start(self, hexd: str) -> str:
        resp = self.request("POST", f"/v2/{self.reg.repository}/blobs/uploads/", f"an upload of blob sha256:{hexd[:12]}",
                            body=b"", ok=(202,))
        resp.drain_conn()
        return self._location(resp)

    def _location(self, resp: urllib3.BaseHTTPResponse) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise ImageError(f"registry {self.reg.host}: an upload answer without a Location")
        return urljoin(self.reg.base + "/", loc)

    def upload(self, location: str, path: Path, hexd: str, size: int, chunk: int) -> None:
        what = f"blob sha256:{hexd[:12]}"
        with open(path, "rb") as f:
            if size > chunk:
                start = 0
                while start < size:
                    data = f.read(chunk)
                    end = start + len(data) - 1
                    resp = self.request("PATCH", location, what, body=data, ok=(202,), headers={
                        "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end}",
                        "Content-Length": str(len(data))})
                    resp.drain_conn()
                    location, start = self._location(resp), end + 1
                body: Any = b""
                length = 0
            else:
                body, length = f, size
            sep = "&" if "?" in location else "?"
            resp = self.request("PUT", f"{location}{sep}digest=sha256:{hexd}", what, body=body, ok=(201,), headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(length)})
            resp.drain_conn()

    def put_manifest(self, tag: str, raw: bytes, media: str) -> str:
        resp = self.request("PUT", f"/v2/{self.reg.repository}/manifests/{tag}", "the manifest", body=raw,
                            ok=(200, 201), headers={"Content-Type": media})
        said = resp.headers.get("Docker-Content-Digest", "")
        resp.drain_conn()
        return said


# -- push --------------------------------------------------------------------------------------------


def push(source: str, destination: str | None = None, *, tls_verify: bool = True,
         docker_format: bool = False) -> PushResult:
    """Push the store's image ``source`` to ``destination`` ([HOST[:PORT]/]NAME[:TAG]; default: ``source``)."""
    ref: Reference = parse(destination or source)
    if ref.digest or not ref.tag:
        raise ImageError(f"push to a tag, not a digest: {destination or source}")
    registry = Registry(ref.api_host, ref.repository, tls_verify=tls_verify, credentials=auth.credentials(ref.registry))
    up = Uploader(registry)
    name = f"{ref.registry}/{ref.repository}:{ref.tag}"
    with store.reading():
        img = store.find(source) or (store.find(ref.store_name) if ref.store_name else None)
        if img is None:
            raise ImageError(f"no such image: {source} (see pish image ls; pish image tag gives it a registry name)")
        _log.info("pushing image %s to %s", img.short_id, name)
        with workdir() as work:
            made: MadeImage = make_image(img, work, compressed=True)
            blobs = [(layer.digest, layer.path, layer.size) for layer in made.layers]
            config_path = work / "config.json"
            config_path.write_bytes(made.config)
            blobs.append((made.config_digest, config_path, len(made.config)))
            sources = mount_sources(ref.registry, ref.repository)
            counts = {"uploaded": 0, "mounted": 0, "present": 0}
            chunk = chunk_size()
            for hexd, path, size in blobs:
                if up.has_blob(hexd):
                    counts["present"] += 1
                    _log.info("blob sha256:%s: already in %s", hexd[:12], ref.repository)
                    continue
                location = None
                if hexd in sources:
                    location = up.mount(hexd, sources[hexd])
                    if location is None:
                        counts["mounted"] += 1
                        _log.info("blob sha256:%s: mounted from %s", hexd[:12], sources[hexd])
                        continue
                _log.info("uploading blob sha256:%s (%d bytes%s)", hexd[:12], size,
                          f", in {-(-size // chunk)} chunks" if size > chunk else "")
                up.upload(location or up.start(hexd), path, hexd, size, chunk)
                counts["uploaded"] += 1
            manifest = made.manifest(docker=docker_format)
            from pish_core.image.digest import sha256_bytes

            mhex = sha256_bytes(manifest)
            said = up.put_manifest(str(ref.tag), manifest, DOCKER_MANIFEST if docker_format else OCI_MANIFEST)
            if said and said != f"sha256:{mhex}":
                raise ImageError(f"registry {registry.host}: it stored the manifest as {said}, pish sent sha256:{mhex}")
        record(img.id, {"reference": name, "registry": ref.registry, "repository": ref.repository,
                         "repo_digest": f"{ref.registry}/{ref.repository}@sha256:{mhex}",
                         "blobs": [b[0] for b in blobs]})
    _log.info("pushed %s: sha256:%s (%d blobs uploaded, %d mounted, %d already there)", name, mhex,
              counts["uploaded"], counts["mounted"], counts["present"])
    return PushResult(name, mhex, counts["uploaded"], counts["mounted"], counts["present"])
