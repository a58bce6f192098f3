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
int pish_capget(uint32_t *data);
int pish_capset(const uint32_t *data);
void *pish_seccomp_init(uint32_t def_action);
void pish_seccomp_release(void *ctx);
uint32_t pish_seccomp_arch_resolve_name(const char *name);
int pish_seccomp_arch_add(void *ctx, uint32_t arch);
int pish_seccomp_attr_set(void *ctx, int attr, uint32_t value);
int pish_seccomp_syscall_resolve_name(const char *name);
int pish_seccomp_rule_add(void *ctx, uint32_t action, int syscall_nr);
int pish_seccomp_rule_add_cmp(void *ctx, uint32_t action, int syscall_nr, unsigned int arg, int op,
                              uint64_t datum_a, uint64_t datum_b);
int pish_seccomp_rule_add_cmps(void *ctx, uint32_t action, int syscall_nr, unsigned int count,
                               const uint64_t *cmps);
int pish_seccomp_load(void *ctx);
int pish_seccomp_export_bpf(void *ctx, int fd);
int pish_seccomp_load_bpf(const void *filter, unsigned int len, unsigned int flags);
void pish_seccomp_version(unsigned int *version);
int pish_open_tree(int dfd, const char *path, unsigned int flags);
int pish_mount_setattr(int dfd, const char *path, unsigned int flags, const uint64_t *attr, size_t size);
int pish_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path, unsigned int flags);
int pish_bpf_prog_load(uint32_t prog_type, const void *insns, uint32_t insn_cnt, const char *license,
                       uint32_t log_level, char *log_buf, uint32_t log_size);
int pish_bpf_prog_attach(int prog_fd, int target_fd, uint32_t attach_type, uint32_t flags);
int pish_bpf_prog_detach(int prog_fd, int target_fd, uint32_t attach_type);
int pish_bpf_prog_query(int target_fd, uint32_t attach_type, uint32_t query_flags, uint32_t *attach_flags,
                        uint32_t *prog_ids, uint32_t *prog_cnt);
int pish_bpf_prog_get_fd_by_id(uint32_t id);
long pish_fork_into_cgroup(int cgroup_fd);
