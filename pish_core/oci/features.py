"""``pish-oci features``: what this runtime supports, as the runtime-spec's features document
(features.md) describes it, with the drivers found on this host under pish's own annotations."""
from __future__ import annotations

from typing import Any

from pish_core.oci import specconv
from pish_core.spec import HOOK_KINDS, NAMESPACE_TYPES

MOUNT_OPTIONS = ["bind", "rbind", "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync",
                 "dirsync", "mand", "noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime",
                 "strictatime", "nostrictatime", "private", "rprivate", "slave", "rslave", "shared", "rshared",
                 "unbindable", "runbindable", "tmpcopyup"]


def document() -> dict[str, Any]:
    from pish_core.drivers import available_names
    from pish_core.security import capabilities

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": list(HOOK_KINDS),
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": list(NAMESPACE_TYPES),
            "capabilities": list(capabilities.all_names()),
            "cgroup": {"v1": True, "v2": True, "systemd": True, "systemdUser": True, "rdma": False},
            "seccomp": {
                "enabled": True,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                              "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64",
                          "SCMP_ARCH_ARM"],
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {
            "org.pish.limits": " ".join(available_names("limits")),
            "org.pish.isolation": " ".join(available_names("isolation")),
            "org.pish.version": "0.1.0",
            "org.pish.annotation.prefix": specconv.ANNOTATION_PREFIX,
        },
    }
