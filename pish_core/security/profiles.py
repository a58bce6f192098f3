"""Custom seccomp profiles: an OCI ``linux.seccomp`` object, checked once, compiled by libseccomp before the
fork, loaded by the container's init.

A profile comes from ``pish run --security-opt seccomp=FILE`` (docker's file format, which ``from_docker``
turns into the OCI object as dockerd does before it calls runc) or from an OCI bundle's config.json. Either
way ``Security.seccomp_profile`` holds the OCI object as JSON text, and three calls use it:

1. ``check_profile(text)``, when the spec is built: the JSON is read against the runtime spec and compiled,
   so a mistake is a one-line SpecError naming its field (``syscalls[2].action``) before anything is made;
2. ``prepare(text)``, in the process that forks the container (``enforce.prepare``): the compiled program,
   kept in PISH_LIB/seccomp/<hash>.bpf like the default profile's (the hash covers the profile's text);
3. ``load(text)``, in the container's init (``enforce.lock_down``): seccomp(2) with the profile's flags.

How the object becomes a filter, as runc and crun make it:

- actions: SCMP_ACT_KILL (which is KILL_THREAD), KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, TRACE, ALLOW, LOG.
  ERRNO and TRACE take ``errnoRet`` / ``defaultErrnoRet`` (EPERM when absent); any other action with one is
  an error, as the spec says. NOTIFY hands the call to a seccomp agent listening at ``listenerPath``; pish
  has no such agent support, so NOTIFY is refused.
- A rule whose action is the default action is skipped: it would change nothing, and libseccomp refuses it.
- A syscall name this libseccomp does not know is skipped, as runc does: that call gets the default action.
- The ``args`` of one rule must all hold (AND): one libseccomp rule with several comparisons. libseccomp
  cannot compare one argument twice in a rule, so when two ``args`` share an index each becomes a rule of
  its own (OR), as runc and crun do.
- ``flags`` TSYNC, LOG and SPEC_ALLOW are seccomp(2) flags: libseccomp's filter attributes say whether this
  kernel has them, and ``load`` passes them to seccomp(2). WAIT_KILLABLE_RECV only matters with NOTIFY.
- ``architectures`` (SCMP_ARCH_X86 is libseccomp's "x86") are added to the native one, which is always in.
"""
from __future__ import annotations

import errno
import json
import os
import platform
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from pish_core import native
from pish_core.errors import SpecError
from pish_core.security import seccomp
from pish_core.value import Value, value

#: The actions that take no number.
ACTIONS = {
    "SCMP_ACT_KILL": native.SCMP_ACT_KILL,
    "SCMP_ACT_KILL_THREAD": native.SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": native.SCMP_ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": native.SCMP_ACT_TRAP,
    "SCMP_ACT_ALLOW": native.SCMP_ACT_ALLOW,
    "SCMP_ACT_LOG": native.SCMP_ACT_LOG,
}
#: The actions that carry a 16-bit number: the errno the call returns, or the message a tracer gets.
NUMBERED_ACTIONS = {"SCMP_ACT_ERRNO": native.SCMP_ACT_ERRNO, "SCMP_ACT_TRACE": native.SCMP_ACT_TRACE}
OPERATORS = {
    "SCMP_CMP_NE": native.SCMP_CMP_NE,
    "SCMP_CMP_LT": native.SCMP_CMP_LT,
    "SCMP_CMP_LE": native.SCMP_CMP_LE,
    "SCMP_CMP_EQ": native.SCMP_CMP_EQ,
    "SCMP_CMP_GE": native.SCMP_CMP_GE,
    "SCMP_CMP_GT": native.SCMP_CMP_GT,
    "SCMP_CMP_MASKED_EQ": native.SCMP_CMP_MASKED_EQ,
}
#: A flag: its seccomp(2) bit, and the libseccomp attribute that checks this kernel has it.
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": (native.SECCOMP_FILTER_FLAG_TSYNC, native.SCMP_FLTATR_CTL_TSYNC),
    "SECCOMP_FILTER_FLAG_LOG": (native.SECCOMP_FILTER_FLAG_LOG, native.SCMP_FLTATR_CTL_LOG),
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": (native.SECCOMP_FILTER_FLAG_SPEC_ALLOW, native.SCMP_FLTATR_CTL_SSB),
}
NO_AGENT = "needs a seccomp agent (SCMP_ACT_NOTIFY, listenerPath), which pish does not support"
#: A syscall has six arguments; comparisons name them 0-5.
ARGUMENTS = 6
#: Past this many syscalls, libseccomp is asked for a binary tree instead of a list (runc does the same).
TREE_FROM = 32

_TOP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath", "listenerMetadata",
             "syscalls"}
_SYSCALL_KEYS = {"names", "action", "errnoRet", "args"}


@value
class Rule(Value):
    """One ``syscalls`` entry: its ``action`` for each of ``names``, when all ``comparisons`` hold (each is
    argument index, SCMP_CMP_* operator, value, valueTwo). ``field`` says where it is, for errors."""

    field: str
    names: tuple[str, ...]
    action: int
    comparisons: tuple[tuple[int, int, int, int], ...]


@value
class Profile(Value):
    """A checked ``linux.seccomp``: libseccomp's numbers and names, ready to build."""

    default_action: int
    architectures: tuple[str, ...]  # libseccomp's names: "x86", "x32"...
    flags: tuple[str, ...]  # FLAGS' keys
    rules: tuple[Rule, ...]

    @property
    def load_flags(self) -> int:
        """The SECCOMP_FILTER_FLAG_* bits for seccomp(2)."""
        bits = 0
        for name in self.flags:
            bits |= FLAGS[name][0]
        return bits


# -- reading the JSON ------------------------------------------------------------------------------


def _fail(field: str, problem: str) -> NoReturn:
    raise SpecError(f"seccomp profile {field}: {problem}" if field else f"seccomp profile: {problem}")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError; also a string json cannot decode
        _fail("", f"not JSON ({exc})")


def _object(value: Any, field: str, keys: set[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``value`` as a JSON object holding only ``keys``, ``required`` among them. A null counts as absent,
    as it does for Go's encoding/json."""
    if not isinstance(value, dict):
        _fail(field, "must be a JSON object")
    where = f"{field}." if field else ""
    for key in value:
        if key not in keys:
            _fail(f"{where}{key}", "unknown key")
    for key in required:
        if value.get(key) is None:
            _fail(f"{where}{key}", "missing")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(field, "must be a JSON array")
    return value


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        _fail(field, "must be a non-empty string")
    return value


def _uint(value: Any, field: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        _fail(field, f"must be a whole number from 0 to {(1 << bits) - 1}")
    return value


def _action(obj: dict[str, Any], key: str, errno_key: str, field: str) -> int:
    """The action ``obj[key]``, with its number from ``obj[errno_key]`` (EPERM when absent: the spec's)."""
    where = f"{field}." if field else ""
    name = _string(obj.get(key), f"{where}{key}")
    number = obj.get(errno_key)
    if name == "SCMP_ACT_NOTIFY":
        _fail(f"{where}{key}", f"SCMP_ACT_NOTIFY {NO_AGENT}")
    if name in NUMBERED_ACTIONS:
        number = errno.EPERM if number is None else _uint(number, f"{where}{errno_key}", 16)
        return NUMBERED_ACTIONS[name](number)
    if name not in ACTIONS:
        _fail(f"{where}{key}", f"unknown action {name!r} (one of {', '.join([*ACTIONS, *NUMBERED_ACTIONS])})")
    if number is not None:
        _fail(f"{where}{errno_key}", f"{name} takes no errno (only SCMP_ACT_ERRNO and SCMP_ACT_TRACE do)")
    return ACTIONS[name]


def _architecture(value: Any, field: str) -> str:
    name = _string(value, field)
    libseccomp_name = name.removeprefix("SCMP_ARCH_").lower()
    if not name.startswith("SCMP_ARCH_") or not native.seccomp_arch(libseccomp_name):
        _fail(field, f"unknown architecture {name!r} (SCMP_ARCH_X86_64, SCMP_ARCH_X86, SCMP_ARCH_AARCH64...)")
    return libseccomp_name


def _flag(value: Any, field: str) -> str:
    name = _string(value, field)
    if name == "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV":
        _fail(field, f"{name} {NO_AGENT}")
    if name not in FLAGS:
        _fail(field, f"unknown flag {name!r} (one of {', '.join(FLAGS)})")
    return name


def _comparison(value: Any, field: str) -> tuple[int, int, int, int]:
    arg = _object(value, field, {"index", "value", "valueTwo", "op"}, required=("index", "value", "op"))
    index = _uint(arg["index"], f"{field}.index", 64)
    if index >= ARGUMENTS:
        _fail(f"{field}.index", f"a syscall's arguments are 0 to {ARGUMENTS - 1}, not {index}")
    op = _string(arg["op"], f"{field}.op")
    if op not in OPERATORS:
        _fail(f"{field}.op", f"unknown operator {op!r} (one of {', '.join(OPERATORS)})")
    value_two = arg.get("valueTwo")
    return (index, OPERATORS[op], _uint(arg["value"], f"{field}.value", 64),
            0 if value_two is None else _uint(value_two, f"{field}.valueTwo", 64))


def _rule(value: Any, field: str) -> Rule:
    call = _object(value, field, _SYSCALL_KEYS, required=("names", "action"))
    names = _list(call["names"], f"{field}.names")
    if not names:
        _fail(f"{field}.names", "must name at least one syscall")
    action = _action(call, "action", "errnoRet", field)
    args = _list(call.get("args"), f"{field}.args")
    return Rule(field, tuple(_string(name, f"{field}.names[{i}]") for i, name in enumerate(names)), action,
                tuple(_comparison(arg, f"{field}.args[{i}]") for i, arg in enumerate(args)))


def parse(text: str) -> Profile:
    """Check an OCI ``linux.seccomp`` object (JSON text) against the spec: SpecError names the field."""
    top = _object(_json(text), "", _TOP_KEYS, required=("defaultAction",))
    default = _action(top, "defaultAction", "defaultErrnoRet", "")
    for key in ("listenerPath", "listenerMetadata"):  # only used with SCMP_ACT_NOTIFY, refused above
        if top.get(key) is not None and not isinstance(top[key], str):
            _fail(key, "must be a string")
    arches = _list(top.get("architectures"), "architectures")
    flags = _list(top.get("flags"), "flags")
    calls = _list(top.get("syscalls"), "syscalls")
    return Profile(default, tuple(_architecture(a, f"architectures[{i}]") for i, a in enumerate(arches)),
                   tuple(_flag(f, f"flags[{i}]") for i, f in enumerate(flags)),
                   tuple(_rule(c, f"syscalls[{i}]") for i, c in enumerate(calls)))


# -- building and loading --------------------------------------------------------------------------


def build(profile: Profile) -> native.SeccompFilter:
    """The profile as a libseccomp filter. libseccomp's own objections (a flag this kernel lacks, two rules
    that say different things of the same call) are SpecErrors naming the field."""
    filt = native.SeccompFilter(profile.default_action)
    try:
        filt.set_attr(native.SCMP_FLTATR_CTL_NNP, 0)  # no_new_privs is lock_down's to set, not libseccomp's
        for i, name in enumerate(profile.flags):
            try:
                filt.set_attr(FLAGS[name][1], 1)
            except OSError as exc:
                _fail(f"flags[{i}]", f"{name} is not supported here ({os.strerror(exc.errno or 0)})")
        for arch in profile.architectures:
            filt.add_arch(arch)
        if sum(len(rule.names) for rule in profile.rules) > TREE_FROM:
            filt.set_attr(native.SCMP_FLTATR_CTL_OPTIMIZE, 2)
        for rule in profile.rules:
            if rule.action != profile.default_action:
                _add(filt, rule)
    except BaseException:
        filt.close()
        raise
    return filt


def _add(filt: native.SeccompFilter, rule: Rule) -> None:
    indexes = [cmp[0] for cmp in rule.comparisons]
    together = len(set(indexes)) == len(indexes)  # else one rule per comparison, as runc and crun do
    groups = [rule.comparisons] if together else [(cmp,) for cmp in rule.comparisons]
    for name in rule.names:
        number = native.seccomp_syscall(name)
        if number == native.NR_SCMP_ERROR:  # unknown to this libseccomp: skipped, as runc does
            continue
        for comparisons in groups:
            try:
                filt.add_rule_all(rule.action, number, comparisons)
            except OSError as exc:
                _fail(rule.field, f"libseccomp refused the rule for {name} ({os.strerror(exc.errno or 0)})")


def _compile(profile: Profile) -> bytes:
    return seccomp.compile_filter(build(profile))


def program(text: str) -> tuple[bytes, int]:
    """The profile's BPF program (compiled once per host and profile, then read from PISH_LIB/seccomp) and
    the flags to load it with."""
    profile = parse(text)
    key = seccomp.cache_key("oci", text, Path(__file__).read_bytes())
    return seccomp.cached(key, lambda: _compile(profile)), profile.load_flags


def check_profile(text: str) -> None:
    """Raise SpecError, naming the field, unless ``text`` is an OCI ``linux.seccomp`` object pish can apply:
    the JSON is checked and compiled (which fills the cache ``prepare`` reads)."""
    program(text)


#: Compiled programs and their flags, by profile text: filled by ``prepare`` before the fork, so the
#: container's init finds its program in the memory it inherited and only has to load it.
_prepared: dict[str, tuple[bytes, int]] = {}


def prepare(text: str) -> None:
    """Compile (or read) the program before forking the process that will load it."""
    _prepared[text] = program(text)


def load(text: str) -> None:
    """Load the profile into this process (and so into all it will exec). Without ``prepare`` first, it
    is compiled here, without the cache: the init may no longer see pish's files."""
    prepared = _prepared.get(text)
    if prepared is None:
        profile = parse(text)
        prepared = _compile(profile), profile.load_flags
    native.seccomp_load_bpf(*prepared)


# -- docker's profile files ------------------------------------------------------------------------

#: platform.machine() -> docker's name for it (Go's GOARCH, as ``includes.arches`` says it) and the OCI
#: name of the native architecture (``archMap``'s key).
MACHINES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "i686": ("x86", "SCMP_ARCH_X86"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
}
_DOCKER_SYSCALL_KEYS = {*_SYSCALL_KEYS, "name", "comment", "includes", "excludes"}
_CONDITION_KEYS = {"arches", "caps", "minKernel"}


def from_docker(text: str, caps: Iterable[str]) -> str | None:
    """A docker profile file (``--security-opt seccomp=FILE``) as the OCI object, for a container holding
    ``caps``, made the way dockerd's ``setupSeccomp`` makes it: ``archMap`` gives the native architecture
    and its sub-architectures; a ``syscalls`` entry is kept or left out by its ``includes`` and ``excludes``
    (``arches``, ``caps``, ``minKernel``); ``name`` becomes ``names``; ``comment`` goes. None for a profile
    with neither ``defaultAction`` nor ``syscalls``, which docker takes as no filter at all."""
    top = _object(_json(text), "", {*_TOP_KEYS, "archMap", "comment"})
    if not top.get("defaultAction") and not top.get("syscalls"):
        return None
    if top.get("architectures") and top.get("archMap"):
        _fail("archMap", "use either architectures or archMap, not both")
    machine = platform.machine()
    docker_arch, native_arch = MACHINES.get(machine, (machine, ""))
    out = {key: value for key, value in top.items() if key not in ("archMap", "comment")}
    for i, entry in enumerate(_list(top.get("archMap"), "archMap")):
        field = f"archMap[{i}]"
        arch = _object(entry, field, {"architecture", "subArchitectures"}, required=("architecture",))
        if arch["architecture"] == native_arch:
            subarches = _list(arch.get("subArchitectures"), f"{field}.subArchitectures")
            out["architectures"] = [native_arch, *subarches]
            break
    held = set(caps)
    kept = []
    for i, entry in enumerate(_list(top.get("syscalls"), "syscalls")):
        field = f"syscalls[{i}]"
        call = dict(_object(entry, field, _DOCKER_SYSCALL_KEYS))
        if call.get("name") is not None:
            if call.get("names"):
                _fail(f"{field}.name", "use either name or names, not both")
            call["names"] = [call["name"]]
        call = {key: value for key, value in call.items() if key in _SYSCALL_KEYS}
        _rule(call, field)  # checked here, where the field's index is still the file's
        if _applies(entry, field, docker_arch, held):
            kept.append(call)
    out["syscalls"] = kept
    return json.dumps(out)


def _applies(call: dict[str, Any], field: str, arch: str, caps: set[str]) -> bool:
    """Docker's conditions on an entry: ``excludes`` leaves it out if this architecture is listed, the
    container holds any of the capabilities or the kernel is at least ``minKernel``; ``includes`` keeps it
    only if the architecture is listed, the container holds every capability and the kernel is recent."""
    for key in ("includes", "excludes"):
        where = f"{field}.{key}"
        cond = _object(call.get(key) or {}, where, _CONDITION_KEYS)
        arches, needed = (_strings(cond.get(name), f"{where}.{name}") for name in ("arches", "caps"))
        minimum = cond.get("minKernel")
        recent = None if minimum is None else _kernel_at_least(minimum, f"{where}.minKernel")
        if key == "excludes" and (arch in arches or needed & caps or recent):
            return False
        if key == "includes" and ((arches and arch not in arches) or not needed <= caps or recent is False):
            return False
    return True


def _strings(value: Any, field: str) -> set[str]:
    return {_string(item, f"{field}[{i}]") for i, item in enumerate(_list(value, field))}


def _version(release: str) -> tuple[int, ...] | None:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return tuple(int(part or 0) for part in match.groups()) if match else None


def _kernel_at_least(value: Any, field: str) -> bool:
    wanted = _version(_string(value, field))
    if wanted is None:
        _fail(field, f"{value!r} is not a kernel version (like 4.8)")
    running = _version(os.uname().release)
    return running is not None and running >= wanted
