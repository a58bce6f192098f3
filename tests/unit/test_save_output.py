"""``-o FILE`` of ``pish export`` / ``pish image save`` (``save.output``): removed again when writing fails,
but only if it is a file the command was writing, never a device or a pipe named by -o."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pish_core.errors import ImageError
from pish_core.image.save import output


def test_a_failed_write_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "out.tar"
    with pytest.raises(ImageError), output(path) as f:
        f.write(b"half")
        raise ImageError("layer gone")
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_failed_write_leaves_a_device_alone(tmp_path: Path) -> None:
    """`pish export -o /dev/null CTR` failing half-way deleted /dev/null."""
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(ImageError), output(null) as f:
        f.write(b"half")
        raise ImageError("layer gone")
    assert stat.S_ISCHR(null.lstat().st_mode)
