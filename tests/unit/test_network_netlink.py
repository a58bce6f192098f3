"""pish's netlink socket (issue 13): pyroute2 encodes and decodes, without its package ``__init__`` or asyncio.

Each check runs in a fresh interpreter, as a ``pish run --net bridge`` would, and reads ``sys.modules``.
Getting a link needs no privilege, so these run as any user.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fresh(code: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_the_socket_layer_loads_the_message_classes_alone() -> None:
    out = fresh("""
        import json, sys
        from pish_drivers.network.netlink import Netlink
        with Netlink() as nl:
            lo = nl.link("lo")
            missing = nl.link("pish-nonesuch")
        print(json.dumps({"lo": [lo["index"], lo.get_attr("IFLA_IFNAME")], "missing": missing,
                          "package": "pyroute2" in sys.modules, "asyncio": "asyncio" in sys.modules,
                          "ndb": any(m.startswith(("pyroute2.ndb", "pyroute2.iproute")) for m in sys.modules)}))
    """)
    assert out == {"lo": [1, "lo"], "missing": None, "package": False, "asyncio": False, "ndb": False}


def test_the_real_package_still_imports_afterwards() -> None:
    out = fresh("""
        import json
        from pish_drivers.network import netlink
        netlink.messages()
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        print(json.dumps({"same": ifinfmsg is netlink.messages().ifinfmsg, "iproute": IPRoute.__name__}))
    """)
    assert out == {"same": True, "iproute": "IPRoute"}


def test_an_error_carries_its_errno_in_one_line() -> None:
    out = fresh("""
        import errno, json
        from pish_drivers.network.netlink import Netlink, NetlinkError
        with Netlink() as nl:
            try:
                nl.set_up(999999, "set link 999999 up")
            except NetlinkError as exc:
                print(json.dumps({"errno": exc.errno == errno.ENODEV or exc.errno == errno.EPERM,
                                  "message": str(exc)}))
    """)
    assert out["errno"] is True
    assert str(out["message"]).startswith("netlink: set link 999999 up: ") and "\n" not in str(out["message"])


def test_requests_sent_together_are_all_answered_and_the_first_refusal_is_raised() -> None:
    """``request_all`` (a container's end: lo up, address, eth0 up, route in one write) reads every ack
    before it returns or raises, so the socket's next answer is the next request's."""
    out = fresh("""
        import json
        from pish_drivers.network.netlink import Netlink, NetlinkError, set_up_request
        with Netlink() as nl:
            try:
                nl.request_all([set_up_request(999998, "set link 999998 up"),
                                set_up_request(999999, "set link 999999 up")])
            except NetlinkError as exc:
                error = str(exc)
            lo = nl.link("lo")
        print(json.dumps({"error": error, "lo": lo.get_attr("IFLA_IFNAME")}))
    """)
    assert str(out["error"]).startswith("netlink: set link 999998 up: ")
    assert out["lo"] == "lo"
