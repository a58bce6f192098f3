/* Thin wrappers over the syscalls pish needs and Python lacks: no logic beyond the call. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
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
