"""``pish cp``: copy files and directories between a container and the host (``pish_core/containercopy.py``)."""
from __future__ import annotations

import sys

import click

from pish_core import log


@click.command()
@click.argument("src", metavar="SRC")
@click.argument("dest", metavar="DEST")
def cp(src: str, dest: str) -> None:
    """Copy between a container and the host: CONTAINER:PATH HOSTPATH, HOSTPATH CONTAINER:PATH, or - for a
    tar on stdin (as SRC, extracted into a directory) or stdout (as DEST). Symlinks are copied as links;
    a container path never leads out of the container. Works on running, created and exited containers."""
    from pish_core import containercopy as cc

    log.setup("warning")
    (src_ref, src_path), (dest_ref, dest_path) = cc.parse_operand(src), cc.parse_operand(dest)
    if (src_ref is None) == (dest_ref is None):
        raise cc.CopyError("copy between a container and the host: exactly one of SRC and DEST must be "
                           "CONTAINER:PATH")
    if dest_ref is None and dest_path == "-":
        assert src_ref is not None
        cc.to_tar(cc.container_side(src_ref, src_path), sys.stdout.buffer)
        sys.stdout.buffer.flush()
    elif src_ref is None and src_path == "-":
        assert dest_ref is not None
        cc.from_tar(sys.stdin.buffer, cc.container_side(dest_ref, dest_path))
    elif src_ref is not None:
        cc.copy(cc.container_side(src_ref, src_path), cc.host_side(dest_path))
    else:
        assert dest_ref is not None
        cc.copy(cc.host_side(src_path), cc.container_side(dest_ref, dest_path))
