"""libnftables through ctypes: hand nft's own command language to the library ``nft`` itself uses.

Why this route, of the three the issue allows:

- **libnftables by ctypes** (this): five C functions with plain signatures (a context pointer, a
  string in, a string out). ``ctypes.CDLL`` costs about a millisecond; the commands are the readable
  ``nft`` syntax every admin knows, and the whole table is replaced or amended in one atomic
  transaction. Debian's ``libnftables1`` is there wherever ``nft`` is (and often when it is not).
- **cffi**: ABI mode parses a ``cdef`` with pycparser (+~48 ms on every start, host-facts.md); API
  mode would need libnftables' headers and a compiler at install time for the same five calls.
- **pyroute2's nftables**: netlink messages built expression by expression (registers, payload
  offsets, set lookups); a masquerade rule takes a page, and sets/maps with concatenations, ``fib`` and
  ``ct status`` are not covered by its high-level helpers.

No ``nft`` process is ever started. The library is loaded on first use, not at import.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
from typing import Any

from pish_core.errors import DriverError

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4  # <nftables/libnftables.h>

_ctx: tuple[Any, int] | None = None


class NftError(DriverError):
    """nft refused a command; ``errno`` is set when the message names one we act upon."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = 0
        if "File exists" in message:
            self.errno = errno.EEXIST
        elif "No such file or directory" in message:
            self.errno = errno.ENOENT


def _load() -> tuple[Any, int]:
    """The library and one context for this process, with output and errors kept in buffers."""
    global _ctx
    if _ctx is None:
        try:  # the soname first: find_library would run ldconfig in a subprocess
            lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        except OSError:
            name = ctypes.util.find_library("nftables")
            if name is None:
                raise DriverError("libnftables is not installed (apt-get install libnftables1)") from None
            lib = ctypes.CDLL(name, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for fn in (lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
            fn.argtypes = [ctypes.c_void_p]
        for fn in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise DriverError("libnftables could not make a context")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        _ctx = (lib, ctx)
    return _ctx


def available() -> str | None:
    """None if libnftables can be loaded here, else why not."""
    try:
        _load()
    except DriverError as exc:
        return str(exc)
    return None


def run(commands: str, *, as_json: bool = False) -> str:
    """Run ``commands`` (nft syntax, one transaction) and return what nft printed; raise NftError."""
    lib, ctx = _load()
    lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON if as_json else 0)
    rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
    out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
    err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
    if rc != 0:
        first = next((line for line in err.splitlines() if line.startswith("Error")), err.strip())
        raise NftError(f"nftables: {first.removeprefix('Error: ')} (in: {commands.strip()[:200]})")
    return out


def list_json(what: str) -> list[dict[str, Any]]:
    """``list WHAT`` as the objects of nft's JSON output (metainfo left out)."""
    data = json.loads(run(f"list {what}", as_json=True) or '{"nftables": []}')
    return [o for o in data.get("nftables", []) if "metainfo" not in o]
