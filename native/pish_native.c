/* Thin wrappers over the syscalls pish needs and Python lacks: no logic beyond the call (but for
   pish_fork_into_cgroup, which wraps clone3 the way os.fork wraps fork). */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first, as Python asks: PyOS_BeforeFork and friends, for pish_fork_into_cgroup */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <sched.h>
#include <linux/sched.h> /* struct clone_args */
#include <signal.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pish_native.h"

#define RET(expr) return ((expr) < 0 ? -errno : 0)

int pish_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
               const char *data) { RET(mount(source, target, fstype, flags, data)); }
int pish_umount2(const char *target, int flags) { RET(umount2(target, flags)); }
int pish_pivot_root(const char *new_root, const char *put_old) {
    RET(syscall(SYS_pivot_root, new_root, put_old));
}
int pish_unshare(int flags) { RET(unshare(flags)); }
int pish_setns(int fd, int nstype) { RET(setns(fd, nstype)); }
int pish_sethostname(const char *name, int len) { RET(sethostname(name, (size_t)len)); }
int pish_prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
               unsigned long arg5) {
    int r = prctl(option, arg2, arg3, arg4, arg5);
    return r < 0 ? -errno : r;
}

/* Capabilities: ``data`` is the kernel's two struct __user_cap_data_struct (low and high 32 bits), each
   {effective, permitted, inheritable}, of the calling thread. */
int pish_capget(uint32_t *data) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    RET(syscall(SYS_capget, &hdr, data));
}
int pish_capset(const uint32_t *data) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    RET(syscall(SYS_capset, &hdr, data));
}

/* libseccomp: it compiles the filter, so no BPF is assembled by hand. Its calls already return -errno. */
void *pish_seccomp_init(uint32_t def_action) { return seccomp_init(def_action); }
void pish_seccomp_release(void *ctx) { seccomp_release(ctx); }
uint32_t pish_seccomp_arch_resolve_name(const char *name) { return seccomp_arch_resolve_name(name); }
int pish_seccomp_arch_add(void *ctx, uint32_t arch) { return seccomp_arch_add(ctx, arch); }
int pish_seccomp_attr_set(void *ctx, int attr, uint32_t value) { return seccomp_attr_set(ctx, attr, value); }
int pish_seccomp_syscall_resolve_name(const char *name) { return seccomp_syscall_resolve_name(name); }
int pish_seccomp_rule_add(void *ctx, uint32_t action, int syscall_nr) {
    return seccomp_rule_add(ctx, action, syscall_nr, 0);
}
int pish_seccomp_rule_add_cmp(void *ctx, uint32_t action, int syscall_nr, unsigned int arg, int op,
                              uint64_t datum_a, uint64_t datum_b) {
    return seccomp_rule_add(ctx, action, syscall_nr, 1, SCMP_CMP(arg, op, datum_a, datum_b));
}
/* A rule that matches when all ``count`` comparisons hold (at most 6, one per syscall argument);
   ``cmps`` holds four numbers for each: the argument's index, the operator, datum_a, datum_b. */
int pish_seccomp_rule_add_cmps(void *ctx, uint32_t action, int syscall_nr, unsigned int count,
                               const uint64_t *cmps) {
    struct scmp_arg_cmp array[6];
    if (count > 6)
        return -EINVAL;
    for (unsigned int i = 0; i < count; i++) {
        array[i].arg = (unsigned int)cmps[4 * i];
        array[i].op = (enum scmp_compare)cmps[4 * i + 1];
        array[i].datum_a = cmps[4 * i + 2];
        array[i].datum_b = cmps[4 * i + 3];
    }
    return seccomp_rule_add_array(ctx, action, syscall_nr, count, array);
}
int pish_seccomp_load(void *ctx) { return seccomp_load(ctx); }
int pish_seccomp_export_bpf(void *ctx, int fd) { return seccomp_export_bpf(ctx, fd); }
/* Load a filter libseccomp compiled earlier (exported with the call above) with seccomp(2), which takes
   the SECCOMP_FILTER_FLAG_* ``flags`` (a profile's TSYNC, LOG, SPEC_ALLOW). With TSYNC, a positive
   return is the id of a thread that could not be synchronized. */
int pish_seccomp_load_bpf(const void *filter, unsigned int len, unsigned int flags) {
    struct sock_fprog prog = {(unsigned short)(len / sizeof(struct sock_filter)), (struct sock_filter *)filter};
    int r = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    return r < 0 ? -errno : r;
}
/* The libseccomp in use (major, minor, micro): its syscall tables shape a compiled program. */
void pish_seccomp_version(unsigned int *version) {
    const struct scmp_version *v = seccomp_version();
    version[0] = v->major;
    version[1] = v->minor;
    version[2] = v->micro;
}

/* The new mount API, for id-mapped mounts: open_tree(2), mount_setattr(2) (``attr`` is a struct
   mount_attr: attr_set, attr_clr, propagation, userns_fd), move_mount(2). */
int pish_open_tree(int dfd, const char *path, unsigned int flags) {
    int r = (int)syscall(SYS_open_tree, dfd, path, flags);
    return r < 0 ? -errno : r;
}
int pish_mount_setattr(int dfd, const char *path, unsigned int flags, const uint64_t *attr, size_t size) {
    RET(syscall(SYS_mount_setattr, dfd, path, flags, attr, size));
}
int pish_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path, unsigned int flags) {
    RET(syscall(SYS_move_mount, from_dfd, from_path, to_dfd, to_path, flags));
}

/* bpf(2), for the cgroup v2 device filter: the program itself is assembled in Python
   (pish_drivers/limits/bpfdevices.py); these only fill union bpf_attr and make the call. ``insns`` is an
   array of ``insn_cnt`` struct bpf_insn. A verifier log is written to ``log_buf`` when ``log_level`` > 0
   (pass NULL and 0 with level 0: the kernel refuses a buffer without a level). */
static int pish_bpf(int cmd, union bpf_attr *attr) {
    int r = (int)syscall(SYS_bpf, cmd, attr, sizeof(*attr));
    return r < 0 ? -errno : r;
}
int pish_bpf_prog_load(uint32_t prog_type, const void *insns, uint32_t insn_cnt, const char *license,
                       uint32_t log_level, char *log_buf, uint32_t log_size) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = prog_type;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = insn_cnt;
    attr.license = (uint64_t)(uintptr_t)license;
    attr.log_level = log_level;
    attr.log_buf = (uint64_t)(uintptr_t)log_buf;
    attr.log_size = log_size;
    return pish_bpf(BPF_PROG_LOAD, &attr);
}
int pish_bpf_prog_attach(int prog_fd, int target_fd, uint32_t attach_type, uint32_t flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = (uint32_t)target_fd;
    attr.attach_bpf_fd = (uint32_t)prog_fd;
    attr.attach_type = attach_type;
    attr.attach_flags = flags;
    return pish_bpf(BPF_PROG_ATTACH, &attr);
}
int pish_bpf_prog_detach(int prog_fd, int target_fd, uint32_t attach_type) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = (uint32_t)target_fd;
    attr.attach_bpf_fd = (uint32_t)prog_fd;
    attr.attach_type = attach_type;
    return pish_bpf(BPF_PROG_DETACH, &attr);
}
/* ``prog_ids`` holds ``*prog_cnt`` ids; the kernel sets ``*prog_cnt`` to how many are attached (and fails
   with ENOSPC if the array is too small). */
int pish_bpf_prog_query(int target_fd, uint32_t attach_type, uint32_t query_flags, uint32_t *attach_flags,
                        uint32_t *prog_ids, uint32_t *prog_cnt) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.query.target_fd = (uint32_t)target_fd;
    attr.query.attach_type = attach_type;
    attr.query.query_flags = query_flags;
    attr.query.prog_ids = (uint64_t)(uintptr_t)prog_ids;
    attr.query.prog_cnt = *prog_cnt;
    int r = pish_bpf(BPF_PROG_QUERY, &attr);
    *attach_flags = attr.query.attach_flags;
    *prog_cnt = attr.query.prog_cnt;
    return r;
}
int pish_bpf_prog_get_fd_by_id(uint32_t id) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_id = id;
    return pish_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
}

/* fork(2) into a cgroup v2 directory (``cgroup_fd``, opened O_PATH): clone3 with CLONE_INTO_CGROUP
   (Linux >= 5.7) starts the child there, where moving it afterwards (a write to cgroup.procs) waits out
   an RCU grace period of the host's cgroup lock, 5-18 ms measured. Wrapped the way os.fork wraps fork:
   the GIL held, Python's before-fork and after-fork hooks run in parent and child. Call it only from a
   process with one thread (a fork of pish's, as the intermediate of a spawn is): clone3 skips glibc's
   own fork handlers, which only matter when another thread may hold a lock. Returns the child's pid in
   the parent, 0 in the child, -errno (nothing forked) on failure. */
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
long pish_fork_into_cgroup(int cgroup_fd) {
    struct clone_args args;
    long pid;
    int saved;
    PyGILState_STATE gil = PyGILState_Ensure(); /* cffi let the GIL go for this call */
    memset(&args, 0, sizeof args);
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)cgroup_fd;
    PyOS_BeforeFork();
    pid = syscall(SYS_clone3, &args, sizeof args);
    saved = errno;
    if (pid == 0)
        PyOS_AfterFork_Child();
    else
        PyOS_AfterFork_Parent();
    PyGILState_Release(gil);
    return pid < 0 ? -saved : pid;
}
