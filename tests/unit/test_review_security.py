"""Security review findings that need no root: each test failed before its fix."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pish_core.errors import ImageError
from pish_core.image.unpack import unpack_tar


def _tar(path: Path, members: list[tuple[str, bytes, str, bytes]]) -> Path:
    """members: (name, type, linkname, data)"""
    with tarfile.open(path, "w") as tar:
        for name, kind, link, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size, info.mode = kind, link, len(data), 0o644
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the unpack destination that an archive aims at."""
    target = tmp_path / "outside"
    target.mkdir()
    (target / "inner").mkdir()
    (target / "secret").write_text("host secret\n")
    return target


def _unpack_or_refuse(archive: Path, dest: Path) -> None:
    try:
        unpack_tar(archive, dest)
    except ImageError:
        pass


def test_dotdot_after_planted_symlink_does_not_write_outside(tmp_path: Path, outside: Path) -> None:
    """``sym -> OUTSIDE/inner`` then ``sym/../pwned``: the checks saw the normalised ``pwned``, but the
    member was extracted by its raw name, which the kernel resolves through the symlink: OUTSIDE/pwned."""
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = _tar(tmp_path / "x.tar", [
        ("sym", tarfile.SYMTYPE, str(outside / "inner"), b""),
        ("sym/../pwned", tarfile.REGTYPE, "", b"pwned\n"),
    ])
    _unpack_or_refuse(archive, dest)
    assert not (outside / "pwned").exists()


def test_hard_link_through_dotdot_after_symlink_stays_inside(tmp_path: Path, outside: Path) -> None:
    """A hard link named ``sym/../secret`` must not link (and chown/chmod/utime) a file outside."""
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = _tar(tmp_path / "x.tar", [
        ("sym", tarfile.SYMTYPE, str(outside / "inner"), b""),
        ("stolen", tarfile.LNKTYPE, "sym/../secret", b""),
    ])
    before = os.stat(outside / "secret")
    _unpack_or_refuse(archive, dest)
    after = os.stat(outside / "secret")
    assert after.st_nlink == 1
    assert (after.st_mtime_ns, after.st_mode) == (before.st_mtime_ns, before.st_mode)


def test_hard_link_to_a_missing_member_is_one_line(tmp_path: Path) -> None:
    """A hard link to a member the archive never wrote was a KeyError traceback from tarfile."""
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = _tar(tmp_path / "x.tar", [("stolen", tarfile.LNKTYPE, "nothing/here", b"")])
    with pytest.raises(ImageError, match="stolen"):
        unpack_tar(archive, dest)


def _layout(root: Path, index: object, blobs: list[bytes]) -> Path:
    import hashlib
    import json

    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps(index))
    (root / "blobs" / "sha256").mkdir(parents=True)
    for data in blobs:
        (root / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    return root


def _digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


_NESTED_LIST = b"[1]"
_NESTED_PLATFORM_STR = b'{"manifests": [{"digest": "sha256:' + b"0" * 64 + b'", "platform": "linux"}]}'
_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.mark.parametrize("index", [
    {"manifests": [{"digest": _digest(b"x"), "annotations": ["x"]}]},
    {"manifests": [{"mediaType": _INDEX, "digest": _digest(_NESTED_LIST)}]},
    {"manifests": [{"mediaType": _INDEX, "digest": _digest(_NESTED_PLATFORM_STR)}]},
], ids=["annotations-list", "nested-index-list", "platform-string"])
def test_malformed_oci_index_is_an_image_error(tmp_path: Path, index: object) -> None:
    """Wrongly typed JSON in a hostile layout was an AttributeError traceback, not a one-line refusal."""
    from pish_core.image import oci

    layout = _layout(tmp_path, index, [_NESTED_LIST, _NESTED_PLATFORM_STR])
    with pytest.raises(ImageError), oci.open_source(layout) as src:
        oci.images(src, "oci")


@pytest.mark.parametrize("name", ["../victim", "../../victim", "a/../../victim"])
def test_network_rm_refuses_a_name_that_leaves_the_directory(pish_env: object, tmp_path: Path, name: str) -> None:
    """`pish network rm ../victim` unlinked PISH_LIB/victim.json and PISH_ROOT/victim.hosts (any JSON file
    that parses as a network definition, anywhere the path reaches)."""
    from pish_core import paths
    from pish_core.errors import SpecError
    from pish_drivers.network import networks

    definition = '{"name": "x", "subnet": "10.0.77.0/24", "gateway": "10.0.77.1"}'
    paths.network_defs_dir().mkdir(parents=True, exist_ok=True)
    paths.networks_dir().mkdir(parents=True, exist_ok=True)
    victim_json = paths.network_file(name).resolve()
    victim_hosts = paths.hosts_file(name).resolve()
    victim_json.parent.mkdir(parents=True, exist_ok=True)
    victim_hosts.parent.mkdir(parents=True, exist_ok=True)
    victim_json.write_text(definition)
    victim_hosts.write_text("keep\n")
    with pytest.raises(SpecError):
        networks.remove(name)
    with pytest.raises(SpecError):
        networks.require(name)
    assert victim_json.exists() and victim_hosts.exists()


def test_publish_with_a_non_ascii_digit_is_a_spec_error() -> None:
    """`-p ²:80`: str.isdigit() says yes, int() says no: a ValueError traceback."""
    from pish_core.errors import SpecError
    from pish_core.flags import parse_publish

    with pytest.raises(SpecError):
        parse_publish("²:80")
    with pytest.raises(SpecError):
        parse_publish("80:²")


def test_user_with_a_non_ascii_digit_is_a_spec_error() -> None:
    """`-u ²` (or an image's User): a ValueError traceback from int()."""
    from pish_core import user
    from pish_core.errors import SpecError

    with pytest.raises(SpecError):
        user.resolve("²", "root:x:0:0:root:/root:/bin/sh\n", "root:x:0:\n")
    with pytest.raises(SpecError):
        user.resolve("root:²", "root:x:0:0:root:/root:/bin/sh\n", "root:x:0:\n")


def test_tmpfs_exec_option_is_not_handed_to_the_kernel() -> None:
    """`--tmpfs /x:exec` was accepted and then failed in the init with EINVAL (tmpfs knows no "exec")."""
    from pish_core.flags import parse_tmpfs

    assert "exec" not in parse_tmpfs("/x:exec").options
    assert "noexec" not in parse_tmpfs("/x:noexec,exec").options
    assert "noexec" in parse_tmpfs("/x:exec,noexec").options
