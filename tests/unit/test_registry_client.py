"""The registry client's pure parts: references as docker normalizes them, the auth file, platform choice,
and that nothing of it is imported by commands that do not pull."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pish_core.errors import ImageError
from pish_core.image import auth, pull
from pish_core.image.reference import parse

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "store_name"), [
    ("alpine", "docker.io", "library/alpine", "latest", "alpine:latest"),
    ("alpine:3.20", "docker.io", "library/alpine", "3.20", "alpine:3.20"),
    ("docker.io/library/alpine", "docker.io", "library/alpine", "latest", "alpine:latest"),
    ("index.docker.io/user/app:1", "docker.io", "user/app", "1", "user/app:1"),
    ("user/app", "docker.io", "user/app", "latest", "user/app:latest"),
    ("quay.io/podman/hello:v1", "quay.io", "podman/hello", "v1", "quay.io/podman/hello:v1"),
    ("127.0.0.1:5000/busybox:1", "127.0.0.1:5000", "busybox", "1", "127.0.0.1:5000/busybox:1"),
    ("localhost/a/b/c", "localhost", "a/b/c", "latest", "localhost/a/b/c:latest"),
])
def test_references(text: str, registry: str, repository: str, tag: str, store_name: str) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, None)
    assert ref.store_name == store_name
    assert ref.api_host == ("registry-1.docker.io" if registry == "docker.io" else registry)


def test_digest_references() -> None:
    hexd = "a" * 64
    ref = parse(f"alpine@sha256:{hexd}")
    assert (ref.tag, ref.digest, ref.wanted, ref.store_name) == (None, hexd, f"sha256:{hexd}", None)
    tagged = parse(f"host:1/x:2@sha256:{hexd}")
    assert (tagged.registry, tagged.tag, tagged.wanted) == ("host:1", "2", f"sha256:{hexd}")


@pytest.mark.parametrize("text", ["", "UPPER", "a:b:c", "x@sha256:short", "x@md5:" + "a" * 32, "/abs",
                                  "a" * 64, "host:port/x", "x:" + "t" * 200])
def test_bad_references(text: str) -> None:
    with pytest.raises(ImageError):
        parse(text)


def test_auth_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "auth.json"
    monkeypatch.setenv("PISH_AUTH_FILE", str(path))
    assert auth.credentials("r.example:5000") is None
    auth.store("r.example:5000", "u", "p:w")
    assert path.stat().st_mode & 0o777 == 0o600
    data = json.loads(path.read_text())
    assert base64.b64decode(data["auths"]["r.example:5000"]["auth"]) == b"u:p:w"
    assert auth.credentials("r.example:5000") == ("u", "p:w")
    assert auth.forget("r.example:5000") and not auth.forget("r.example:5000")
    assert auth.credentials("r.example:5000") is None


def test_auth_file_default_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PISH_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert auth.auth_file() == tmp_path / "containers" / "auth.json"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert str(auth.auth_file()).startswith("/run/containers/")


def test_docker_config_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PISH_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(
        {"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"me:pw").decode()}}}))
    assert auth.credentials("docker.io") == ("me", "pw")


INDEX = {"manifests": [
    {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    {"digest": "sha256:" + "3" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
]}


def test_platform_choice() -> None:
    ref = parse("x")
    assert pull._choose(INDEX, "linux/amd64", ref) == "1" * 64
    assert pull._choose(INDEX, "linux/arm64", ref) == "2" * 64
    assert pull._choose(INDEX, "linux/arm/v7", ref) == "3" * 64
    with pytest.raises(ImageError, match="no image for linux/s390x.*linux/amd64"):
        pull._choose(INDEX, "linux/s390x", ref)
    with pytest.raises(ImageError, match="invalid platform"):
        pull._choose(INDEX, "amd64", ref)


def test_commands_that_do_not_pull_import_no_http_client(tmp_path: Path) -> None:
    """``pish run --help``, ``pish image ls`` and ``pish pull --help`` load neither urllib3 nor zstandard."""
    code = ("import sys\nfrom pish_core.cli.main import main\n"
            "for args in (['run', '--help'], ['image', 'ls'], ['pull', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('urllib3', 'zstandard')\n"
            "      or m == 'pish_core.image.registry'), file=sys.stderr)\n")
    env = {"PISH_ROOT": str(tmp_path / "root"), "PISH_LIB": str(tmp_path / "lib"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=60, check=False)
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr


def test_short_names_and_the_search_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pish_core.image.reference import candidates

    monkeypatch.setenv("PISH_REGISTRIES_CONF", str(tmp_path / "none.conf"))
    assert [str(r) for r in candidates("alpine")] == ["docker.io/library/alpine:latest"]
    conf = tmp_path / "registries.conf"
    conf.write_text('unqualified-search-registries = ["quay.io", "docker.io"]\n')
    monkeypatch.setenv("PISH_REGISTRIES_CONF", str(conf))
    assert [str(r) for r in candidates("alpine:3")] == ["quay.io/alpine:3", "docker.io/library/alpine:3"]
    assert [str(r) for r in candidates("myreg:5000/x")] == ["myreg:5000/x:latest"]
    conf.write_text("unqualified-search-registries = 'quay.io'\n")
    with pytest.raises(ImageError, match="must be a list"):
        candidates("alpine")
