"""Capabilities: which of root's powers the container keeps, as docker decides it, and how they are set.

A Linux process has five capability sets: *bounding* (the most it can ever gain, even by exec'ing a
setuid-root or file-capability binary), *permitted* and *effective* (what it holds and uses now),
*inheritable* and *ambient* (what it may hand on across ``execve``). At ``execve`` the kernel recomputes
them; for a process whose uid is 0 the new permitted set is (inheritable | bounding), so for root in a
container **the bounding set is what counts**, and it must be narrowed while we still hold CAP_SETPCAP.

pish follows docker (moby ``oci/caps`` and ``SetCapabilities``): the container's list is docker's default
(below), changed by ``--cap-add``/``--cap-drop`` (``ALL`` allowed) or replaced by every capability under
``--privileged``. Root in the container gets that list as bounding, permitted and effective; inheritable
and ambient are empty (docker stopped filling inheritable after CVE-2022-24769). A non-root container user
gets it as bounding only, with empty permitted and effective, "to match what execve does".
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pish_core.errors import SpecError

#: Capability names by number (<linux/capability.h>); the kernel may know fewer (cap_last_cap).
NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
NUMBERS = {name: number for number, name in enumerate(NAMES)}

#: docker's default set (moby oci/caps/defaults.go), in its order.
DEFAULT = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
ALL = "ALL"


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(NAMES) - 1


def all_names() -> tuple[str, ...]:
    """Every capability this kernel knows, as ``--cap-add ALL`` and ``--privileged`` mean it."""
    return NAMES[: min(last_cap(), len(NAMES) - 1) + 1]


def normalize(name: str, flag: str) -> str:
    """``net_admin``, ``NET_ADMIN``, ``CAP_NET_ADMIN`` -> ``CAP_NET_ADMIN``; ``all`` -> ``ALL``."""
    upper = name.strip().upper()
    if upper == ALL:
        return ALL
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in NUMBERS:
        raise SpecError(f"invalid {flag} {name!r}: unknown capability (see capabilities(7), e.g. NET_ADMIN)")
    return full


def resolve(add: Iterable[str] = (), drop: Iterable[str] = (), *, privileged: bool = False,
            base: Iterable[str] = DEFAULT) -> tuple[str, ...]:
    """The container's capability list from the flags, the way docker's ``TweakCapabilities`` works:
    ``--cap-add ALL`` is everything but the drops, ``--cap-drop ALL`` is only the adds, else the base
    minus the drops plus the adds."""
    if privileged:
        return all_names()
    adds = [normalize(c, "--cap-add") for c in add]
    drops = [normalize(c, "--cap-drop") for c in drop]
    if ALL in adds:
        caps = [c for c in all_names() if c not in drops]
    elif ALL in drops:
        caps = [c for c in adds if c != ALL]
    else:
        caps = [c for c in base if c not in drops] + adds
    return tuple(dict.fromkeys(caps))  # no repeats, first mention's order


def mask(names: Iterable[str]) -> int:
    out = 0
    for name in names:
        out |= 1 << NUMBERS[name]
    return out


def names_of(bits: int) -> list[str]:
    return [name for number, name in enumerate(NAMES) if bits >> number & 1]


# -- applying them, in the container's init ----------------------------------------------------------


def narrow_bounding(caps: Iterable[str]) -> None:
    """Drop every capability not in ``caps`` from the bounding set. Needs CAP_SETPCAP for each drop, so
    it must run before a switch to a non-root user; drops already made are skipped (idempotent)."""
    from pish_core import native

    keep = mask(caps)
    for number in range(last_cap() + 1):
        if not keep >> number & 1 and native.prctl(native.PR_CAPBSET_READ, number) == 1:
            native.prctl(native.PR_CAPBSET_DROP, number)


def set_process_caps(caps: Iterable[str], effective: Iterable[str] | None = None,
                     permitted: Iterable[str] | None = None, inheritable: Iterable[str] = (),
                     ambient: Iterable[str] = ()) -> None:
    """Permitted and effective become ``caps`` for root (uid 0), empty for any other user, as docker
    sets them; inheritable and ambient become empty. Only ever lowers what the process holds.

    Given ``permitted`` (an OCI config's process.capabilities), the effective, permitted, inheritable and
    ambient sets are exactly those given, whoever the user is, as runc sets them."""
    import os

    from pish_core import native

    _, held, _ = native.capget()
    if permitted is not None:
        wanted = mask(permitted) & held
        native.capset(mask(effective or ()) & wanted, wanted, mask(inheritable))
        native.prctl(native.PR_CAP_AMBIENT, native.PR_CAP_AMBIENT_CLEAR_ALL)
        for name in ambient:  # ambient needs the capability permitted and inheritable: without, as runc,
            try:  # the capability is left out (`runc spec` itself asks for ambient, no inheritable)
                native.prctl(native.PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, NUMBERS[name])
            except PermissionError:
                pass
        return
    target = mask(caps) & held if os.geteuid() == 0 else 0
    native.capset(target, target, 0)
    native.prctl(native.PR_CAP_AMBIENT, native.PR_CAP_AMBIENT_CLEAR_ALL)


PR_CAP_AMBIENT_RAISE = 2  # <linux/prctl.h>


def raise_effective() -> None:
    """Make every permitted capability effective again (after a setuid with KEEPCAPS cleared them), so
    the last steps of the lock-down can still be taken."""
    from pish_core import native

    _, permitted, inheritable = native.capget()
    native.capset(permitted, permitted, inheritable)
