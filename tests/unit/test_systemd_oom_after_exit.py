"""A detached container's supervisor asks for the OOM kill once its command has ended, from a new pish
process (the monitor hands back to pish then). By that time systemd may have removed the container's
scope; its own slice still counts the kill. ``SystemdLimits.oom_killed(record)`` must answer from the
slice then, not give up because the scope is gone (the VM stage caught ``oom_killed: false``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pish_core import names
from pish_drivers.limits import systemd


@pytest.mark.parametrize("kills", [0, 1])
def test_oom_is_read_from_the_slice_once_the_scope_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          kills: int) -> None:
    monkeypatch.setattr(systemd, "CGROUP_ROOT", tmp_path)
    cid = "ab" * 32
    scope, own_slice = names.systemd_scope(cid), names.systemd_scope(cid).removesuffix(".scope") + ".slice"
    slice_dir = tmp_path / names.systemd_slice() / own_slice
    slice_dir.mkdir(parents=True)  # the scope's directory below it is gone already
    (slice_dir / "memory.events").write_text(f"low 0\nhigh 0\nmax 3\noom 1\noom_kill {kills}\n")
    record = {"kind": "limits", "driver": "systemd", "unit": scope, "slice": own_slice,
              "path": str(slice_dir / scope)}
    assert systemd.SystemdLimits().oom_killed(record) is bool(kills)
