"""The security flags of ``pish run``, as docker spells them, turned into the spec's ``Security``.

- ``--cap-add CAP`` / ``--cap-drop CAP``: with or without ``CAP_``, any case, ``ALL`` allowed;
- ``--privileged``: every capability, no seccomp filter, no masked or read-only paths, every device,
  and no no_new_privs unless asked for, as docker's ``--privileged`` (whose no_new_privs is off anyway);
- ``--security-opt seccomp=unconfined``: no seccomp filter; ``seccomp=builtin``: docker's default profile;
  ``seccomp=FILE``: a custom profile, in docker's format (``profiles.from_docker``), read and checked here;
- ``--security-opt no-new-privileges[=true|false]``: pish sets it by default; ``=false`` turns it off.

Docker's ``:`` separator (``seccomp:unconfined``) is accepted too.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pish_core.errors import SpecError
from pish_core.security import capabilities
from pish_core.spec import Security

_TRUE = ("", "true", "1", "yes")
_FALSE = ("false", "0", "no")


def security_from_flags(cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (), privileged: bool = False,
                        security_opts: Iterable[str] = (), device_allowlist: bool = True) -> Security:
    """``device_allowlist``: whether the limits driver keeps the container to its own devices (its class's
    ``Limits.device_allowlist``); without one, docker's CAP_MKNOD is dropped unless asked for."""
    seccomp = ""  # the last seccomp= option, "" for none
    no_new_privileges: bool | None = None  # None: the default (on; off with --privileged)
    for opt in security_opts:
        key, value = _split(opt)
        if key == "seccomp":
            if not value:
                raise SpecError(f"invalid --security-opt {opt!r}: give a profile file, builtin or unconfined")
            seccomp = opt
        elif key in ("no-new-privileges", "no_new_privileges"):
            if value.lower() not in (*_TRUE, *_FALSE):
                raise SpecError(f"invalid --security-opt {opt!r}: use no-new-privileges[=true|false]")
            no_new_privileges = value.lower() in _TRUE
        else:
            raise SpecError(f"unsupported --security-opt {opt!r}: pish knows seccomp=FILE|builtin|unconfined "
                            "and no-new-privileges[=false]")
    add, drop = list(cap_add), list(cap_drop)
    caps = capabilities.resolve(add, drop, privileged=privileged)
    if (not privileged and not device_allowlist and "CAP_MKNOD" in caps
            and "CAP_MKNOD" not in {capabilities.normalize(c, "--cap-add") for c in add}):
        # Without a device allowlist (the v1 devices cgroup, or v2's BPF device program), CAP_MKNOD would let
        # root in the container make a node for the host's disk and open it. Ask for it with --cap-add MKNOD.
        caps = tuple(c for c in caps if c != "CAP_MKNOD")
    confined, profile = _seccomp(seccomp, caps) if seccomp else (True, "")
    if privileged:  # no filter, even with a profile (as docker): it was checked all the same
        return Security(capabilities=caps, no_new_privileges=bool(no_new_privileges), seccomp=False,
                        masked_paths=(), readonly_paths=(), privileged=True)
    return Security(capabilities=caps, no_new_privileges=no_new_privileges is not False, seccomp=confined,
                    seccomp_profile=profile)


def _seccomp(opt: str, caps: tuple[str, ...]) -> tuple[bool, str]:
    """``seccomp=unconfined|builtin|FILE`` as (filter on?, the custom profile's OCI JSON or "")."""
    from pish_core.security import profiles  # libseccomp, through the native helper: only when needed

    value = _split(opt)[1]
    if value == "unconfined":
        return False, ""
    if value == "builtin":
        return True, ""
    try:
        text = Path(value).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SpecError(f"invalid --security-opt {opt!r}: cannot read {value}: {why}") from None
    try:
        profile = profiles.from_docker(text, caps)
        if profile is not None:
            profiles.check_profile(profile)
    except SpecError as exc:
        raise SpecError(f"invalid --security-opt {opt!r}: {exc}") from None
    return (False, "") if profile is None else (True, profile)


def _split(opt: str) -> tuple[str, str]:
    """``key=value``, ``key:value`` or a bare ``key``."""
    cut = min((i for i in (opt.find("="), opt.find(":")) if i >= 0), default=-1)
    return (opt, "") if cut < 0 else (opt[:cut], opt[cut + 1:])
