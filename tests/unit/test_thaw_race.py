"""``pish rm -f`` thaws a paused container so its SIGKILL lands; the container's own supervisor may be
releasing the group at that moment (its release freezes the group, kills, thaws, removes it), which ``rm``
saw as paused. A group gone under the thaw is not an error; one still frozen is."""
from __future__ import annotations

from typing import Any

import pytest

from pish_core import lifecycle
from pish_core.errors import DriverError


class VanishingGroup:
    def __init__(self, still_frozen: bool) -> None:
        self.still_frozen = still_frozen

    def freeze(self, frozen: bool) -> None:
        raise DriverError("cgroupv1: cannot write 'THAWED' to .../freezer.state: No such file or directory")

    def frozen(self) -> bool:
        return self.still_frozen


@pytest.mark.parametrize("still_frozen", [False, True])
def test_a_group_removed_under_the_thaw_is_no_error(monkeypatch: pytest.MonkeyPatch, still_frozen: bool) -> None:
    group = VanishingGroup(still_frozen)
    monkeypatch.setattr(lifecycle, "paused", lambda s: True)
    monkeypatch.setattr(lifecycle, "group_of", lambda s: group)
    s: Any = object()
    if still_frozen:
        with pytest.raises(DriverError):
            lifecycle._thaw(s)
    else:
        lifecycle._thaw(s)
