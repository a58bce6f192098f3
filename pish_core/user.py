"""Who the container's command runs as.

``resolve`` turns ``USER[:GROUP]`` (``-u``, or the image config's ``User``) into numbers, looking names
up in the image's own ``/etc/passwd`` and ``/etc/group``, with runc's rules (libcontainer/user): a
numeric user needs no passwd entry; a user found by name or number gets its primary group and home from
passwd and its supplementary groups from every group that lists it, unless a group is given explicitly,
which then replaces the primary group and drops the supplementary ones.

``become`` runs in the container's init, after pivot_root and right before exec: setgroups, setgid,
setuid, in that order (after setuid there is no way back to set the others).
"""
from __future__ import annotations

import os

from pish_core.errors import PishError, SpecError
from pish_core.spec import User
from pish_core.value import Value, value

MAX_ID = (1 << 31) - 1


@value
class PasswdEntry(Value):
    name: str
    uid: int
    gid: int
    home: str


@value
class GroupEntry(Value):
    name: str
    gid: int
    members: tuple[str, ...]


def parse_passwd(text: str | None) -> list[PasswdEntry]:
    out = []
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) < 7 or line.startswith("#"):
            continue
        try:
            out.append(PasswdEntry(f[0], int(f[2]), int(f[3]), f[5]))
        except ValueError:
            continue
    return out


def parse_group(text: str | None) -> list[GroupEntry]:
    out = []
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) < 4 or line.startswith("#"):
            continue
        try:
            out.append(GroupEntry(f[0], int(f[2]), tuple(m for m in f[3].split(",") if m)))
        except ValueError:
            continue
    return out


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None  # "²".isdigit(), but int("²") fails


def _in_range(value: int, what: str, spec: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise SpecError(f"invalid user {spec!r}: {what} {value} is out of range")
    return value


def resolve(spec: str, passwd: str | None, group: str | None) -> tuple[User, str]:
    """``USER[:GROUP]`` -> (User, home directory), against the image's passwd and group files' text."""
    user_part, _, group_part = spec.partition(":")
    if not user_part and not group_part:
        raise SpecError(f"invalid user {spec!r}: use USER[:GROUP], a name or a number each")
    uid, gid, home, name = 0, 0, "/", ""
    users = parse_passwd(passwd)
    want_uid = _number(user_part)
    match = next((u for u in users if (u.uid == want_uid if want_uid is not None else u.name == user_part)),
                 None) if user_part else next((u for u in users if u.uid == 0), None)
    if match:
        uid, gid, home, name = match.uid, match.gid, match.home or "/", match.name
    elif want_uid is not None:
        uid = _in_range(want_uid, "uid", spec)
    elif user_part:
        raise SpecError(f"unable to find user {user_part}: no matching entries in the image's /etc/passwd")
    additional: tuple[int, ...] = ()
    groups = parse_group(group)
    if group_part:
        want_gid = _number(group_part)
        g = next((g for g in groups if (g.gid == want_gid if want_gid is not None else g.name == group_part)), None)
        if g:
            gid = g.gid
        elif want_gid is not None:
            gid = _in_range(want_gid, "gid", spec)
        else:
            raise SpecError(f"unable to find group {group_part}: no matching entries in the image's /etc/group")
    elif name:
        additional = tuple(dict.fromkeys(g.gid for g in groups if name in g.members))
    return User(uid=uid, gid=gid, additional_gids=additional), home


def _setgroups_denied() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:  # before Linux 3.19: no such file, setgroups allowed
        return False


def become(user: User | None, cwd: str) -> None:
    """In the init, after pivot_root: make the working directory (as root, as docker does), then drop to
    ``user``. Nothing to do when the spec names no user (the command runs as root, as before)."""
    if user is None:
        return
    try:
        os.makedirs(cwd, exist_ok=True)
    except OSError:
        pass  # a read-only root, say: exec_command reports a missing working directory itself
    if _setgroups_denied():  # a user namespace mapped without newgidmap (rootless pish-oci), as runc
        if user.additional_gids:
            raise PishError("cannot set any additional groups in a rootless container")
    else:
        try:
            os.setgroups(list(user.additional_gids))
        except OSError as exc:
            raise PishError(f"cannot run as uid {user.uid} gid {user.gid}: {exc.strerror}") from None
    try:
        os.setgid(user.gid)
        os.setuid(user.uid)
    except OSError as exc:
        raise PishError(f"cannot run as uid {user.uid} gid {user.gid}: {exc.strerror}") from None
