"""A container that cannot reach the host: docker's defaults, applied by the container's init.

What each module does, and when the init calls it (``pish_core/init.py``):

- ``capabilities``: the container's capability list (docker's default set, ``--cap-add``/``--cap-drop``);
- ``masks``: masked and read-only paths in /proc and /sys;
- ``devices``: the devices cgroup allowlist (used by the cgroupv1 driver) and ``--privileged``'s /dev;
- ``seccomp``: docker's default seccomp profile, built with libseccomp;
- ``profiles``: custom seccomp profiles (an OCI ``linux.seccomp`` object, or docker's file format);
- ``options``: the ``--cap-*``, ``--privileged`` and ``--security-opt`` flags as a ``Security`` spec;
- ``enforce``: the two calls the init makes, in order (below).

This package's own import is free (the spec imports the defaults from it); ``enforce`` imports the rest.
Two calls, because two moments matter:

1. ``confine(root, spec)``, after the mounts and before pivot_root, while the process is still root with
   every capability: mask and freeze paths, narrow the bounding set (that needs CAP_SETPCAP, which a later
   switch to a non-root user would take away), and set PR_SET_KEEPCAPS so such a switch keeps the
   permitted set until ``lock_down`` decides it.
2. ``lock_down(security)``, the last thing before execve, after any user switch: no_new_privs, the final
   capability sets, then the seccomp filter (before the sets without no_new_privs, which loading it then
   needs). The filter comes this late because it refuses syscalls the set-up needs (mount, pivot_root,
   sethostname), and last so that a custom profile only has to allow what the init does after it.
"""
