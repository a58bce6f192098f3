"""Python face of the native helper (``native/pish_native.c``, compiled by cffi at install time).

Each function raises OSError with the real errno, like the ``os`` module does.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from pish_core._native import ffi, lib  # type: ignore[import-not-found,import-untyped,unused-ignore]

# <sched.h> / <sys/mount.h> / <sys/prctl.h> constants
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_MOVE = 8192
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_UNBINDABLE = 1 << 17
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_MANDLOCK = 64
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <seccomp.h> (libseccomp)
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_KILL = SCMP_ACT_KILL_THREAD
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_NOTIFY = 0x7FC00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_FLTATR_CTL_LOG = 6
SCMP_FLTATR_CTL_SSB = 7
SCMP_FLTATR_CTL_OPTIMIZE = 8
SCMP_CMP_NE = 1
SCMP_CMP_LT = 2
SCMP_CMP_LE = 3
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_GT = 6
SCMP_CMP_MASKED_EQ = 7
NR_SCMP_ERROR = -1

# <linux/seccomp.h>: flags of seccomp(SECCOMP_SET_MODE_FILTER)
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_FILTER_FLAG_LOG = 2
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4


def SCMP_ACT_ERRNO(err: int) -> int:  # the C macro's name
    return 0x00050000 | (err & 0xFFFF)


def SCMP_ACT_TRACE(msg: int) -> int:  # the C macro's name
    return 0x7FF00000 | (msg & 0xFFFF)


# <linux/mount.h>: the new mount API
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_RDONLY = 0x00000001


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}", path)
    return ret


def _c(s: str | None) -> object:
    return ffi.NULL if s is None else s.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(lib.pish_mount(_c(source), _c(target), _c(fstype), flags, _c(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(lib.pish_umount2(_c(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(lib.pish_pivot_root(_c(new_root), _c(put_old)), "pivot_root", new_root)


def unshare(flags: int) -> None:
    _check(lib.pish_unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(lib.pish_setns(fd, nstype), "setns")


def fork_into_cgroup(cgroup_fd: int) -> int:
    """``os.fork``, the child born in the cgroup v2 directory ``cgroup_fd`` (clone3 CLONE_INTO_CGROUP): no
    move afterwards, so none of the RCU wait a move costs. From a process with one thread only (see
    native/pish_native.c). OSError (nothing forked) where the kernel lacks it (Linux < 5.7) or refuses."""
    pid: int = lib.pish_fork_into_cgroup(cgroup_fd)
    if pid < 0:
        raise OSError(-pid, f"clone3 into a cgroup: {os.strerror(-pid)}")
    return pid


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(lib.pish_sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(lib.pish_prctl(option, arg2, arg3, arg4, arg5), "prctl")


# -- capabilities ------------------------------------------------------------------------------------


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread, as 64-bit masks."""
    data = ffi.new("uint32_t[6]")
    _check(lib.pish_capget(data), "capget")
    effective, permitted, inheritable = (int(data[i]) | int(data[i + 3]) << 32 for i in range(3))
    return effective, permitted, inheritable


def capset(effective: int, permitted: int, inheritable: int) -> None:
    data = ffi.new("uint32_t[6]", [(mask >> shift) & 0xFFFFFFFF for shift in (0, 32)
                                   for mask in (effective, permitted, inheritable)])
    _check(lib.pish_capset(data), "capset")


# -- seccomp, through libseccomp ---------------------------------------------------------------------


class SeccompFilter:
    """A libseccomp filter context: add rules, then ``load`` it into this process."""

    def __init__(self, default_action: int) -> None:
        self._ctx = lib.pish_seccomp_init(default_action)
        if self._ctx == ffi.NULL:
            raise OSError(22, "seccomp_init failed")

    def close(self) -> None:
        if self._ctx != ffi.NULL:
            lib.pish_seccomp_release(self._ctx)
            self._ctx = ffi.NULL

    def add_arch(self, name: str) -> None:
        arch = seccomp_arch(name)
        if arch == 0:
            raise OSError(22, f"libseccomp does not know the architecture {name}")
        ret = lib.pish_seccomp_arch_add(self._ctx, arch)
        if ret != -17:  # EEXIST: it is the native one, already there
            _check(ret, "seccomp_arch_add")

    def set_attr(self, attr: int, value: int) -> None:
        _check(lib.pish_seccomp_attr_set(self._ctx, attr, value), "seccomp_attr_set")

    def add_rule(self, action: int, syscall: int, arg: int | None = None, op: int = 0,
                 datum_a: int = 0, datum_b: int = 0) -> None:
        if arg is None:
            _check(lib.pish_seccomp_rule_add(self._ctx, action, syscall), "seccomp_rule_add")
        else:
            _check(lib.pish_seccomp_rule_add_cmp(self._ctx, action, syscall, arg, op, datum_a, datum_b),
                   "seccomp_rule_add")

    def add_rule_all(self, action: int, syscall: int, cmps: Sequence[tuple[int, int, int, int]]) -> None:
        """A rule that matches when every comparison holds: each is (argument index, SCMP_CMP_* operator,
        datum_a, datum_b), as in libseccomp's ``seccomp_rule_add_array``."""
        flat = ffi.new("uint64_t[]", [number for cmp in cmps for number in cmp] or [0])
        ret = lib.pish_seccomp_rule_add_cmps(self._ctx, action, syscall, len(cmps), flat)
        _check(ret, "seccomp_rule_add")

    def load(self) -> None:
        _check(lib.pish_seccomp_load(self._ctx), "seccomp_load")

    def export_bpf(self) -> bytes:
        """The compiled BPF program, to load later with ``seccomp_load_bpf``."""
        fd = os.memfd_create("pish-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.pish_seccomp_export_bpf(self._ctx, fd), "seccomp_export_bpf")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


def seccomp_load_bpf(program: bytes, flags: int = 0) -> None:
    """Load a BPF program that libseccomp compiled (``SeccompFilter.export_bpf``) into this process, with
    seccomp(2)'s SECCOMP_FILTER_FLAG_* ``flags``."""
    if not program or len(program) % 8:
        raise OSError(22, "not a seccomp BPF program")
    thread = _check(lib.pish_seccomp_load_bpf(program, len(program), flags), "seccomp load")
    if thread:  # only with TSYNC
        raise OSError(11, f"seccomp load: thread {thread} could not be synchronized")


def seccomp_version() -> tuple[int, int, int]:
    """The version of the libseccomp in use."""
    version = ffi.new("unsigned int[3]")
    lib.pish_seccomp_version(version)
    return int(version[0]), int(version[1]), int(version[2])


def seccomp_arch(name: str) -> int:
    """libseccomp's token for the architecture ``name`` ("x86_64", "x32", "aarch64"...), 0 if unknown."""
    return int(lib.pish_seccomp_arch_resolve_name(name.encode()))


def seccomp_syscall(name: str) -> int:
    """The syscall number of ``name`` (negative pseudo-numbers for other-arch-only calls), or NR_SCMP_ERROR."""
    return int(lib.pish_seccomp_syscall_resolve_name(name.encode()))


# -- the new mount API ------------------------------------------------------------------------------


def open_tree(path: str, flags: int, dfd: int = AT_FDCWD) -> int:
    return _check(lib.pish_open_tree(dfd, _c(path), flags), "open_tree", path)


def mount_setattr_idmap(fd: int, userns_fd: int, flags: int = AT_EMPTY_PATH) -> None:
    """Make the detached mount ``fd`` id-mapped through the user namespace ``userns_fd``."""
    attr = ffi.new("uint64_t[4]", [MOUNT_ATTR_IDMAP, 0, 0, userns_fd])  # struct mount_attr
    _check(lib.pish_mount_setattr(fd, b"", flags, attr, ffi.sizeof(attr)), "mount_setattr")


def mount_setattr_readonly(path: str) -> None:
    """Make the mount at ``path`` and every mount below it read-only (a plain remount does only the top)."""
    attr = ffi.new("uint64_t[4]", [MOUNT_ATTR_RDONLY, 0, 0, 0])  # struct mount_attr: attr_set
    _check(lib.pish_mount_setattr(AT_FDCWD, _c(path), AT_RECURSIVE, attr, ffi.sizeof(attr)), "mount_setattr", path)


def move_mount(fd: int, target: str) -> None:
    _check(lib.pish_move_mount(fd, b"", AT_FDCWD, _c(target), MOVE_MOUNT_F_EMPTY_PATH), "move_mount", target)


# -- bpf(2): the cgroup v2 device filter (pish_drivers/limits/bpfdevices.py assembles the program) ---------

# <linux/bpf.h>
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # enum bpf_attach_type
BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_QUERY_EFFECTIVE = 1 << 0


def bpf_prog_load(prog_type: int, insns: bytes, license: str, log: bytearray | None = None) -> int:
    """Load a program (``insns``: packed struct bpf_insn) and return its fd. With ``log``, the verifier
    writes its log there (NUL-terminated), which says why a program was refused."""
    if not insns or len(insns) % 8:
        raise OSError(22, "not a BPF program")
    buf, level = (ffi.from_buffer(log), 1) if log else (ffi.NULL, 0)
    return _check(lib.pish_bpf_prog_load(prog_type, insns, len(insns) // 8, license.encode(), level, buf,
                                         len(log) if log else 0), "bpf(BPF_PROG_LOAD)")


def bpf_prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> None:
    _check(lib.pish_bpf_prog_attach(prog_fd, target_fd, attach_type, flags), "bpf(BPF_PROG_ATTACH)")


def bpf_prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    _check(lib.pish_bpf_prog_detach(prog_fd, target_fd, attach_type), "bpf(BPF_PROG_DETACH)")


def bpf_prog_query(target_fd: int, attach_type: int, query_flags: int = 0) -> list[int]:
    """The ids of the programs attached to ``target_fd`` (with BPF_F_QUERY_EFFECTIVE: also those
    inherited from its ancestors, the ones that run)."""
    count = ffi.new("uint32_t *", 64)
    while True:
        ids, flags = ffi.new("uint32_t[]", count[0]), ffi.new("uint32_t *")
        ret = lib.pish_bpf_prog_query(target_fd, attach_type, query_flags, flags, ids, count)
        if ret != -28:  # ENOSPC: more than that; ``count`` now says how many
            _check(ret, "bpf(BPF_PROG_QUERY)")
            return [int(ids[i]) for i in range(count[0])]


def bpf_prog_get_fd_by_id(prog_id: int) -> int:
    """An fd of the loaded program ``prog_id`` (ENOENT once the kernel has freed it)."""
    return _check(lib.pish_bpf_prog_get_fd_by_id(prog_id), "bpf(BPF_PROG_GET_FD_BY_ID)")
