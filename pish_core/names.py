"""Names and identifiers: container names, ids, and the host names derived from them.

Every host-visible name (interface, cgroup, directory) comes from a function here, never assembled
inline, so a newcomer can see what pish will create on the host and where it comes from.
"""
from __future__ import annotations

import os
import re

from pish_core.errors import SpecError

# docker's rule: [a-zA-Z0-9][a-zA-Z0-9_.-]*; we add a length cap so derived names stay sane.
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
_HOSTNAME_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*")
_IFNAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}")
_ID_RE = re.compile(r"[0-9a-f]{64}")
IFNAMSIZ = 15  # Linux interface names hold at most 15 bytes


def new_id() -> str:
    """A container id: 64 hex characters, as docker and the OCI runtimes use."""
    return os.urandom(32).hex()  # secrets.token_hex without importing secrets (hmac, OpenSSL: ~5 ms)


def is_id(text: str) -> bool:
    """True for a container id as ``new_id`` makes them."""
    return bool(_ID_RE.fullmatch(text))


def short_id(cid: str) -> str:
    return cid[:12]


def check_name(name: str, what: str = "container name") -> str:
    """Refuse names that could escape a directory or break a derived name (``../x``, ``a/b``, spaces)."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise SpecError(
            f"invalid {what} {name!r}: use 1-64 characters of a-z A-Z 0-9 _ . -, starting with a letter or digit"
        )
    return name


def check_hostname(name: str) -> str:
    if len(name) > 64 or not _HOSTNAME_RE.fullmatch(name):
        raise SpecError(f"invalid hostname {name!r}")
    return name


def check_ifname(name: str, what: str = "interface name") -> str:
    if not _IFNAME_RE.fullmatch(name):
        raise SpecError(f"invalid {what} {name!r}: 1-15 characters of a-z A-Z 0-9 _ . -")
    return name


def hostname_for(name: str) -> str:
    """The default hostname: the container name with ``_`` and ``.`` made ``-`` (``pish`` if nothing is left)."""
    return name.replace("_", "-").replace(".", "-")[:63].strip("-") or "pish"


def veth_host(cid: str, n: int = 0) -> str:
    """The host end of a container's veth pair: ``pv`` + 11 hex digits of the id (13 bytes < 15); for its
    ``ethN`` (N from 1 to 99, ``pish network connect``) N follows (15 bytes at most)."""
    if not 0 <= n <= 99:
        raise SpecError(f"a container has at most 99 networks besides its first (asked for eth{n})")
    return "pv" + cid[:11] + (str(n) if n else "")


def cgroup_name(cid: str) -> str:
    """The cgroup of a container, relative to each hierarchy's root."""
    return f"pish/{cid}"


def systemd_slice() -> str:
    """The systemd slice the ``systemd`` limits driver puts every container's scope in."""
    return "pish.slice"


def systemd_scope(cid: str) -> str:
    """A container's transient scope unit (``systemd`` limits driver): ``pish-<id>.scope``, as podman's
    ``libpod-<id>.scope``."""
    return f"pish-{cid}.scope"


def systemd_container_slice(cid: str) -> str:
    """The slice a container's scope is in (``systemd`` limits driver): ``pish-<id>.slice``, which systemd
    nests in ``pish.slice`` (each ``-`` of a slice's name is a level)."""
    return f"pish-{cid}.slice"


_ADJECTIVES = ("agile", "brave", "calm", "clever", "eager", "fond", "gentle", "happy", "jolly", "keen",
               "lucid", "merry", "nifty", "proud", "quiet", "silly", "sleepy", "swift", "tender", "witty")
_NOUNS = ("albatross", "badger", "beaver", "bison", "crane", "dingo", "falcon", "gecko", "heron", "ibis",
          "koala", "lemur", "marmot", "newt", "otter", "panda", "quokka", "raven", "tapir", "walrus")


def random_name() -> str:
    """A docker-style ``adjective_noun_NNNN`` name (the number keeps collisions rare with 20x20 words)."""
    n = int.from_bytes(os.urandom(8), "big")  # 64 random bits: the modulo bias is far below notice
    return f"{_ADJECTIVES[n % len(_ADJECTIVES)]}_{_NOUNS[(n >> 16) % len(_NOUNS)]}_{(n >> 32) % 10000:04d}"
