"""``pish-oci exec``'s process: an OCI process JSON (``--process FILE``, what conmon and the containerd shim
send) or runc's flags, turned into the Process and Security the core's ``Isolation.enter`` takes. What the
process JSON does not say comes from the container (its seccomp profile and paths, as runc does)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pish_core.errors import SpecError
from pish_core.oci import specconv
from pish_core.spec import ContainerSpec, Process, Security, User


def load(path: Path, spec: ContainerSpec) -> tuple[Process, Security]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read the process file {path}: {exc}") from None
    fields = specconv._Fields(data, "process")
    process, caps, no_new_privs = specconv._process(fields, lambda message: None)
    security = dataclasses.replace(
        spec.security, capabilities=caps.capabilities, effective=caps.effective, permitted=caps.permitted,
        inheritable=caps.inheritable, ambient=caps.ambient, no_new_privileges=no_new_privs)
    return process, security


def from_flags(spec: ContainerSpec, command: tuple[str, ...], *, tty: bool, cwd: str | None,
               env: tuple[str, ...], user: str | None, additional_gids: tuple[int, ...], caps: tuple[str, ...],
               no_new_privs: bool) -> tuple[Process, Security]:
    """runc exec ID CMD... with -t, --cwd, -e, -u UID[:GID], -g, --cap, --no-new-privs."""
    who = spec.process.user or User()
    if user:
        uid_text, _, gid_text = user.partition(":")
        try:
            who = User(int(uid_text), int(gid_text or 0), tuple(additional_gids))
        except ValueError:
            raise SpecError(f"exec: --user {user!r}: use UID[:GID] numbers") from None
    security = spec.security
    if caps:
        added = tuple(c if c.startswith("CAP_") else f"CAP_{c}" for c in caps)
        security = dataclasses.replace(security, capabilities=(*security.capabilities, *added),
                                       effective=(*(security.effective or ()), *added),
                                       permitted=(*(security.permitted or ()), *added))
    if no_new_privs:
        security = dataclasses.replace(security, no_new_privileges=True)
    process = Process(args=command, env=(*spec.process.env, *env), cwd=cwd or spec.process.cwd, terminal=tty,
                      user=who)
    return process, security
