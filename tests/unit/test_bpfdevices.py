"""bpfdevices without a kernel: rule parsing, instruction encoding, and what the generated program does.

What the program does is checked by running it here, in ``run``: a tiny interpreter for the few
instructions the generator emits, with the kernel's semantics (32-bit ALU results are zero-extended,
loads of a u32 are zero-extended, a jump lands on ``pc + 1 + off``). The integration test checks the
same rules against the real kernel.
"""

from __future__ import annotations

import itertools
import re
import struct
import sys

import pytest

from pish_core.errors import SpecError
from pish_core.security import devices
from pish_drivers.limits import bpfdevices as bd
from pish_drivers.limits.bpfdevices import Insn, Rule

MKNOD, READ, WRITE = bd.BPF_DEVCG_ACC_MKNOD, bd.BPF_DEVCG_ACC_READ, bd.BPF_DEVCG_ACC_WRITE
BLOCK, CHAR = bd.BPF_DEVCG_DEV_BLOCK, bd.BPF_DEVCG_DEV_CHAR
U64 = (1 << 64) - 1


def run(insns: list[Insn], dev_type: int, access: int, major: int, minor: int) -> int:
    """Run a device program on one ``struct bpf_cgroup_dev_ctx``; return r0."""
    ctx = struct.pack("=III", access << 16 | dev_type, major, minor)
    regs = [0] * 11
    pc, steps = 0, 0
    while True:
        steps += 1
        assert steps < 10_000 and 0 <= pc < len(insns), "ran off the program"
        i = insns[pc]
        pc += 1
        if i.code == bd.BPF_LDX | bd.BPF_MEM | bd.BPF_W:
            assert i.src == bd.R1 and i.off in (0, 4, 8), "loads only from the context"
            regs[i.dst] = struct.unpack_from("=I", ctx, i.off)[0]
        elif i.code == bd.BPF_ALU | bd.BPF_AND | bd.BPF_K:
            regs[i.dst] = regs[i.dst] & i.imm & 0xFFFFFFFF
        elif i.code == bd.BPF_ALU | bd.BPF_RSH | bd.BPF_K:
            regs[i.dst] = (regs[i.dst] & 0xFFFFFFFF) >> i.imm
        elif i.code == bd.BPF_ALU | bd.BPF_MOV | bd.BPF_K:
            regs[i.dst] = i.imm & 0xFFFFFFFF
        elif i.code == bd.BPF_ALU | bd.BPF_MOV | bd.BPF_X:
            regs[i.dst] = regs[i.src] & 0xFFFFFFFF
        elif i.code == bd.BPF_JMP | bd.BPF_JNE | bd.BPF_K:
            if regs[i.dst] != i.imm & U64:  # the immediate is sign-extended to 64 bits
                pc += i.off
        elif i.code == bd.BPF_JMP | bd.BPF_JNE | bd.BPF_X:
            if regs[i.dst] != regs[i.src]:
                pc += i.off
        elif i.code == bd.BPF_JMP | bd.BPF_EXIT:
            return regs[bd.R0]
        else:
            raise AssertionError(f"unexpected instruction {i}")


def allowed(rules: list[str], dev_type: int, access: int, major: int, minor: int) -> bool:
    return run(bd.program(rules), dev_type, access, major, minor) == 1


# -- parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, rule", [
    ("c 1:3 rwm", Rule(CHAR, 1, 3, MKNOD | READ | WRITE)),
    ("c 136:* rwm", Rule(CHAR, 136, None, MKNOD | READ | WRITE)),
    ("b *:* m", Rule(BLOCK, None, None, MKNOD)),
    ("b 8:0 r", Rule(BLOCK, 8, 0, READ)),
    ("c 4095:1048575 wr", Rule(CHAR, 4095, 1048575, READ | WRITE)),
    ("  c   5:2   rw ", Rule(CHAR, 5, 2, READ | WRITE)),
    ("a *:* rwm", Rule(None, None, None, MKNOD | READ | WRITE)),
    ("a", Rule(None, None, None, MKNOD | READ | WRITE)),
])
def test_parse(text: str, rule: Rule) -> None:
    assert bd.parse(text) == rule


@pytest.mark.parametrize("text, why", [
    ("", "not TYPE"),
    ("c 1:3", "not TYPE"),
    ("c 1:3 rwm extra", "not TYPE"),
    ("x 1:3 rwm", "not TYPE"),
    ("C 1:3 rwm", "not TYPE"),
    ("c 1 rwm", "not TYPE"),
    ("c 1:3 rwx", "not TYPE"),
    ("c 1:3 ", "not TYPE"),
    ("c -1:3 rwm", "not TYPE"),
    ("c +1:3 rwm", "not TYPE"),
    ("c 1:0x3 rwm", "not TYPE"),
    ("c ١:3 rwm", "not TYPE"),  # an Arabic-Indic digit: str.isdigit() would take it
    ("c 1:3 rrw", "repeats"),
    ("c 4096:0 rwm", "major 4096 is above 4095"),
    ("c 1:1048576 rwm", "minor 1048576 is above 1048575"),
    ("a 1:3 rwm", "type a"),  # cgroup v1 would allow every device here: refuse rather than surprise
    ("a *:* r", "type a"),
])
def test_bad_rules_are_refused(text: str, why: str) -> None:
    with pytest.raises(SpecError, match=re.escape(why)):
        bd.parse(text)
    with pytest.raises(SpecError):
        bd.program(["c 1:3 rwm", text])


# -- encoding ------------------------------------------------------------------------------------------


def test_encoding_is_struct_bpf_insn() -> None:
    insn = Insn(0x55, dst=4, src=1, off=-2, imm=-136)
    raw = insn.encode()
    assert len(raw) == 8
    code, regs, off, imm = struct.unpack("=BBhi", raw)
    assert (code, off, imm) == (0x55, -2, -136)
    assert regs == (0x14 if sys.byteorder == "little" else 0x41)  # dst_reg:4 is the first bit-field


def test_known_encodings() -> None:
    """Byte for byte what clang's BPF backend (or runc's cilium/ebpf) emits, on little-endian."""
    if sys.byteorder != "little":
        pytest.skip("the bytes below are little-endian")
    assert Insn(bd.BPF_LDX | bd.BPF_MEM | bd.BPF_W, 2, 1, 0).encode().hex() == "6112000000000000"
    assert Insn(bd.BPF_ALU | bd.BPF_AND | bd.BPF_K, 2, imm=0xFFFF).encode().hex() == "54020000ffff0000"
    assert Insn(bd.BPF_ALU | bd.BPF_RSH | bd.BPF_K, 3, imm=16).encode().hex() == "7403000010000000"
    assert Insn(bd.BPF_ALU | bd.BPF_MOV | bd.BPF_X, 1, 3).encode().hex() == "bc31000000000000"
    assert Insn(bd.BPF_JMP | bd.BPF_JNE | bd.BPF_K, 4, off=2, imm=136).encode().hex() == "5504020088000000"
    assert Insn(bd.BPF_JMP | bd.BPF_JNE | bd.BPF_X, 1, 3, off=3).encode().hex() == "5d31030000000000"
    assert Insn(bd.BPF_ALU | bd.BPF_MOV | bd.BPF_K, 0, imm=1).encode().hex() == "b400000001000000"
    assert Insn(bd.BPF_JMP | bd.BPF_EXIT).encode().hex() == "9500000000000000"


def test_assemble_packs_back_to_back() -> None:
    insns = bd.program(list(devices.ALLOWLIST))
    raw = bd.assemble(insns)
    assert len(raw) == 8 * len(insns)
    assert [raw[i * 8:i * 8 + 8] for i in range(len(insns))] == [i.encode() for i in insns]


def test_out_of_range_fields_do_not_encode() -> None:
    with pytest.raises(struct.error):
        Insn(0x55, off=1 << 15).encode()
    with pytest.raises(struct.error):
        Insn(0xB4, imm=1 << 31).encode()


def test_the_module_docstring_shows_the_real_program() -> None:
    """The listing in the module's note is what the generator makes of ``c 136:* rw``."""
    doc = bd.__doc__ or ""
    listing = doc[doc.index("::\n"):doc.index("An allow-everything")].splitlines()[1:]
    shown = [re.split(r"\s{2,}", line.strip())[0] for line in listing if line.strip()]
    assert shown == bd.disassemble(bd.program(["c 136:* rw"])).splitlines()


# -- the program's shape --------------------------------------------------------------------------------


def test_jumps_land_on_the_next_block_and_stay_inside() -> None:
    insns = bd.program(list(devices.ALLOWLIST))
    starts = {len(bd.PROLOGUE)}
    for i, insn in enumerate(insns):
        if insn.code == bd.BPF_JMP | bd.BPF_EXIT and i + 1 < len(insns):
            starts.add(i + 1)
    for i, insn in enumerate(insns):
        if insn.code in bd.JUMPS:
            assert i + 1 + insn.off in starts, f"jump at {i} lands mid-block"
    assert insns[-2:] == bd._returns(0)


def test_every_instruction_can_run() -> None:
    """The verifier refuses dead code: every instruction must be reachable on some path."""
    for rules in ([], ["c 1:3 rwm"], list(devices.ALLOWLIST), ["b *:* m", "c *:* rwm"]):
        insns = bd.program(rules)
        seen, todo = set(), [0]
        while todo:
            pc = todo.pop()
            if pc in seen:
                continue
            seen.add(pc)
            insn = insns[pc]
            if insn.code == bd.BPF_JMP | bd.BPF_EXIT:
                continue
            todo.append(pc + 1)
            if insn.code in bd.JUMPS:
                todo.append(pc + 1 + insn.off)
        assert seen == set(range(len(insns))), rules


def test_allow_all_is_just_return_one() -> None:
    assert bd.program([devices.ALLOW_ALL]) == bd._returns(1)
    assert bd.program(["c 1:3 rwm", "a"]) == bd._returns(1)  # nothing may follow an unconditional allow


def test_rwm_and_wildcards_emit_no_tests() -> None:
    assert bd._block(bd.parse("c *:* rwm")) == [
        Insn(bd.BPF_JMP | bd.BPF_JNE | bd.BPF_K, bd.TYPE, off=2, imm=CHAR), *bd._returns(1)]


# -- what the program decides ---------------------------------------------------------------------------


ANY_ACCESS = range(1, 8)  # every non-empty set of m, r, w


def test_default_allowlist() -> None:
    rules = list(devices.ALLOWLIST)
    for access in ANY_ACCESS:
        for major, minor in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, 0), (136, 99)]:
            assert allowed(rules, CHAR, access, major, minor)
            assert not allowed(rules, BLOCK, access, major, minor)  # same numbers, block: denied
        for major, minor in [(1, 1), (1, 2), (1, 4), (5, 1), (4, 0), (10, 200), (137, 0), (0, 0)]:
            assert not allowed(rules, CHAR, access, major, minor)  # /dev/mem, /dev/kmem, console, tun...
        for major, minor in [(8, 0), (7, 0), (253, 0), (254, 0), (259, 0)]:
            assert not allowed(rules, BLOCK, access, major, minor)  # disks, loop, device-mapper, nvme


def test_no_rules_denies_everything() -> None:
    for dev_type, access in itertools.product((BLOCK, CHAR), ANY_ACCESS):
        assert not allowed([], dev_type, access, 1, 3)


def test_allow_all_allows_everything() -> None:
    for dev_type, access in itertools.product((BLOCK, CHAR), ANY_ACCESS):
        assert allowed([devices.ALLOW_ALL], dev_type, access, 8, 0)


def test_access_must_be_a_subset() -> None:
    rules = ["c 1:3 r", "b 8:* mw"]
    assert allowed(rules, CHAR, READ, 1, 3)
    assert not allowed(rules, CHAR, WRITE, 1, 3)
    assert not allowed(rules, CHAR, READ | WRITE, 1, 3)  # an O_RDWR open asks for both
    assert not allowed(rules, CHAR, MKNOD, 1, 3)
    assert allowed(rules, BLOCK, MKNOD, 8, 17)
    assert allowed(rules, BLOCK, MKNOD | WRITE, 8, 0)
    assert not allowed(rules, BLOCK, READ, 8, 0)


def test_rules_add_up() -> None:
    """A request one rule refuses may be allowed by a later one: each block falls through to the next."""
    rules = ["c 10:200 r", "c 10:* w", "c *:229 m"]
    assert allowed(rules, CHAR, READ, 10, 200)
    assert allowed(rules, CHAR, WRITE, 10, 200)
    assert not allowed(rules, CHAR, READ | WRITE, 10, 200)  # no single rule gives both
    assert allowed(rules, CHAR, MKNOD, 42, 229)
    assert not allowed(rules, CHAR, MKNOD, 10, 200)


def test_wildcard_minor_and_major() -> None:
    assert allowed(["c 136:* rwm"], CHAR, READ, 136, 1048575)
    assert allowed(["c *:7 rwm"], CHAR, READ, 4095, 7)
    assert not allowed(["c *:7 rwm"], CHAR, READ, 1, 8)


def test_unknown_device_type_is_denied() -> None:
    """The kernel only sends block (1) or char (2); anything else matches no typed rule."""
    assert not allowed(list(devices.ALLOWLIST), 3, READ, 1, 3)


def test_verifier_reason_skips_the_statistics() -> None:
    log = "0: R1=ctx() R10=fp0\n0: (95) exit\nR0 !read_ok\nprocessed 1 insns (limit 1000000) max_states\n\n"
    assert bd.verifier_reason(log) == "R0 !read_ok"
    assert bd.verifier_reason("") == ""
