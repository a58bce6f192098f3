"""bpfdevices: the device allowlist on cgroup v2, as a small eBPF program (what runc and crun do).

cgroup v1 has a ``devices`` controller with ``devices.allow`` and ``devices.deny`` files. cgroup v2 has
no such files: instead, a program of type BPF_PROG_TYPE_CGROUP_DEVICE is attached to the cgroup, and
the kernel runs it every time a process in the cgroup (or below it) makes a device node with mknod(2) or
opens one. The program returns 1 to allow that, 0 to refuse it (the call fails with EPERM).

How the program is made from the rules
--------------------------------------
The rules are the ones ``devices.allow`` takes (``pish_core/security/devices.py``): ``TYPE MAJOR:MINOR
ACCESS``, for example ``c 136:* rw``, where TYPE is ``c`` (char) or ``b`` (block), ``*`` is any number
and ACCESS is some of ``r`` (read), ``w`` (write) and ``m`` (mknod). ``a *:* rwm`` allows everything
(``--privileged``). They are all allow rules; what no rule allows is denied.

The kernel hands the program a ``struct bpf_cgroup_dev_ctx`` in register r1: three u32, ``access_type``
(the device type in its low 16 bits: 1 block, 2 char; the access asked for in its high 16 bits: 1 mknod,
2 read, 4 write; an open for reading and writing asks for 6), ``major`` and ``minor``. The program
first loads them into r2 (type), r3 (access), r4 (major) and r5 (minor); then comes one block of
instructions per rule, in order; last comes ``deny``. A block compares what the rule names, and at the
first mismatch jumps to the next block; if nothing mismatched, it returns 1. A ``*`` is no comparison at
all, and neither is ``rwm`` (any access is allowed). The access test is "nothing asked that the rule
does not give": ``(asked & allowed) == asked``. The rule ``c 136:* rw`` becomes (``w`` is the low 32
bits of a register; ``goto +N`` skips N instructions)::

    r2 = *(u32 *)(r1 + 0)      the type: access_type & 0xffff
    w2 &= 0xffff
    r3 = *(u32 *)(r1 + 0)      the access: access_type >> 16
    w3 >>= 16
    r4 = *(u32 *)(r1 + 4)      major
    r5 = *(u32 *)(r1 + 8)      minor
    if r2 != 2 goto +6         block of "c 136:* rw": not a char device: next rule
    w1 = w3
    w1 &= 0x6                  keep what the rule gives (r 2 | w 4) ...
    if r1 != r3 goto +3        ... if that is less than what was asked: next rule
    if r4 != 136 goto +2       another major: next rule (no test of the minor: it is *)
    w0 = 1
    exit                       allow
    w0 = 0                     deny, what no rule allowed
    exit

An allow-everything rule makes the whole program ``w0 = 1; exit``: the verifier refuses instructions
that can never run, so nothing may follow it. ``python -m pish_drivers.limits.bpfdevices RULE...``
prints the program for any rules.

Each instruction is a ``struct bpf_insn`` of 8 bytes: the opcode (u8), the destination and source
registers (4 bits each), a signed 16-bit jump offset and a signed 32-bit immediate. ``Insn`` packs one.

The program lives as long as something refers to it: ``attach`` loads it, attaches it and closes its fd,
so from then on only the cgroup holds it, and it goes away when the cgroup is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

from pish_core.errors import DriverError, SpecError
from pish_core.value import Value, value

#: The licence the kernel is told; only GPL-compatible programs may call GPL-only helpers (we call none).
LICENSE = "Apache"

# <linux/bpf.h> and <linux/bpf_common.h>: the few opcodes the program uses.
BPF_ALU, BPF_JMP, BPF_LDX = 0x04, 0x05, 0x01  # instruction classes (BPF_ALU: on 32-bit halves)
BPF_W, BPF_MEM = 0x00, 0x60  # load a u32 from memory
BPF_K, BPF_X = 0x00, 0x08  # the operand is the immediate / the source register
BPF_AND, BPF_RSH, BPF_MOV = 0x50, 0x70, 0xB0
BPF_JNE, BPF_EXIT = 0x50, 0x90
JUMPS = (BPF_JMP | BPF_JNE | BPF_K, BPF_JMP | BPF_JNE | BPF_X)
# struct bpf_cgroup_dev_ctx
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4

TYPES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
ACCESS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
ALL_ACCESS = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE
#: Linux device numbers have 12 bits of major and 20 of minor (MAJOR(), MINOR() in <linux/kdev_t.h>).
MAX_MAJOR, MAX_MINOR = (1 << 12) - 1, (1 << 20) - 1

#: The registers: r0 the result, r1 the context (then a scratch register), r2..r5 what it holds.
R0, R1, R2, R3, R4, R5 = range(6)
TYPE, ACCESS_ASKED, MAJOR, MINOR = R2, R3, R4, R5


@value
class Insn(Value):
    """One ``struct bpf_insn``."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        # dst_reg:4 then src_reg:4: C bit-fields fill a byte from its low bits on little-endian machines,
        # from its high bits on big-endian ones.
        regs = self.dst | (self.src << 4) if sys.byteorder == "little" else (self.dst << 4) | self.src
        return struct.pack("=BBhi", self.code, regs, self.off, self.imm)

    def __str__(self) -> str:
        """Much as ``bpftool prog dump xlated`` shows it."""
        d, s = self.dst, self.src
        return {
            BPF_LDX | BPF_MEM | BPF_W: f"r{d} = *(u32 *)(r{s} + {self.off})",
            BPF_ALU | BPF_AND | BPF_K: f"w{d} &= {self.imm:#x}",
            BPF_ALU | BPF_RSH | BPF_K: f"w{d} >>= {self.imm}",
            BPF_ALU | BPF_MOV | BPF_K: f"w{d} = {self.imm}",
            BPF_ALU | BPF_MOV | BPF_X: f"w{d} = w{s}",
            BPF_JMP | BPF_JNE | BPF_K: f"if r{d} != {self.imm} goto +{self.off}",
            BPF_JMP | BPF_JNE | BPF_X: f"if r{d} != r{s} goto +{self.off}",
            BPF_JMP | BPF_EXIT: "exit",
        }.get(self.code, f"(code {self.code:#04x} dst r{d} src r{s} off {self.off} imm {self.imm})")


@value
class Rule(Value):
    """One parsed allow rule: ``type`` a BPF_DEVCG_DEV_*, ``access`` BPF_DEVCG_ACC_* or-ed together.
    ``None`` is ``*``, and ``type`` None is ``a``, every device."""

    type: int | None
    major: int | None
    minor: int | None
    access: int


_RULE = re.compile(r"([abc]) (\*|\d+):(\*|\d+) ([rwm]+)", re.ASCII)


def parse(text: str) -> Rule:
    """``c 1:3 rwm`` -> Rule. SpecError for what ``devices.allow`` would not take, or takes to mean
    something else (in cgroup v1 ``a`` allows every device, whatever follows it, so only ``a``
    and ``a *:* rwm`` are taken here)."""
    words = text.split()
    if words == ["a"]:
        return Rule(None, None, None, ALL_ACCESS)
    match = _RULE.fullmatch(" ".join(words))
    if match is None:
        raise SpecError(f"device rule {text!r}: not TYPE MAJOR:MINOR ACCESS (c|b|a, a number or *, "
                        "some of rwm), as in 'c 1:3 rwm'")
    kind, major, minor, access = match.groups()
    if len(set(access)) != len(access):
        raise SpecError(f"device rule {text!r}: access {access!r} repeats a letter")
    if kind == "a" and (major, minor, access) != ("*", "*", "rwm"):
        raise SpecError(f"device rule {text!r}: type a (all devices) only as 'a *:* rwm'")
    rule = Rule(TYPES.get(kind), None if major == "*" else int(major), None if minor == "*" else int(minor),
                sum(ACCESS[letter] for letter in access))
    if rule.major is not None and rule.major > MAX_MAJOR:
        raise SpecError(f"device rule {text!r}: major {rule.major} is above {MAX_MAJOR}")
    if rule.minor is not None and rule.minor > MAX_MINOR:
        raise SpecError(f"device rule {text!r}: minor {rule.minor} is above {MAX_MINOR}")
    return rule


def _allows_all(rule: Rule) -> bool:
    return rule == Rule(None, None, None, ALL_ACCESS)


PROLOGUE = (
    Insn(BPF_LDX | BPF_MEM | BPF_W, TYPE, R1, 0),
    Insn(BPF_ALU | BPF_AND | BPF_K, TYPE, imm=0xFFFF),
    Insn(BPF_LDX | BPF_MEM | BPF_W, ACCESS_ASKED, R1, 0),
    Insn(BPF_ALU | BPF_RSH | BPF_K, ACCESS_ASKED, imm=16),
    Insn(BPF_LDX | BPF_MEM | BPF_W, MAJOR, R1, 4),
    Insn(BPF_LDX | BPF_MEM | BPF_W, MINOR, R1, 8),
)


def _returns(value: int) -> list[Insn]:
    return [Insn(BPF_ALU | BPF_MOV | BPF_K, R0, imm=value), Insn(BPF_JMP | BPF_EXIT)]


def _block(rule: Rule) -> list[Insn]:
    """The rule's tests, each ``goto next`` on a mismatch, then ``return 1``."""
    tests: list[Insn] = []  # the jump offsets are filled in below, once the block's length is known
    if rule.type is not None:
        tests.append(Insn(BPF_JMP | BPF_JNE | BPF_K, TYPE, imm=rule.type))
    if rule.access != ALL_ACCESS:
        tests += [Insn(BPF_ALU | BPF_MOV | BPF_X, R1, ACCESS_ASKED),
                  Insn(BPF_ALU | BPF_AND | BPF_K, R1, imm=rule.access),
                  Insn(BPF_JMP | BPF_JNE | BPF_X, R1, ACCESS_ASKED)]
    if rule.major is not None:
        tests.append(Insn(BPF_JMP | BPF_JNE | BPF_K, MAJOR, imm=rule.major))
    if rule.minor is not None:
        tests.append(Insn(BPF_JMP | BPF_JNE | BPF_K, MINOR, imm=rule.minor))
    block = tests + _returns(1)
    # A jump at index i lands on index i + 1 + off; "next" is the index just past the block.
    return [dataclasses.replace(insn, off=len(block) - i - 1) if insn.code in JUMPS else insn
            for i, insn in enumerate(block)]


def program(rules: Sequence[str]) -> list[Insn]:
    """The device filter for ``rules`` (SpecError for a bad one): allow what a rule allows, deny the rest."""
    parsed = [parse(text) for text in rules]
    if any(map(_allows_all, parsed)):
        return _returns(1)
    return [*PROLOGUE, *(insn for rule in parsed for insn in _block(rule)), *_returns(0)]


def assemble(insns: Sequence[Insn]) -> bytes:
    """The bytes bpf(BPF_PROG_LOAD) takes: the instructions, packed back to back."""
    return b"".join(insn.encode() for insn in insns)


def disassemble(insns: Sequence[Insn]) -> str:
    return "\n".join(map(str, insns))


# -- the kernel's part ------------------------------------------------------------------------------


def load(insns: Sequence[Insn]) -> int:
    """Load the program; return its fd. On refusal, OSError whose message ends with the verifier's
    reason. The first try passes no log buffer (the kernel then keeps no log, which is quicker); only a
    refused program is loaded again, with one, to learn why."""
    from pish_core import native

    code = assemble(insns)
    try:
        return native.bpf_prog_load(native.BPF_PROG_TYPE_CGROUP_DEVICE, code, LICENSE)
    except OSError as exc:
        log = bytearray(1 << 20)
        with contextlib.suppress(OSError):
            os.close(native.bpf_prog_load(native.BPF_PROG_TYPE_CGROUP_DEVICE, code, LICENSE, log))
        reason = verifier_reason(log.partition(b"\0")[0].decode(errors="replace"))
        raise OSError(exc.errno, f"{exc.strerror}: {reason}" if reason else exc.strerror) from None


def verifier_reason(log: str) -> str:
    """The last line of a verifier log that says something: the statistics line ("processed 3 insns
    (limit 1000000) ...") the kernel ends with is skipped."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    while lines and lines[-1].startswith("processed "):
        lines.pop()
    return lines[-1] if lines else ""


def attach(cgroup: Path, rules: Sequence[str]) -> None:
    """Make ``rules`` the device allowlist of ``cgroup`` and every cgroup below it, before any process is
    in it. The program's fd is closed here: the cgroup keeps the program, until it is removed.

    SpecError for a bad rule, DriverError if the kernel refuses."""
    from pish_core import native
    from pish_drivers.limits import label, log

    insns = program(rules)
    try:
        prog = load(insns)
    except OSError as exc:
        raise DriverError(f"cgroupv2: cannot load the device filter (eBPF): {exc.strerror}") from None
    try:
        target = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            log.info("allowing devices %s in cgroup %s (eBPF)", ", ".join(rules), label(cgroup))
            native.bpf_prog_attach(prog, target, native.BPF_CGROUP_DEVICE, native.BPF_F_ALLOW_MULTI)
        finally:
            os.close(target)
    except OSError as exc:
        raise DriverError(f"cgroupv2: cannot attach the device filter to {cgroup}: {exc.strerror}") from None
    finally:
        os.close(prog)


def available() -> str | None:
    """None if this process can load a device filter here, else why not. It tries: it loads the filter
    that denies everything, and closes it at once."""
    try:
        os.close(load(program([])))
    except (ImportError, AttributeError):
        return "the native helper has no bpf(2) support (reinstall pish: pip install -e .)"
    except OSError as exc:
        why = {
            errno.ENOSYS: "the kernel has no bpf(2) (CONFIG_BPF_SYSCALL)",
            errno.EINVAL: "the kernel has no cgroup device programs (CONFIG_CGROUP_BPF)",
            # Before Linux 5.11 a program's memory also counts against RLIMIT_MEMLOCK: EPERM when over.
            errno.EPERM: "it needs CAP_BPF or CAP_SYS_ADMIN in the host's user namespace",
        }.get(exc.errno or 0, exc.strerror)
        return f"cannot load an eBPF device filter: {why}"
    return None


if __name__ == "__main__":
    print(disassemble(program(sys.argv[1:])))
