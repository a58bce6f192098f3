"""``--net`` and ``--network`` read together as docker reads its one ``--network``."""
from __future__ import annotations

import pytest

from pish_core.cli.run import network_choice


@pytest.mark.parametrize("net, network, want", [
    (None, None, ("none", "pish0")),
    (None, "mynet", ("bridge", "mynet")),
    (None, "bridge", ("bridge", "pish0")),
    (None, "none", ("none", "pish0")),
    (None, "host", ("host", "pish0")),
    ("bridge", None, ("bridge", "pish0")),
    ("bridge", "mynet", ("bridge", "mynet")),
    ("host", None, ("host", "pish0")),
])
def test_network_choice(net, network, want):
    assert network_choice(net, network) == want
