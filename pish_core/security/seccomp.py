"""The default seccomp filter: docker's default profile, compiled by libseccomp and loaded before exec.
(A custom profile, ``--security-opt seccomp=FILE`` or an OCI bundle's, is ``profiles.py``'s; it shares the
cache of compiled programs kept here.)

The profile is an allowlist. A syscall not named below fails with EPERM; some are allowed only when the
container holds a capability (``mount`` with CAP_SYS_ADMIN, ``reboot`` with CAP_SYS_BOOT...), exactly as
in moby's ``profiles/seccomp/default.json``, which this module transcribes (the syscall names and the
conditions are docker's; the Python shape is ours). In effect the container cannot: load kernel modules
or kexec, use bpf or perf_event_open, manage keys (keyctl, add_key, request_key), mount or pivot_root,
create namespaces (unshare, setns, clone with a CLONE_NEW* flag), swapon/swapoff, reboot, set the clock,
use userfaultfd, acct, open_by_handle_at or AF_VSOCK sockets. ``clone3`` fails with ENOSYS instead, so a
libc falls back to ``clone``, whose flags the filter can see. ``ptrace`` is allowed: docker allows it on
kernels from 4.8, where it can no longer be used to bypass seccomp.

Building goes through libseccomp (via the cffi helper) rather than hand-assembled BPF: it knows every
architecture's syscall numbers, adds the 32-bit x86 and x32 ABIs on x86_64 (as docker's ``archMap``
does, so ``int 0x80`` is filtered too), and lays the rules out as a balanced tree. Names this libseccomp
does not know are left out, so those syscalls get EPERM: the safe side.
"""
from __future__ import annotations

import contextlib
import errno
import os
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from pish_core import native, paths

#: Always allowed (docker's first, unconditional rule).
_ALLOWED_TEXT = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32 clock_adjtime
clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create
epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2
execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex
futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32
getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid
getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch
inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit io_uring_enter io_uring_register
io_uring_setup ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64
madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap
mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal
pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2
prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink
readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename
renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity
sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send
sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area
set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd
signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx symlink
symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname
unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
"""
ALLOWED = tuple(_ALLOWED_TEXT.split())

#: Allowed on kernels from 4.8 (where ptrace can no longer bypass seccomp): every kernel pish runs on.
ALLOWED_FROM_4_8 = ("process_vm_readv", "process_vm_writev", "ptrace")

#: Allowed only for some architectures (os.uname().machine names, as platform.machine()).
ALLOWED_ON_ARCH = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "i686": ("modify_ldt",),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
                "set_tls"),
    "armv7l": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
               "set_tls"),
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache",),
}

#: The 32-bit ABIs a 64-bit kernel also runs, filtered with the same rules (docker's archMap).
SUB_ARCHES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",), "s390x": ("s390",)}

#: Allowed when the container holds the capability.
ALLOWED_WITH_CAP = (
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    ("CAP_SYS_ADMIN", ("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
                       "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
                       "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns",
                       "syslog", "umount", "umount2", "unshare")),
    ("CAP_SYS_BOOT", ("reboot",)),
    ("CAP_SYS_CHROOT", ("chroot",)),
    ("CAP_SYS_MODULE", ("delete_module", "init_module", "finit_module")),
    ("CAP_SYS_PACCT", ("acct",)),
    ("CAP_SYS_PTRACE", ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
                        "ptrace")),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYS_NICE", ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_BPF", ("bpf",)),
    ("CAP_PERFMON", ("perf_event_open",)),
)

#: personality(2) values docker allows: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26, and a query.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
AF_VSOCK = 40
#: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET: without CAP_SYS_ADMIN, clone must not set any.
CLONE_NAMESPACES = 0x7E020000


def build(caps: Iterable[str]) -> native.SeccompFilter:
    """The default profile for a container holding ``caps``, as a libseccomp filter ready to load."""
    held = set(caps)
    machine = os.uname().machine
    filt = native.SeccompFilter(native.SCMP_ACT_ERRNO(errno.EPERM))
    try:
        filt.set_attr(native.SCMP_FLTATR_CTL_NNP, 0)  # no_new_privs is ours to set (lock_down), not libseccomp's
        for arch in SUB_ARCHES.get(machine, ()):
            filt.add_arch(arch)
        allowed = [*ALLOWED, *ALLOWED_FROM_4_8, *ALLOWED_ON_ARCH.get(machine, ())]
        allowed += [name for cap, names in ALLOWED_WITH_CAP if cap in held for name in names]
        allowed = list(dict.fromkeys(allowed))
        for name in allowed:
            _add(filt, native.SCMP_ACT_ALLOW, name)
        _add_conditional(filt, set(allowed), machine)
    except BaseException:
        filt.close()
        raise
    return filt


def _add(filt: native.SeccompFilter, action: int, name: str, *cmp: int) -> None:
    number = native.seccomp_syscall(name)
    if number != native.NR_SCMP_ERROR:  # unknown to this libseccomp: it stays denied
        filt.add_rule(action, number, *cmp)


def _add_conditional(filt: native.SeccompFilter, allowed: set[str], machine: str) -> None:
    """The rules that look at arguments, and clone3's ENOSYS."""
    allow = native.SCMP_ACT_ALLOW
    _add(filt, allow, "socket", 0, native.SCMP_CMP_NE, AF_VSOCK)
    for value in PERSONALITIES:
        _add(filt, allow, "personality", 0, native.SCMP_CMP_EQ, value)
    if "clone" not in allowed:  # without CAP_SYS_ADMIN: clone, but not into new namespaces
        flags_arg = 1 if machine == "s390x" else 0  # s390 swaps clone's first two arguments
        _add(filt, allow, "clone", flags_arg, native.SCMP_CMP_MASKED_EQ, CLONE_NAMESPACES, 0)
    if "clone3" not in allowed:  # its flags sit in a struct seccomp cannot read: make libc fall back
        _add(filt, native.SCMP_ACT_ERRNO(errno.ENOSYS), "clone3")


#: Compiled programs, by capability set: filled by ``prepare`` in the supervisor before it forks, so the
#: child finds its program in the memory it inherited and only has to load it.
_prepared: dict[frozenset[str], bytes] = {}


def program(caps: Iterable[str]) -> bytes:
    """The default profile for ``caps`` as BPF, compiled by libseccomp once per host and kept in a file:
    building ~400 rules and compiling them costs ~10 ms, loading a compiled program nothing."""
    held = frozenset(caps)
    return cached(cache_key(sorted(held), Path(__file__).read_bytes()), lambda: compile_filter(build(held)))


def compile_filter(filt: native.SeccompFilter) -> bytes:
    """The BPF program of ``filt``, which this closes."""
    try:
        return filt.export_bpf()
    finally:
        filt.close()


def cache_key(*parts: object) -> str:
    """What a compiled program is made of: ``parts`` (the profile's sources) and what else shapes it on this
    host: the architecture, the kernel, the native helper and libseccomp."""
    uname = os.uname()
    return repr((parts, (uname.machine, uname.release, native.__file__, native.seccomp_version())))


def cached(key: str, compile_program: Callable[[], bytes]) -> bytes:
    """The program kept for ``key`` in PISH_LIB/seccomp, else ``compile_program()``, kept there.

    The file is named by a crc32 of the key and starts with the whole key, compared on every read: exact
    like a sha256 name, without importing hashlib (it loads OpenSSL, ~4 ms of every run)."""
    header = key.encode() + b"\n"  # a repr has no raw newline
    path = paths.seccomp_cache(f"{zlib.crc32(header):08x}")
    try:
        data = path.read_bytes()
        if data.startswith(header):
            return data[len(header):]
    except OSError:
        pass
    bpf = compile_program()
    with contextlib.suppress(OSError):  # a cache we cannot write (rootless, read-only) is no error
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(header + bpf)
        os.replace(tmp, path)
    return bpf


def prepare(caps: Iterable[str]) -> None:
    """Compile (or read) the program before forking the process that will load it."""
    _prepared[frozenset(caps)] = program(caps)


def load(caps: Iterable[str]) -> None:
    """Load the default profile into this process (and so into all it will exec)."""
    held = frozenset(caps)
    native.seccomp_load_bpf(_prepared.get(held) or program(held))
