"""Digests and layer streams: what the store verifies, and a layer read whatever its compression.

A layer is read once, as a stream: the bytes as stored pass through one sha256 (the blob digest a
manifest names), are decompressed, and the tar that comes out passes through a second (the ``diff_id``
the image config names). Both are compared after the last byte, so a layer is verified by the same pass
that unpacks it; what it unpacked goes to a temporary directory that is dropped on a mismatch.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from pish_core.errors import ImageError

if TYPE_CHECKING:
    import threading

_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_HEX64 = re.compile(r"[0-9a-f]{64}")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


def parse(digest: object, what: str) -> str:
    """``sha256:<64 hex>`` -> the hex part; anything else (another algorithm, a path) is refused."""
    m = _DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if not m:
        raise ImageError(f"invalid digest {digest!r} for {what}")
    if m.group(1) != "sha256":
        raise ImageError(f"unsupported digest algorithm {m.group(1)!r} for {what} (only sha256)")
    if not _HEX64.fullmatch(m.group(2)):
        raise ImageError(f"invalid sha256 digest {digest!r} for {what}")
    return m.group(2)


def is_hex64(text: str) -> bool:
    return bool(_HEX64.fullmatch(text))


def _sha256() -> Any:
    """A new sha256. hashlib is imported here, on the first hash: it loads OpenSSL (~4 ms), and a run of a
    stored image, which imports this module for its names, hashes nothing."""
    import hashlib

    return hashlib.sha256()


def sha256_bytes(data: bytes) -> str:
    h = _sha256()
    h.update(data)
    return str(h.hexdigest())


def sha256_file(f: IO[bytes], on_read: Callable[[int], None] | None = None) -> str:
    h = _sha256()
    while chunk := f.read(CHUNK):
        h.update(chunk)
        if on_read:
            on_read(len(chunk))
    return str(h.hexdigest())


class BackgroundHash:
    """A sha256 fed from another thread: hashing a 170 MB layer takes ~160 ms, which then overlaps with
    unpacking it (hashlib lets go of the GIL for big updates). The chunks are bytes: they cannot change."""

    def __init__(self, threaded: bool = True) -> None:
        import queue  # here, as hashlib: a run of a stored image hashes nothing

        self.threaded = threaded  # False: hashed in the caller's thread (one that has nothing else to do)
        self._hash = _sha256()
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._digest: str | None = None

    def update(self, data: bytes) -> None:
        if not self.threaded:
            self._hash.update(data)
            return
        if self._thread is None:
            import threading

            self._thread = threading.Thread(target=self._run, name="pish-sha256", daemon=True)
            self._thread.start()
        self._chunks.put(data)

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._hash.update(chunk)

    def close(self) -> None:
        """Stop the thread (hexdigest() does too); the hash is final from then on."""
        if self._thread is not None:
            self._chunks.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        if self._digest is None:
            self.close()
            self._digest = str(self._hash.hexdigest())
        return self._digest


class KnownHash:
    """The sha256 of a stream that another reader hashes: ``update`` does nothing, ``hexdigest`` asks
    ``result`` (for a rootfs tar, the importer's pre-hash: hashing it twice cost a core ~180 ms)."""

    def __init__(self, result: Callable[[], str]) -> None:
        self._result = result

    def update(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self._result()


class HashingReader:
    """A read-only stream that hashes (and counts) every byte read through it (``known``: that another
    reader hashes instead, see ``KnownHash``)."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], None] | None = None,
                 limit: int | None = None, what: str = "", threaded: bool = True,
                 known: Callable[[], str] | None = None) -> None:
        self.raw = raw
        self.hash: BackgroundHash | KnownHash = BackgroundHash(threaded) if known is None else KnownHash(known)
        self.size = 0
        self.on_read = on_read
        self.limit, self.what = limit, what

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.hash.update(data)
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise ImageError(f"{self.what} is bigger than {self.limit} bytes uncompressed "
                             f"(a decompression bomb?): refused")
        if self.on_read and data:
            self.on_read(len(data))
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end (a tar's trailing blocks, gzip's trailer) so the digest covers every byte."""
        while self.read(CHUNK):
            pass

    def hexdigest(self) -> str:
        return str(self.hash.hexdigest())


class _Prefixed:
    """``prefix`` then the rest of ``raw``: the magic bytes read to sniff the compression, put back."""

    def __init__(self, prefix: bytes, raw: HashingReader) -> None:
        self.prefix, self.raw = prefix, raw

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            if n < 0:
                data, self.prefix = self.prefix + self.raw.read(), b""
                return data
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            if len(data) < n:
                data += self.raw.read(n - len(data))
            return data
        return self.raw.read(n)

    def readable(self) -> bool:
        return True


def compression(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class LayerStream:
    """One pass over a stored layer: ``tar`` is the uncompressed tar stream to unpack; afterwards
    ``finish()`` drains both streams and ``blob_digest`` / ``diff_id`` are the hex digests seen.
    An uncompressed layer is its own tar: it is hashed once, both digests are the same. ``known``: the
    sha256 of an uncompressed ``raw``, taken by another reader (see ``KnownHash``)."""

    def __init__(self, raw: IO[bytes], what: str, on_read: Callable[[int], None] | None = None,
                 max_tar: int | None = None, threaded: bool = True, known: Callable[[], str] | None = None) -> None:
        self.blob = HashingReader(raw, on_read, limit=max_tar, what=what, threaded=threaded, known=known)
        head = self.blob.read(4)
        self.compression = compression(head)
        if known is not None and self.compression != "none":
            raise ImageError(f"{what}: a known digest is for an uncompressed tar only")
        source: Any = _Prefixed(head, self.blob)
        if self.compression == "none":
            self.tar: Any = source
            self.tar_hash = self.blob
            return
        self.blob.limit = None  # the limit is on what comes out
        if self.compression == "zstd":
            source = _zstd_reader(source, what)
        if self.compression == "gzip":
            import gzip  # here: a run of a stored image reads no layer, and needs no gzip

            source = gzip.GzipFile(fileobj=source, mode="rb")
        self.tar = self.tar_hash = HashingReader(source, limit=max_tar, what=what, threaded=threaded)

    def finish(self) -> None:
        try:
            self.tar_hash.drain()
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise ImageError(f"corrupt compressed layer: {exc}") from None
        self.blob.drain()

    def close(self) -> None:
        """Stop the hashing threads (after an error: ``finish`` and the digests do it otherwise)."""
        self.blob.hash.close()
        self.tar_hash.hash.close()

    @property
    def blob_digest(self) -> str:
        return self.blob.hexdigest()

    @property
    def diff_id(self) -> str:
        return self.tar_hash.hexdigest()


class _ZstdErrors:
    """zstandard's reader with its ZstdError turned into OSError, which the unpacker reports in one line."""

    def __init__(self, reader: Any, error: type[Exception]) -> None:
        self.reader, self.error = reader, error

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self.reader.read(n)
        except self.error as exc:
            raise OSError(f"corrupt zstd data: {exc}") from None
        return data

    def readable(self) -> bool:
        return True


def _zstd_reader(source: Any, what: str) -> Any:
    """A streaming zstd decompressor over ``source`` (python-zstandard; imported only for zstd layers)."""
    try:
        import zstandard
    except ImportError:
        raise ImageError(f"{what} is zstd-compressed and the zstandard module is not installed "
                         f"(pip install zstandard)") from None
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    return _ZstdErrors(reader, zstandard.ZstdError)
