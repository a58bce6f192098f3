"""The image cache: a rootfs tar is unpacked once, then shared read-only by every container using it.

The key is a digest of the tar's identity on disk (path, size, mtime, inode): cheap to compute on every
run and changed by any rewrite of the file. A directory image is used in place, not copied.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pish_core import log, paths
from pish_core.errors import ImageError
from pish_core.image.unpack import unpack_tar
from pish_core.state import flocked

_log = log.get("storage")


def cache_key(archive: Path) -> str:
    st = archive.stat()
    ident = f"{archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    return hashlib.sha256(ident.encode()).hexdigest()


def rootfs_for(image: str) -> Path:
    """A read-only root filesystem directory for ``image`` (a rootfs tar or directory)."""
    src = Path(image)
    if src.is_dir():
        return src.resolve()
    if not src.is_file():
        raise ImageError(f"image {image!r} not found")
    key = cache_key(src)
    done = paths.images_dir() / key / "rootfs"
    if done.is_dir():
        return done
    with flocked(paths.images_dir() / f"{key}.lock"):
        if done.is_dir():  # another run unpacked it while we waited
            return done
        tmp = paths.images_dir() / key / f"rootfs.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _log.info("unpacking image %s into %s", src, done.parent)
        try:
            unpack_tar(src, tmp)
        except BaseException:
            shutil.rmtree(tmp.parent, ignore_errors=True)
            raise
        tmp.rename(done)
    (paths.images_dir() / f"{key}.lock").unlink(missing_ok=True)
    return done
