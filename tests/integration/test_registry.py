"""Pulling from real registries on 127.0.0.1: Debian's ``docker-registry`` (the CNCF distribution registry),
started by these tests on free ports with configs of their own, filled with ``skopeo copy``; and a hostile
registry (a small http.server) that sends what no honest one does. No traffic leaves the machine.

- ``plain``: HTTP, no auth. ``busybox:1`` (one layer), ``busybox:2`` (the same base layer and one more),
  ``busybox-zstd:1`` (the base layer compressed with zstd by skopeo: from an uncompressed layout, as skopeo
  1.9 keeps a gzip layer gzip whatever ``--dest-compress-format`` says).
- ``plain`` also has ``multi:1``, an index of a linux/amd64 and a linux/arm64 image (``skopeo copy --all``).
- ``secure``: TLS with a CA made here, Basic auth from an htpasswd file made here.
- ``token_registry``: the registry's ``token`` auth, tokens from a small token server of the test (JWTs signed
  with ``openssl``): ``public/*`` pullable anonymously, ``private/*`` only logged in.
"""
from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from fixtures.images import imagebuild as ib

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("docker-registry") is None,
                       reason="needs docker-registry (apt-get install -y docker-registry)"),
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo (apt-get install -y skopeo)"),
]

Pish = Callable[..., "subprocess.CompletedProcess[str]"]
USER, PASSWORD = "tester", "s3cret-pass"


def sh(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    storage: Path
    ca: Path | None = None


def start_registry(work: Path, *, tls: tuple[Path, Path, Path] | None = None,
                   htpasswd: Path | None = None, token: list[str] | None = None) -> Registry:
    port = free_port()
    storage = work / "storage"
    storage.mkdir()
    lines = ["version: 0.1", "log:", "  level: error", "storage:", "  filesystem:",
             f"    rootdirectory: {storage}", "http:", f"  addr: 127.0.0.1:{port}"]
    if tls:
        lines += ["  tls:", f"    certificate: {tls[1]}", f"    key: {tls[2]}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: pish-test", f"    path: {htpasswd}"]
    if token:
        lines += ["auth:", "  token:", *(f"    {line}" for line in token)]
    config = work / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    log = open(work / "registry.log", "wb")  # noqa: SIM115 - the registry writes to it until stopped
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return Registry(f"127.0.0.1:{port}", proc, storage, tls[0] if tls else None)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"docker-registry did not start: {(work / 'registry.log').read_text()}")


def stop(reg: Registry) -> None:
    reg.proc.terminate()
    try:
        reg.proc.wait(10)
    except subprocess.TimeoutExpired:
        reg.proc.kill()
        reg.proc.wait()


def make_ca(work: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, server.crt, server.key)."""
    ca_key, ca_crt = work / "ca.key", work / "ca.crt"
    key, csr, crt, ext = work / "server.key", work / "server.csr", work / "server.crt", work / "ext.cnf"
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
       "-days", "2", "-subj", "/CN=pish test CA")
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
       "-subj", "/CN=127.0.0.1")
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
       "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return ca_crt, crt, key


def htpasswd_file(work: Path) -> Path:
    path = work / "htpasswd"
    if shutil.which("htpasswd"):
        path.write_text(sh("htpasswd", "-Bbn", USER, PASSWORD))
    else:
        import bcrypt  # type: ignore[import-not-found]

        path.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()).decode()}\n")
    return path


@pytest.fixture(scope="session")
def layouts(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """OCI layouts: ``one`` (the busybox layer) and ``two`` (the same layer and one more)."""
    work = tmp_path_factory.mktemp("layouts")
    base = busybox_tar.read_bytes()
    extra = ib.layer_tar([ib.directory("etc"), ib.file("etc/second", b"second layer\n")])
    out = {}
    for name, layers, compress in (("one", [base], True), ("two", [base, extra], True), ("raw", [base], False)):
        config = ib.config_for(layers, Cmd=["/bin/sh", "-c", "echo hi"])
        ib.oci_layout(work / name, layers, config, compress=compress)
        out[name] = work / name
    out["multi"] = multi_arch_layout(work / "multi", base)
    return out


def multi_arch_layout(root: Path, base: bytes) -> Path:
    """An OCI layout tagged ``latest`` with an index of two images: linux/amd64 and linux/arm64, each
    the busybox layer and a layer with ``/arch`` saying which it is (the arm64 one runs here too)."""
    entries = []
    for arch in ("amd64", "arm64"):
        layers = [base, ib.layer_tar([ib.file("arch", f"{arch}\n".encode())])]
        config = ib.config_for(layers)
        config["architecture"] = arch
        written = ib.oci_layout(root, layers, config, tag=arch)
        manifest = root / "blobs" / "sha256" / written["manifest"]
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{written['manifest']}", "size": manifest.stat().st_size,
                        "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    index_digest = hashlib.sha256(index).hexdigest()
    (root / "blobs" / "sha256" / index_digest).write_bytes(index)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{index_digest}",
        "size": len(index), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    return root


@pytest.fixture(scope="session")
def plain(layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("plain-registry"))
    try:
        for layout, ref, extra in ((layouts["one"], "busybox:1", []), (layouts["two"], "busybox:2", []),
                                   (layouts["multi"], "multi:1", ["--all"]),
                                   (layouts["raw"], "busybox-zstd:1",
                                    ["--dest-compress-format", "zstd"])):
            sh("skopeo", "copy", "-q", "--dest-tls-verify=false", *extra, f"oci:{layout}:latest",
               f"docker://{reg.host}/{ref}")
        yield reg
    finally:
        stop(reg)


@pytest.fixture(scope="session")
def secure(layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("secure-registry")
    tls = make_ca(work)
    reg = start_registry(work, tls=tls, htpasswd=htpasswd_file(work))
    try:
        certs = work / "skopeo-certs"
        certs.mkdir()
        shutil.copy(tls[0], certs / "ca.crt")
        sh("skopeo", "copy", "-q", "--dest-cert-dir", str(certs), "--dest-creds", f"{USER}:{PASSWORD}",
           f"oci:{layouts['one']}:latest", f"docker://{reg.host}/busybox:1")
        yield reg
    finally:
        stop(reg)


@pytest.fixture
def reg_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pish_env: object) -> Path:
    """This test's auth file and certs.d, and small limits so hostile bodies stop fast."""
    monkeypatch.setenv("PISH_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.setenv("PISH_CERTS_D", str(tmp_path / "certs.d"))
    monkeypatch.setenv("PISH_NO_PROGRESS", "1")
    return tmp_path


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The one ``pish:`` error line of a failed command (INFO lines may come before it), no traceback."""
    assert proc.returncode == 125, proc
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pish: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def store_layers(lib: Path) -> list[str]:
    d = lib / "layers"
    return sorted(os.listdir(d)) if d.is_dir() else []


def pulled_layers(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "pulling layer" in line]


def test_plain_http_pull_and_run(pish: Pish, plain: Registry, reg_env: Path, pish_env: object) -> None:
    ref = f"{plain.host}/busybox:1"
    out = pish("pull", "--tls-verify=false", ref, check=True)
    assert out.stdout.strip().startswith("sha256:")
    assert len(pulled_layers(out.stderr)) == 1, out.stderr
    assert f"{plain.host}/busybox  1 " in pish("image", "ls", check=True).stdout
    run = pish("run", ref, "/bin/cat", "/etc/hostname", check=True)
    assert run.returncode == 0
    again = pish("pull", "--tls-verify=false", ref, check=True)
    assert pulled_layers(again.stderr) == [], again.stderr  # every layer already in the store


def test_inspect_shows_the_repo_digest_and_tag_names_it(pish: Pish, plain: Registry, reg_env: Path) -> None:
    ref = f"{plain.host}/busybox:1"
    pish("pull", "-q", "--tls-verify=false", ref, check=True)
    want = json.loads(sh("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"))["Digest"]
    shown = json.loads(pish("image", "inspect", ref, check=True).stdout)[0]
    assert shown["repo_digests"] == [f"{plain.host}/busybox@{want}"]
    pish("image", "tag", ref, "mine:v1", check=True)
    assert json.loads(pish("image", "inspect", "mine:v1", check=True).stdout)[0]["id"] == shown["id"]


def test_run_pulls_when_missing(pish: Pish, plain: Registry, reg_env: Path) -> None:
    ref = f"{plain.host}/busybox:1"
    one_error(pish("run", "--pull", "never", ref, "/bin/true"))
    run = pish("run", "--tls-verify=false", ref, "/bin/echo", "pulled-and-ran", check=True)
    assert "pulled-and-ran" in run.stdout
    assert "pulling layer" in run.stderr


def test_https_is_the_default(pish: Pish, plain: Registry, reg_env: Path) -> None:
    assert "TLS" in one_error(pish("pull", f"{plain.host}/busybox:1"))
    missing = one_error(pish("run", f"{plain.host}/busybox:1", "true"))
    assert "not in the store" in missing and "TLS" in missing, missing


def test_shared_base_layer_fetched_once(pish: Pish, plain: Registry, reg_env: Path, pish_env: object) -> None:
    first = pish("pull", "--tls-verify=false", f"{plain.host}/busybox:1", check=True)
    assert len(pulled_layers(first.stderr)) == 1
    second = pish("pull", "--tls-verify=false", f"{plain.host}/busybox:2", check=True)
    assert len(pulled_layers(second.stderr)) == 1, second.stderr  # only the new layer
    assert "1 of 2 layers already in the store" in second.stderr
    run = pish("run", f"{plain.host}/busybox:2", "/bin/cat", "/etc/second", check=True)
    assert run.stdout == "second layer\n"


def test_zstd_image_pulls_and_runs(pish: Pish, plain: Registry, reg_env: Path) -> None:
    ref = f"{plain.host}/busybox-zstd:1"
    manifest = json.loads(sh("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert all(layer["mediaType"].endswith("zstd") for layer in manifest["layers"]), manifest
    pish("pull", "--tls-verify=false", ref, check=True)
    assert pish("run", ref, "/bin/echo", "zstd-ok", check=True).stdout == "zstd-ok\n"


def test_multi_arch_index(pish: Pish, plain: Registry, reg_env: Path) -> None:
    """The host's platform is chosen from an index; ``--platform linux/arm64`` gets the other manifest."""
    if pull_host_platform() != "linux/amd64":
        pytest.skip("the test's index has an amd64 image for the host and an arm64 one for --platform")
    ref = f"{plain.host}/multi:1"
    index = json.loads(sh("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert len(index["manifests"]) == 2
    pish("pull", "--tls-verify=false", ref, check=True)
    assert pish("run", ref, "/bin/cat", "/arch", check=True).stdout == "amd64\n"
    pish("pull", "--tls-verify=false", "--platform", "linux/arm64", ref, check=True)
    assert pish("run", ref, "/bin/cat", "/arch", check=True).stdout == "arm64\n"
    assert "no image for linux/s390x" in one_error(pish("pull", "--tls-verify=false", "--platform", "linux/s390x",
                                                         ref))


def pull_host_platform() -> str:
    from pish_core.image.pull import host_platform

    return host_platform()


def test_tls_basic_auth_login_pull_run(pish: Pish, secure: Registry, reg_env: Path) -> None:
    assert secure.ca is not None
    ref = f"{secure.host}/busybox:1"
    assert "TLS" in one_error(pish("pull", ref))  # the CA is not trusted yet
    certs = reg_env / "certs.d" / secure.host
    certs.mkdir(parents=True)
    shutil.copy(secure.ca, certs / "ca.crt")
    assert "pish login" in one_error(pish("pull", ref))
    wrong = pish("login", "-u", USER, "--password-stdin", secure.host, input="wrong\n")
    assert "wrong username or password" in one_error(wrong)
    assert not (reg_env / "auth.json").exists()
    pish("login", "-u", USER, "--password-stdin", secure.host, input=f"{PASSWORD}\n", check=True)
    auth_file = reg_env / "auth.json"
    assert auth_file.stat().st_mode & 0o777 == 0o600
    assert secure.host in json.loads(auth_file.read_text())["auths"]
    pish("pull", ref, check=True)
    assert pish("run", ref, "/bin/echo", "tls-ok", check=True).stdout == "tls-ok\n"
    pish("logout", secure.host, check=True)
    assert secure.host not in json.loads(auth_file.read_text())["auths"]


# -- token auth: the registry's `token` auth and a small token server of this test -----------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(http.server.ThreadingHTTPServer):
    """Anonymous: pull on ``public/*``. USER:PASSWORD: pull and push on everything. Else 401. Tokens are
    JWTs signed RS256 by ``openssl`` with a self-signed key the registry trusts (``rootcertbundle``)."""

    daemon_threads = True
    key: Path
    cert_der: bytes
    issued: list[str]

    def token(self, user: str | None, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = actions.split(",") if user else (["pull"] if name.startswith("public/") else [])
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a in allowed]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": "pish-test-issuer", "sub": user or "", "aud": "pish-test-registry", "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(),
                             capture_output=True, check=True).stdout
        self.issued.append(user or "<anonymous>")
        return f"{signing}.{b64url(sig)}"


class TokenHandler(http.server.BaseHTTPRequestHandler):
    server: TokenServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlparse

        query = parse_qs(urlparse(self.path).query)
        user = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            if base64.b64decode(header[6:]).decode() != f"{USER}:{PASSWORD}":
                self.send_response(401)
                self.end_headers()
                return
            user = USER
        body = json.dumps({"token": self.server.token(user, query.get("scope", []))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class TokenRegistry:
    registry: Registry
    tokens: TokenServer


@pytest.fixture(scope="session")
def token_registry(layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    work = tmp_path_factory.mktemp("token-registry")
    key, crt, der = work / "token.key", work / "token.crt", work / "token.der"
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
       "-days", "2", "-subj", "/CN=pish test token signer")
    sh("openssl", "x509", "-in", str(crt), "-outform", "DER", "-out", str(der))
    tokens = TokenServer(("127.0.0.1", 0), TokenHandler)
    tokens.key, tokens.cert_der, tokens.issued = key, der.read_bytes(), []
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    realm = f"http://127.0.0.1:{tokens.server_address[1]}/token"
    reg = start_registry(work, token=[f"realm: {realm}", "service: pish-test-registry",
                                      "issuer: pish-test-issuer", f"rootcertbundle: {crt}"])
    try:
        for ref in ("public/busybox:1", "private/busybox:1"):
            sh("skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", f"{USER}:{PASSWORD}",
               f"oci:{layouts['one']}:latest", f"docker://{reg.host}/{ref}")
        yield TokenRegistry(reg, tokens)
    finally:
        stop(reg)
        tokens.shutdown()
        tokens.server_close()


def test_token_auth_anonymous_and_logged_in(pish: Pish, token_registry: TokenRegistry, reg_env: Path) -> None:
    host = token_registry.registry.host
    issued = token_registry.tokens.issued
    issued.clear()
    pish("pull", "--tls-verify=false", f"{host}/public/busybox:1", check=True)  # an anonymous token
    assert issued == ["<anonymous>"]
    assert "log in first" in one_error(pish("pull", "--tls-verify=false", f"{host}/private/busybox:1"))
    wrong = pish("login", "--tls-verify=false", "-u", USER, "--password-stdin", host, input="nope\n")
    assert "wrong username or password" in one_error(wrong)
    pish("login", "--tls-verify=false", "-u", USER, "--password-stdin", host, input=f"{PASSWORD}\n", check=True)
    issued.clear()
    pish("pull", "--tls-verify=false", f"{host}/private/busybox:1", check=True)
    assert issued == [USER]
    assert pish("run", f"{host}/private/busybox:1", "/bin/echo", "token-ok", check=True).stdout == "token-ok\n"


# -- a hostile registry -------------------------------------------------------------------------------


class Hostile(http.server.ThreadingHTTPServer):
    daemon_threads = True
    mode = ""
    manifest = b""
    config = b""
    layer_digest = ""
    config_digest = ""
    blob = b""
    manifest2 = b""  # "two-layers-corrupt": two layers, so that they are downloaded in parallel
    config2 = b""
    config2_digest = "-"
    failures = 0  # "flaky": how many 503s are left to answer


class HostileHandler(http.server.BaseHTTPRequestHandler):
    server: Hostile

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        s = self.server
        if s.mode == "redirect-loop":
            self.send_response(302)
            self.send_header("Location", f"/loop/{time.monotonic_ns()}")
            self.end_headers()
            return
        if s.mode in ("flaky", "unavailable") and s.failures > 0:
            s.failures -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if "/manifests/" in self.path:
            manifest = s.manifest
            if s.mode == "many-layers":
                doc = json.loads(manifest)
                doc["layers"] = doc["layers"] * 10_000
                manifest = json.dumps(doc).encode()
            if s.mode == "two-layers-corrupt":
                manifest = s.manifest2
            lie = {"Docker-Content-Digest": "sha256:" + "0" * 64} if s.mode == "manifest-digest" else {}
            self._send(manifest, "application/vnd.oci.image.manifest.v1+json", lie)
        elif self.path.endswith(s.config_digest):
            self._send(s.config, "application/octet-stream")
        elif self.path.endswith(s.config2_digest):
            self._send(s.config2, "application/octet-stream")
        elif "/blobs/" in self.path:
            self._layer()
        else:
            self._send(b"{}", "application/json")

    def _send(self, body: bytes, media: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", media)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _layer(self) -> None:
        mode = self.server.mode
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            if mode == "two-layers-corrupt":
                self.wfile.write(gzip.compress(ib.layer_tar([ib.file("not-what-was-promised")])))
            elif mode == "flaky":
                self.wfile.write(self.server.blob)
            elif mode == "wrong-digest":
                self.wfile.write(gzip.compress(ib.layer_tar([ib.file("not-what-was-promised")])))
            elif mode == "bomb":
                self.wfile.write(bomb())
            elif mode == "endless":
                while True:
                    self.wfile.write(b"\0" * 65536)
            elif mode == "stall":
                self.wfile.write(bomb()[:100])
                self.wfile.flush()
                time.sleep(30)
        except (BrokenPipeError, ConnectionResetError):
            pass


@functools.cache
def bomb() -> bytes:
    """A gzip of a tar header and then 512 MiB of zeros as one file's data: ~0.5 MB on the wire."""
    info = tarfile.TarInfo("big")
    info.size = 512 << 20
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
        zeros = b"\0" * (1 << 20)
        for _ in range(512):
            gz.write(zeros)
    return buf.getvalue()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile(("127.0.0.1", 0), HostileHandler)
    honest_layer = ib.layer_tar([ib.file("hello", b"hello\n")])
    blob = gzip.compress(honest_layer)
    config = json.dumps(ib.config_for([honest_layer])).encode()
    server.config, server.config_digest = config, hashlib.sha256(config).hexdigest()
    server.layer_digest = hashlib.sha256(blob).hexdigest()
    server.blob = blob
    server.manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{server.config_digest}", "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": f"sha256:{server.layer_digest}", "size": 1 << 30}]}).encode()
    config2 = json.dumps(ib.config_for([honest_layer, honest_layer])).encode()
    server.config2, server.config2_digest = config2, hashlib.sha256(config2).hexdigest()
    doc = json.loads(server.manifest)
    doc["config"] = {**doc["config"], "digest": f"sha256:{server.config2_digest}", "size": len(config2)}
    doc["layers"] = doc["layers"] * 2
    server.manifest2 = json.dumps(doc).encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("mode", "message"), [
    ("wrong-digest", "is corrupt"),
    ("bomb", "decompression bomb"),
    ("endless", "bigger than"),
    ("stall", "timed out"),
    ("redirect-loop", "too many redirects"),
    ("many-layers", "more than the limit"),
    ("manifest-digest", "does not match its digest"),
    ("unavailable", "HTTP 503"),
    ("two-layers-corrupt", "is corrupt"),
])
def test_hostile_registry(pish: Pish, hostile: Hostile, reg_env: Path, pish_env: object,
                          monkeypatch: pytest.MonkeyPatch, mode: str, message: str) -> None:
    hostile.mode = mode
    hostile.failures = 1000
    if mode in ("bomb", "stall"):
        bomb()  # made before the pull: making it takes longer than the stall timeout
    monkeypatch.setenv("PISH_PULL_MAX_LAYER", str(64 << 20))
    monkeypatch.setenv("PISH_PULL_MAX_LAYER_UNCOMPRESSED", str(256 << 20))
    monkeypatch.setenv("PISH_PULL_STALL_TIMEOUT", "2")
    start = time.monotonic()
    out = pish("pull", "--tls-verify=false", f"127.0.0.1:{hostile.server_address[1]}/evil:1", timeout=60)
    assert message in one_error(out)
    if mode == "two-layers-corrupt":  # the parallel download path
        assert "pulling layer 1/2" in out.stderr and "pulling layer 2/2" in out.stderr, out.stderr
    assert time.monotonic() - start < 30
    lib = Path(os.environ["PISH_LIB"])
    assert store_layers(lib) == [], store_layers(lib)
    images = lib / "images"
    assert not images.is_dir() or os.listdir(images) == []


def test_run_of_a_local_tar_imports_no_http_client(busybox_tar: Path, pish_env: object, tmp_path: Path) -> None:
    code = ("import sys\nfrom pish_core.cli.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    print('exit', exc.code, file=sys.stderr)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('urllib3', 'zstandard')\n"
            "      or m == 'pish_core.image.registry'), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, "run", "--log-level", "warning", str(busybox_tar), "true"],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    lines = proc.stderr.strip().splitlines()
    assert lines[-2:] == ["exit 0", "[]"], proc.stderr


def test_transient_errors_are_retried(pish: Pish, hostile: Hostile, reg_env: Path) -> None:
    hostile.mode, hostile.failures = "flaky", 2
    out = pish("pull", "--tls-verify=false", f"127.0.0.1:{hostile.server_address[1]}/flaky:1", check=True)
    assert hostile.failures == 0, out.stderr
    assert f"127.0.0.1:{hostile.server_address[1]}/flaky " in pish("image", "ls", check=True).stdout


def test_sigkill_during_a_pull_then_gc_and_pull_again(pish: Pish, hostile: Hostile, plain: Registry,
                                                      reg_env: Path, pish_env: object,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull killed while a layer streams in leaves only its temporary directory; `pish gc` removes it,
    and the next pull fills the store whole."""
    from helpers import pish_command

    hostile.mode = "stall"
    bomb()
    monkeypatch.setenv("PISH_PULL_STALL_TIMEOUT", "60")
    lib = Path(os.environ["PISH_LIB"])
    proc = subprocess.Popen([*pish_command(), "pull", "--tls-verify=false",
                             f"127.0.0.1:{hostile.server_address[1]}/evil:1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not any(e.startswith(".tmp-") for e in store_layers(lib)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(e.startswith(".tmp-") for e in store_layers(lib)), store_layers(lib)
    finally:
        proc.kill()
        proc.wait()
    pish("gc", check=True)
    assert store_layers(lib) == [], store_layers(lib)
    pish("pull", "--tls-verify=false", f"{plain.host}/busybox:1", check=True)
    assert [e for e in store_layers(lib) if not e.startswith(".")] and \
        not [e for e in store_layers(lib) if e.startswith(".tmp-")]
    assert pish("run", f"{plain.host}/busybox:1", "/bin/echo", "whole", check=True).stdout == "whole\n"


def test_two_pulls_of_one_image_at_once(plain: Registry, reg_env: Path, pish_env: object, pish: Pish) -> None:
    from helpers import pish_command

    ref = f"{plain.host}/busybox:2"
    procs = [subprocess.Popen([*pish_command(), "pull", "-q", "--tls-verify=false", ref], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]  # the same image id
    lib = Path(os.environ["PISH_LIB"])
    assert len([e for e in store_layers(lib) if not e.startswith(".")]) == 2, store_layers(lib)
    assert not [e for e in store_layers(lib) if e.startswith(".tmp-")]
    assert pish("run", ref, "/bin/cat", "/etc/second", check=True).stdout == "second layer\n"


def test_short_name_from_the_search_registries(pish: Pish, plain: Registry, reg_env: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`busybox:1` is looked for in each search registry in turn: the first (nothing listens) fails, the
    second has it; a run of the short name then finds it in the store."""
    conf = reg_env / "registries.conf"
    conf.write_text(f'unqualified-search-registries = ["127.0.0.1:{free_port()}", "{plain.host}"]\n')
    monkeypatch.setenv("PISH_REGISTRIES_CONF", str(conf))
    out = pish("pull", "--tls-verify=false", "busybox:1", check=True)
    assert "trying the next search registry" in out.stderr
    assert f"{plain.host}/busybox  1 " in pish("image", "ls", check=True).stdout
    run = pish("run", "busybox:1", "/bin/echo", "short", check=True)
    assert run.stdout == "short\n" and "pulling" not in run.stderr


def test_pull_and_run_by_digest(pish: Pish, plain: Registry, reg_env: Path) -> None:
    want = json.loads(sh("skopeo", "inspect", "--tls-verify=false", f"docker://{plain.host}/busybox:2"))["Digest"]
    ref = f"{plain.host}/busybox@{want}"
    out = pish("pull", "--tls-verify=false", ref, check=True)
    assert json.loads(pish("image", "inspect", out.stdout.strip(), check=True).stdout)[0]["repo_digests"] == [ref]
    run = pish("run", "--tls-verify=false", ref, "/bin/cat", "/etc/second", check=True)
    assert run.stdout == "second layer\n"
    bad = f"{plain.host}/busybox@sha256:{'0' * 64}"
    assert "not found" in one_error(pish("pull", "--tls-verify=false", bad))
