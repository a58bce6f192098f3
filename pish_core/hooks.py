"""OCI hooks: programs an engine asks the runtime to run at points of a container's life, each given the
container's state (``{"ociVersion", "id", "status", "pid", "bundle", "annotations"}``) as JSON on stdin.

When each kind runs (runtime-spec, config.md "POSIX-platform Hooks"):
- ``createRuntime`` (and the deprecated ``prestart``): the namespaces exist, nothing is pivoted yet; run by
  the runtime, in the runtime's namespaces. ``createContainer``: the same moment in pish, as in runc (the
  spec wants the container's mount namespace; runc and pish run it from the runtime).
- ``startContainer``: by the container's init, inside the container, after ``start`` and before the
  user's program.
- ``poststart``: by ``start``, once the program runs. ``poststop``: by ``delete``.

A hook that fails (non-zero exit, or its ``timeout`` in seconds passes: then it is killed) fails the step
it belongs to, except ``poststart`` and ``poststop``, whose failures are only logged (as runc does).
"""
from __future__ import annotations

import json
import subprocess
from typing import Any

from pish_core.errors import PishError
from pish_core.spec import Hook

OCI_VERSION = "1.0.2"


def state_of(cid: str, status: str, pid: int | None, bundle: str, annotations: dict[str, str]) -> dict[str, Any]:
    """The OCI state document, as ``pish-oci state`` prints it and hooks read it."""
    out: dict[str, Any] = {"ociVersion": OCI_VERSION, "id": cid, "status": status, "bundle": bundle,
                           "annotations": annotations}
    if pid is not None and status in ("created", "running"):
        out["pid"] = pid
    return out


def run(hook: Hook, kind: str, state: dict[str, Any]) -> None:
    """Run one hook with ``state`` on its stdin; raise PishError if it fails or times out."""
    args = list(hook.args) or [hook.path]
    env = dict(item.partition("=")[::2] for item in hook.env)
    try:
        proc = subprocess.run(args, executable=hook.path, input=json.dumps(state).encode(), env=env,
                              capture_output=True, timeout=hook.timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PishError(f"{kind} hook {hook.path} timed out after {hook.timeout} s") from None
    except OSError as exc:
        raise PishError(f"{kind} hook {hook.path}: {(exc.strerror or str(exc)).lower()}") from None
    if proc.returncode != 0:
        said = proc.stderr.decode(errors="replace").strip().splitlines()
        raise PishError(f"{kind} hook {hook.path} failed (exit {proc.returncode})" + (f": {said[-1]}" if said else ""))
