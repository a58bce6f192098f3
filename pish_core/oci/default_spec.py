"""``pish-oci spec``: a default config.json in a bundle, as ``runc spec`` writes it (``--rootless``: a user
namespace mapping the caller to root, no cgroup limits, /sys bound from the host)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pish_core.errors import PishError
from pish_core.security import capabilities, masks

_DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def config(rootless: bool = False) -> dict[str, Any]:
    caps = {k: list(_DEFAULT_CAPS) for k in ("bounding", "effective", "permitted")}
    assert all(c in capabilities.NUMBERS for c in _DEFAULT_CAPS)
    data: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                    "cwd": "/", "capabilities": caps,
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "pish",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
             + ([] if rootless else ["gid=5"])},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
            if not rootless else
            {"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": list(masks.MASKED),
            "readonlyPaths": list(masks.READONLY),
        },
    }
    if rootless:
        data["linux"]["namespaces"].append({"type": "user"})
        data["linux"]["uidMappings"] = [{"containerID": 0, "hostID": os.getuid(), "size": 1}]
        data["linux"]["gidMappings"] = [{"containerID": 0, "hostID": os.getgid(), "size": 1}]
        del data["linux"]["resources"]
    return data


def write(bundle: Path, rootless: bool = False) -> None:
    path = bundle / "config.json"
    if path.exists():
        raise PishError(f"File {path} exists. Remove it first")
    path.write_text(json.dumps(config(rootless), indent=2) + "\n")
