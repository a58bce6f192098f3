"""The two calls the container's init makes into ``pish_core.security``, and their order: see the
package's doc. Everything they use is imported here, when the init module is, not when called:
``lock_down`` runs after pivot_root (or, for ``pish exec``, after setns into the container's mount
namespace), where pish's own files are out of reach."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pish_core import native, userns
from pish_core.security import capabilities, devices, masks, profiles, seccomp

if TYPE_CHECKING:
    from pish_core.spec import ContainerSpec, Security


def confine(root: Path, spec: ContainerSpec) -> None:
    """Mask and freeze host-wide paths under ``root``, narrow the bounding set (see the module's doc)."""
    sec = spec.security
    if sec.privileged and not userns.running_in_userns():  # in a user namespace mknod cannot work
        devices.copy_host_devices(root)
    masks.make_readonly(root, sec.readonly_paths)
    masks.mask(root, sec.masked_paths)
    capabilities.narrow_bounding(sec.capabilities)
    native.prctl(native.PR_SET_KEEPCAPS, 1)


def prepare(sec: Security) -> None:
    """In the supervisor (or `pish exec`), before forking: what the child should not have to compute."""
    if sec.seccomp and sec.seccomp_profile:
        profiles.prepare(sec.seccomp_profile)
    elif sec.seccomp:
        seccomp.prepare(sec.capabilities)


#: <linux/prctl.h>. Not dumpable: no process of the container may ptrace this one, or open its
#: /proc/PID/exe (pish's interpreter, on the host) and fds, once its capabilities are no more than the
#: container's and before execve makes it the container's command (which execve makes dumpable again).
PR_SET_DUMPABLE = 4


def lock_down(sec: Security) -> None:
    """no_new_privs, the final capability sets and seccomp: the last step before execve.

    The filter comes as late as it can, as in runc: with no_new_privs, after the capability sets, so that a
    custom profile need not allow capset and prctl, only what the init does after it (stat, mkdir and chdir
    for the working directory, execve, a write reporting a failure). Without no_new_privs, loading a filter
    needs CAP_SYS_ADMIN, so it comes before the sets are dropped."""
    native.prctl(PR_SET_DUMPABLE, 0)
    if os.geteuid() != 0:
        capabilities.raise_effective()  # a user switch (with KEEPCAPS) cleared them; we need a few still
    capabilities.narrow_bounding(sec.capabilities)  # done by confine() in a container's init; not for exec
    if sec.no_new_privileges:
        native.prctl(native.PR_SET_NO_NEW_PRIVS, 1)
    else:
        _load_seccomp(sec)
    capabilities.set_process_caps(sec.capabilities, sec.effective, sec.permitted, sec.inheritable or (),
                                  sec.ambient or ())
    native.prctl(native.PR_SET_KEEPCAPS, 0)
    if sec.no_new_privileges:
        _load_seccomp(sec)


def _load_seccomp(sec: Security) -> None:
    """The custom profile if there is one, else docker's default; nothing under seccomp=unconfined."""
    if sec.seccomp and sec.seccomp_profile:
        profiles.load(sec.seccomp_profile)
    elif sec.seccomp:
        seccomp.load(sec.capabilities)
