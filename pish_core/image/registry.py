"""The OCI distribution protocol, the reading half: manifests, indexes and blobs from a registry.

HTTP goes through urllib3 (see docs/images.md, "Registries", for why): one pool per registry, TLS verified
against the system CAs plus ``certs.d/HOST/*.crt`` (docker's layout, ``/etc/pish/certs.d`` or
``PISH_CERTS_D``), redirects bounded, a read that stalls for ``Limits.stall`` seconds fails. A ``401`` is
answered once: with a Bearer token fetched from the realm the ``WWW-Authenticate`` challenge names
(anonymous, or with the stored credentials, for the scope asked), or with Basic credentials.

Every body is read through ``Body``, which counts while bytes arrive and fails as soon as a limit is
passed, so neither a huge manifest nor an endless blob is ever held or written whole.
"""
from __future__ import annotations

import base64
import json
import os
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlencode

import urllib3
from urllib3.util import Retry, Timeout

from pish_core import log
from pish_core.errors import ImageError
from pish_core.image import digest

_log = log.get("image")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = f"{OCI_INDEX}, {DOCKER_LIST}, {OCI_MANIFEST}, {DOCKER_MANIFEST}"
CERTS_D = "/etc/pish/certs.d"
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ImageError(f"{name}={os.environ[name]!r} is not a whole number") from None


@dataclass(frozen=True)
class Limits:
    """What a registry may send; each checked while the bytes arrive. ``PISH_PULL_*`` overrides each."""

    manifest: int = 4 << 20  # a manifest or index
    config: int = 8 << 20  # an image config
    layer: int = 8 << 30  # one layer, as sent (compressed)
    layer_uncompressed: int = 32 << 30  # one layer, uncompressed: the bound on a decompression bomb
    image: int = 64 << 30  # all the layers of one image, as sent
    layers: int = 256  # layers in one image
    redirects: int = 5
    stall: float = 30.0  # seconds without a byte
    connect: float = 15.0
    parallel: int = 3  # layers downloaded at once

    @classmethod
    def from_env(cls) -> Limits:
        d = cls()
        return cls(
            manifest=_env_int("PISH_PULL_MAX_MANIFEST", d.manifest),
            config=_env_int("PISH_PULL_MAX_CONFIG", d.config),
            layer=_env_int("PISH_PULL_MAX_LAYER", d.layer),
            layer_uncompressed=_env_int("PISH_PULL_MAX_LAYER_UNCOMPRESSED", d.layer_uncompressed),
            image=_env_int("PISH_PULL_MAX_IMAGE", d.image),
            layers=_env_int("PISH_PULL_MAX_LAYERS", d.layers),
            redirects=_env_int("PISH_PULL_MAX_REDIRECTS", d.redirects),
            stall=float(_env_int("PISH_PULL_STALL_TIMEOUT", int(d.stall))),
            parallel=max(1, _env_int("PISH_PULL_PARALLEL", d.parallel)),
        )


def _http_error(host: str, exc: BaseException) -> ImageError:
    """An urllib3 error in one line, naming the registry."""
    reason: Any = getattr(exc, "reason", None) or exc
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(reason, urllib3.exceptions.ResponseError):
        return ImageError(f"registry {host}: too many redirects" if "redirect" in str(reason)
                          else f"registry {host}: {str(reason)[:200]}")
    if isinstance(reason, urllib3.exceptions.SSLError | ssl.SSLError):
        return ImageError(f"registry {host}: TLS failed ({str(reason).splitlines()[0][:200]}); "
                          f"add its CA as {certs_dir(host)}/ca.crt, or use --tls-verify=false for plain HTTP")
    if isinstance(reason, urllib3.exceptions.TimeoutError | TimeoutError):
        return ImageError(f"registry {host}: timed out (no data for too long)")
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return ImageError(f"registry {host}: cannot connect ({str(reason).rsplit(':', 1)[-1].strip()})")
    text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
    return ImageError(f"registry {host}: {text[:300]}")


def certs_dir(host: str) -> Path:
    return Path(os.environ.get("PISH_CERTS_D") or CERTS_D) / host


class Body:
    """A response body read in chunks: hashed, counted against ``limit``, errors turned into ImageError."""

    def __init__(self, resp: urllib3.BaseHTTPResponse, host: str, what: str, limit: int) -> None:
        self.resp, self.host, self.what, self.limit = resp, host, what, limit
        self.seen = 0

    def read(self, n: int = -1) -> bytes:
        want = digest.CHUNK if n is None or n < 0 else n
        try:
            data = self.resp.read(min(want, self.limit + 1 - self.seen), decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _http_error(self.host, exc) from None
        self.seen += len(data)
        if self.seen > self.limit:
            raise ImageError(f"{self.what} from {self.host} is bigger than {self.limit} bytes: refused")
        return data

    def readable(self) -> bool:
        return True

    def read_all(self) -> bytes:
        parts = []
        while chunk := self.read(digest.CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self.resp.release_conn()
        self.resp.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Registry:
    """One repository of one registry, as a client sees it."""

    def __init__(self, host: str, repository: str, *, tls_verify: bool = True,
                 credentials: tuple[str, str] | None = None, limits: Limits | None = None) -> None:
        self.host, self.repository = host, repository
        self.credentials = credentials
        self.limits = limits or Limits.from_env()
        self.base = f"{'https' if tls_verify else 'http'}://{host}"
        self.authorization: str | None = None
        # Transient failures (a refused connection, 429 and 5xx answers) are retried 3 times with backoff
        # (0.5 s, 1 s, 2 s); a Retry-After header is not obeyed (a hostile server could ask for days).
        retries = Retry(total=None, connect=3, read=0, redirect=self.limits.redirects, status=3, other=0,
                        status_forcelist=(429, 500, 502, 503, 504), allowed_methods=("GET",),
                        respect_retry_after_header=False, raise_on_redirect=True, raise_on_status=False,
                        backoff_factor=0.5, backoff_max=4)
        timeout = Timeout(connect=self.limits.connect, read=self.limits.stall)
        self.pool = urllib3.PoolManager(retries=retries, timeout=timeout,
                                        ssl_context=self._ssl_context() if tls_verify else None)

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        extra = certs_dir(self.host)
        if extra.is_dir():
            for crt in sorted(extra.glob("*.crt")):
                try:
                    ctx.load_verify_locations(cafile=str(crt))
                except (OSError, ssl.SSLError) as exc:
                    raise ImageError(f"cannot load the CA {crt}: {exc}") from None
        return ctx

    # -- requests --------------------------------------------------------------------------------------

    def _send(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            return self.pool.request("GET", url, headers=headers, preload_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _http_error(self.host, exc) from None

    def get(self, path: str, what: str, accept: str | None = None) -> urllib3.BaseHTTPResponse:
        """GET ``/v2/<path>``, answering one auth challenge; any status but 200 is an error."""
        headers = {"User-Agent": "pish", **({"Accept": accept} if accept else {})}
        url = f"{self.base}/v2/{path}"
        if self.authorization:
            headers["Authorization"] = self.authorization
        resp = self._send(url, headers)
        if resp.status == 401 and "Authorization" not in headers:
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.drain_conn()
            self.authorization = self._authorize(challenge)
            headers["Authorization"] = self.authorization
            resp = self._send(url, headers)
        if resp.status != 200:
            status = resp.status
            detail = _error_detail(resp)
            resp.drain_conn()
            raise self._status_error(status, what, detail)
        return resp

    def _status_error(self, status: int, what: str, detail: str) -> ImageError:
        if status == 401:
            how = "wrong username or password" if self.credentials else "log in first with `pish login " \
                  f"{self.host}`"
            return ImageError(f"registry {self.host}: not authorized to read {what} ({how})")
        if status == 404:
            return ImageError(f"registry {self.host}: {what} not found{detail}")
        return ImageError(f"registry {self.host}: {what}: HTTP {status}{detail}")

    def _authorize(self, challenge: str) -> str:
        scheme, _, params = challenge.partition(" ")
        fields = dict(_CHALLENGE_RE.findall(params))
        if scheme.lower() == "basic":
            if not self.credentials:
                raise ImageError(f"registry {self.host} wants a login: run `pish login {self.host}`")
            return "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise ImageError(f"registry {self.host}: unsupported authentication {challenge[:80]!r}")
        return "Bearer " + self._token(fields)

    def _token(self, fields: dict[str, str]) -> str:
        realm = fields["realm"]
        if not realm.startswith(("https://", "http://")):
            raise ImageError(f"registry {self.host}: the token realm {realm!r} is no http(s) URL")
        scope = fields.get("scope") or (f"repository:{self.repository}:pull" if self.repository else None)
        query = {k: v for k, v in (("service", fields.get("service")), ("scope", scope)) if v}
        headers = {"User-Agent": "pish"}
        if self.credentials:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        sep = "&" if "?" in realm else "?"
        resp = self._send(f"{realm}{sep}{urlencode(query)}", headers)
        with Body(resp, self.host, "a token", 1 << 20) as body:
            raw = body.read_all()
        if resp.status in (401, 403):
            how = "wrong username or password" if self.credentials else "anonymous access refused"
            raise ImageError(f"registry {self.host}: the token server refused a token ({how})")
        if resp.status != 200:
            raise ImageError(f"registry {self.host}: the token server answered HTTP {resp.status}")
        try:
            answer = json.loads(raw)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise ImageError(f"registry {self.host}: the token server sent no token")
        return token

    # -- what a pull reads -----------------------------------------------------------------------------

    def check_login(self) -> None:
        """GET ``/v2/`` with the credentials: fails in one line unless they are accepted."""
        resp = self.get("", "the API root")
        resp.drain_conn()

    def manifest(self, wanted: str, what: str) -> tuple[bytes, str, str]:
        """A manifest or index by tag or digest: its bytes, media type and (hex) digest, verified when
        asked for by digest."""
        resp = self.get(f"{self.repository}/manifests/{wanted}", what, accept=ACCEPT)
        with Body(resp, self.host, what, self.limits.manifest) as body:
            raw = body.read_all()
        hexd = digest.sha256_bytes(raw)
        said = resp.headers.get("Docker-Content-Digest", "")
        expected = wanted if wanted.startswith("sha256:") else said if said.startswith("sha256:") else ""
        if expected and hexd != expected.removeprefix("sha256:"):
            raise ImageError(f"registry {self.host}: {what} does not match its digest {expected}")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ImageError(f"registry {self.host}: {what} is not JSON") from None
        media = (doc.get("mediaType") if isinstance(doc, dict) else None) or \
            resp.headers.get("Content-Type", "").split(";")[0].strip()
        if isinstance(doc, dict) and "manifests" in doc and media not in INDEX_TYPES:
            media = OCI_INDEX
        if media not in MANIFEST_TYPES + INDEX_TYPES:
            raise ImageError(f"registry {self.host}: {what} has media type {media!r}, which pish does not read "
                             f"(docker schema 1 images are too old: push them again)")
        return raw, media, hexd

    def blob(self, hexd: str, what: str, limit: int) -> Body:
        """A blob's body, to be read (and hashed by the caller) as it arrives."""
        return Body(self.get(f"{self.repository}/blobs/sha256:{hexd}", what), self.host, what, limit)

    def blob_bytes(self, hexd: str, what: str, limit: int) -> bytes:
        with self.blob(hexd, what, limit) as body:
            raw = body.read_all()
        if digest.sha256_bytes(raw) != hexd:
            raise ImageError(f"registry {self.host}: {what} does not match its digest sha256:{hexd}")
        return raw


def _error_detail(resp: urllib3.BaseHTTPResponse) -> str:
    """The first error message of a registry's JSON error body, if it is short enough to read."""
    try:
        raw = resp.read(4096, decode_content=True)
        errors = json.loads(raw).get("errors")
        return f" ({str(errors[0].get('message'))[:200]})" if errors else ""
    except (ValueError, AttributeError, TypeError, IndexError, urllib3.exceptions.HTTPError, OSError):
        return ""


def elapsed_since(start: float) -> str:
    return f"{time.monotonic() - start:.1f}s"
