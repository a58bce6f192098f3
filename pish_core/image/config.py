"""The image config honoured: what ``pish run IMAGE [COMMAND]`` runs, with which environment, where, as whom.

Docker's rules, from the image config's ``config`` object (OCI and docker spell the keys alike):

- the command is ``Entrypoint + Cmd``; a COMMAND on the command line replaces ``Cmd``; ``--entrypoint``
  replaces ``Entrypoint`` and drops the image's ``Cmd`` (``--entrypoint ''`` clears it);
- the environment is the image's ``Env``, then ``-e`` on top; ``HOME`` is the user's home from the
  image's /etc/passwd unless one of those sets it;
- the working directory is ``-w``, else ``WorkingDir``, else ``/``;
- the user is ``-u``, else ``User``, resolved against the image's /etc/passwd and /etc/group.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pish_core import user as users
from pish_core.image import whiteout
from pish_core.spec import Process


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # docker tolerates a bare string here; treat it as one argument
        return (value,)
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return ()


def image_section(config: Mapping[str, Any]) -> dict[str, Any]:
    section = config.get("config") or {}
    return dict(section) if isinstance(section, Mapping) else {}


def command(section: Mapping[str, Any], args: Sequence[str], entrypoint: str | None) -> tuple[str, ...]:
    if entrypoint is not None:
        return (*((entrypoint,) if entrypoint else ()), *args)
    return (*_strings(section.get("Entrypoint")), *(tuple(args) or _strings(section.get("Cmd"))))


def image_env(section: Mapping[str, Any]) -> tuple[str, ...]:
    """The image's ``Env``, as is, less what no process could be given (no ``=``, a NUL)."""
    return tuple(e for e in _strings(section.get("Env")) if "=" in e and not e.startswith("=") and "\0" not in e)


def process_for(config: Mapping[str, Any], layers: Sequence[Path], *, args: Sequence[str],
                env: Sequence[str] = (), workdir: str | None = None, user: str | None = None,
                entrypoint: str | None = None, terminal: bool = False, interactive: bool = False) -> Process:
    """The container's Process: the image config (``config``; ``{}`` for a bare rootfs) merged with the
    command line. ``layers`` (bottom first) are where /etc/passwd and /etc/group are looked up."""
    section = image_section(config)
    user_text = user if user else str(section.get("User") or "")
    resolved = None
    base_env: tuple[str, ...] = ()
    if user_text:
        resolved, home = users.resolve(user_text, whiteout.read_text(layers, "etc/passwd"),
                                       whiteout.read_text(layers, "etc/group"))
        base_env = (f"HOME={home}",)
    cwd = workdir or str(section.get("WorkingDir") or "") or "/"
    if not cwd.startswith("/"):
        cwd = "/" + cwd  # docker reads a relative WorkingDir from /
    return Process(args=command(section, args, entrypoint), env=(*base_env, *image_env(section), *env),
                   cwd=cwd, terminal=terminal, interactive=interactive, user=resolved)
