"""``pish push``'s requests carry the registry's credentials to the registry only: an upload ``Location``
on another host (a CDN, a bucket) or over plain http gets no ``Authorization`` header, as docker's
client (whose authorizer answers only the hosts that challenged it)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pish_core.image.push import Uploader


class FakePool:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.sent.append((url, dict(kwargs["headers"])))
        return SimpleNamespace(status=201, headers={}, drain_conn=lambda: None)


def uploader() -> tuple[Uploader, FakePool]:
    pool = FakePool()
    reg = SimpleNamespace(base="https://reg.example:5000", host="reg.example:5000", repository="app",
                          authorization="Basic dTpw", credentials=("u", "p"), pool=pool)
    return Uploader(reg), pool  # type: ignore[arg-type]


def test_the_registry_gets_the_credentials() -> None:
    up, pool = uploader()
    up.request("PUT", "/v2/app/blobs/uploads/1?digest=sha256:x", "a blob", body=b"")
    up.request("PUT", "https://reg.example:5000/v2/app/blobs/uploads/2", "a blob", body=b"")
    assert [h.get("Authorization") for _, h in pool.sent] == ["Basic dTpw", "Basic dTpw"]


def test_another_host_or_plain_http_does_not() -> None:
    """The user's password (Basic) went to whatever host, and scheme, a Location named."""
    up, pool = uploader()
    up.request("PUT", "https://bucket.example/upload/1?sig=abc", "a blob", body=b"")
    up.request("PUT", "http://reg.example:5000/v2/app/blobs/uploads/1", "a blob", body=b"")
    up.request("PUT", "https://reg.example:5001/v2/app/blobs/uploads/1", "a blob", body=b"")
    assert [h.get("Authorization") for _, h in pool.sent] == [None, None, None]
