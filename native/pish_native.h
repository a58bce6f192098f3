/* The syscalls Python's standard library lacks. Each returns 0 (or a value) on success and -errno on
   failure, so Python can raise OSError with the right code. No logic lives here. */
int pish_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
               const char *data);
int pish_umount2(const char *target, int flags);
int pish_pivot_root(const char *new_root, const char *put_old);
int pish_unshare(int flags);
int pish_setns(int fd, int nstype);
int pish_sethostname(const char *name, int len);
int pish_prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
               unsigned long arg5);
