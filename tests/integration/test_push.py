"""``pish push`` against Debian's ``docker-registry`` on 127.0.0.1 (the registries of ``test_registry.py``):
push then pull back into a fresh store and run; a second push sends no blob; a push to another
repository of the same registry mounts the blobs; big blobs go in PATCH chunks; docker's manifest
format; a registry that wants a login (TLS + htpasswd) refuses the push until ``pish login``.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import run_pish

sys.path.insert(0, str(Path(__file__).parent))  # the registries of test_registry.py, under any --import-mode
from test_registry import (
    PASSWORD,
    USER,
    Registry,
    TokenRegistry,
    htpasswd_file,
    make_ca,
    one_error,
    start_registry,
    stop,
)
from test_registry import layouts as layouts_fixture
from test_registry import pytestmark as registry_marks
from test_registry import reg_env as reg_env_fixture
from test_registry import token_registry as token_registry_fixture

# The fixtures of test_registry.py: this test's auth file and certs.d; the registry with token auth.
reg_env, layouts, token_registry = reg_env_fixture, layouts_fixture, token_registry_fixture
pytestmark = [*registry_marks, pytest.mark.leak_check(at_teardown=True)]
Pish = Callable[..., "subprocess.CompletedProcess[str]"]
COUNTS = re.compile(r"\((\d+) blobs uploaded, (\d+) mounted, (\d+) already there\)")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("push-registry"))
    try:
        yield reg
    finally:
        stop(reg)


@pytest.fixture
def app(pish: Pish, busybox_tar: Path, leaks: object) -> str:
    """Image ``app:1``: busybox plus a layer with /new (a committed, exited container, then removed)."""
    pish("image", "import", "--name", "bb", str(busybox_tar), check=True)
    pish("run", "-d", "--name", "push-src", "bb", "sh", "-c", "echo pushed > /new && rm /bin/vi", check=True)
    try:
        pish("wait", "push-src", check=True)
        pish("commit", "push-src", "app:1", check=True)
    finally:
        pish("rm", "-f", "push-src")
    return "app:1"


def counts(stderr: str) -> tuple[int, int, int]:
    m = COUNTS.search(stderr)
    assert m, stderr
    uploaded, mounted, present = (int(g) for g in m.groups())
    return uploaded, mounted, present


def skopeo_inspect(ref: str, *flags: str) -> dict[str, object]:
    proc = subprocess.run(["skopeo", "inspect", *flags, f"docker://{ref}"], capture_output=True, text=True,
                          timeout=120, check=True)
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def test_push_then_pull_into_a_fresh_store_and_run(pish: Pish, app: str, registry: Registry, reg_env: Path,
                                                   tmp_path: Path) -> None:
    ref = f"{registry.host}/pushed/app:1"
    pish("image", "tag", app, ref, check=True)
    out = pish("push", "--tls-verify=false", ref, check=True)
    digest = out.stdout.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert counts(out.stderr) == (3, 0, 0)  # two layers and the config
    assert skopeo_inspect(ref, "--tls-verify=false")["Digest"] == digest
    (info,) = json.loads(pish("image", "inspect", app, check=True).stdout)
    assert f"{registry.host}/pushed/app@{digest}" in info["repo_digests"]
    env = {"PISH_LIB": str(tmp_path / "lib2"), "PISH_ROOT": str(tmp_path / "root2")}
    for d in env.values():
        Path(d).mkdir()
    pulled = run_pish("pull", "--tls-verify=false", ref, env=env, check=True)
    run = run_pish("run", "--rm", ref, "sh", "-c", "cat /new; [ -e /bin/vi ] || echo vi-gone", env=env, check=True)
    assert run.stdout.split() == ["pushed", "vi-gone"], pulled.stderr
    (back,) = json.loads(run_pish("image", "inspect", ref, env=env, check=True).stdout)
    assert back["repo_digests"] == [f"{registry.host}/pushed/app@{digest}"]  # the digest pish pushed


def test_a_second_push_sends_no_blob_and_another_repo_mounts_them(pish: Pish, app: str, registry: Registry,
                                                                 reg_env: Path) -> None:
    first = pish("push", "--tls-verify=false", app, f"{registry.host}/twice/app:1", check=True)
    assert counts(first.stderr)[0] == 3 or counts(first.stderr)[1] == 3
    again = pish("push", "--tls-verify=false", app, f"{registry.host}/twice/app:1", check=True)
    assert counts(again.stderr) == (0, 0, 3) and again.stdout == first.stdout
    other = pish("push", "--tls-verify=false", app, f"{registry.host}/elsewhere/app:2", check=True)
    assert counts(other.stderr) == (0, 3, 0) and other.stdout == first.stdout  # the same manifest
    assert skopeo_inspect(f"{registry.host}/elsewhere/app:2", "--tls-verify=false")["Digest"] == other.stdout.strip()


def test_chunked_upload_and_docker_manifest(pish: Pish, app: str, reg_env: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "reg").mkdir()
    reg = start_registry(tmp_path / "reg")  # a registry of its own: no blob to mount, every byte sent
    try:
        monkeypatch.setenv("PISH_PUSH_CHUNK", "65536")
        ref = f"{reg.host}/chunked:1"
        out = pish("push", "--tls-verify=false", "--format", "docker", app, ref, check=True)
        assert counts(out.stderr) == (3, 0, 0) and " chunks)" in out.stderr
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        monkeypatch.delenv("PISH_PUSH_CHUNK")
        run = pish("run", "--rm", "--pull", "always", "--tls-verify=false", ref, "cat", "/new", check=True)
        assert run.stdout == "pushed\n"
    finally:
        stop(reg)


def test_push_to_a_registry_that_wants_a_login(pish: Pish, app: str, reg_env: Path, tmp_path: Path) -> None:
    work = tmp_path / "secure"
    work.mkdir()
    tls = make_ca(work)
    reg = start_registry(work, tls=tls, htpasswd=htpasswd_file(work))
    try:
        certs = reg_env / "certs.d" / reg.host
        certs.mkdir(parents=True)
        shutil.copy(tls[0], certs / "ca.crt")
        ref = f"{reg.host}/private/app:1"
        assert "pish login" in one_error(pish("push", app, ref))
        pish("login", "-u", USER, "--password-stdin", reg.host, input="wrong\n")
        pish("login", "-u", USER, "--password-stdin", reg.host, input=f"{PASSWORD}\n", check=True)
        out = pish("push", app, ref, check=True)
        assert counts(out.stderr) == (3, 0, 0)
        info = skopeo_inspect(ref, "--cert-dir", str(certs), "--creds", f"{USER}:{PASSWORD}")
        assert info["Digest"] == out.stdout.strip()
    finally:
        stop(reg)


def test_push_with_bearer_tokens(pish: Pish, app: str, token_registry: TokenRegistry, reg_env: Path) -> None:
    """Anonymous tokens only pull: the push is refused in one line; after login, a token for pull,push."""
    host = token_registry.registry.host
    issued = token_registry.tokens.issued
    assert "pish login" in one_error(pish("push", "--tls-verify=false", app, f"{host}/public/pushed:1"))
    pish("login", "--tls-verify=false", "-u", USER, "--password-stdin", host, input=f"{PASSWORD}\n", check=True)
    issued.clear()
    out = pish("push", "--tls-verify=false", app, f"{host}/private/pushed:1", check=True)
    assert counts(out.stderr) == (3, 0, 0) and set(issued) == {USER}
    again = pish("push", "--tls-verify=false", app, f"{host}/private/pushed:1", check=True)
    assert counts(again.stderr) == (0, 0, 3) and again.stdout == out.stdout


def test_push_bad_input_is_one_line(pish: Pish, registry: Registry, reg_env: Path) -> None:
    assert "no such image" in one_error(pish("push", "--tls-verify=false", f"{registry.host}/none:1"))
    assert "not a digest" in one_error(pish("push", "--tls-verify=false", f"{registry.host}/x@sha256:" + "a" * 64))
    assert "invalid image reference" in one_error(pish("push", "--tls-verify=false", "Bad//Ref"))
