"""The built-in demo image: a busybox rootfs tar made from the host's busybox-static.

``pish demo-image`` writes it (default ``/var/lib/pish/busybox.tar``); the tests build theirs the same way.
Needs Debian's ``busybox-static`` (``apt-get install -y busybox-static``).
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from pish_core.errors import ImageError

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "busybox\n",
    "www/index.html": "<h1>hello from pish</h1>\n",
}
_DIRS = {"bin": 0o755, "sbin": 0o755, "etc": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755,
         "tmp": 0o1777, "root": 0o700, "var": 0o755, "www": 0o755, "usr": 0o755, "usr/bin": 0o755}


def find_busybox() -> Path:
    for cand in BUSYBOX_CANDIDATES:
        path = Path(cand)
        if path.exists() and _is_static(path):
            return path
    raise ImageError("no static busybox found: apt-get install -y busybox-static")


def _is_static(path: Path) -> bool:
    """A dynamic ELF names its loader (PT_INTERP) in its first page; a static one has none to name."""
    with open(path, "rb") as f:
        return b"/ld-linux" not in f.read(4096)


def build(out: Path) -> Path:
    """Write a busybox rootfs tar to ``out`` (atomically) and return it."""
    busybox = find_busybox()
    applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout.split()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w") as tar:
        for d, mode in _DIRS.items():
            tar.addfile(_info(d, tarfile.DIRTYPE, mode))
        with open(busybox, "rb") as f:
            data = f.read()
        tar.addfile(_info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for applet in sorted(set(applets) - {"busybox"}):
            tar.addfile(_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="/bin/busybox"))
        for name, text in _FILES.items():
            raw = text.encode()
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(raw)), io.BytesIO(raw))
    shutil.move(tmp, out)
    return out


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.uid = info.gid = 0
    info.mtime = 0
    return info
