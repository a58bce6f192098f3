"""``-p``, as docker reads it: [[IP:]HOSTPORT:]CPORT[/tcp|udp] and IP::CPORT become a PortMapping, or
one SpecError. Whether IP is the host's is the bridge driver's question (tests/integration)."""
from __future__ import annotations

import pytest

from pish_core.errors import SpecError
from pish_core.flags import parse_publish
from pish_core.spec import NetworkSpec, PortMapping
from pish_drivers.network.nat import clashes


@pytest.mark.parametrize(("text", "expected"), [
    ("8080:80", PortMapping(8080, 80, "tcp", "")),
    ("8080:80/udp", PortMapping(8080, 80, "udp", "")),
    ("8080:80/tcp", PortMapping(8080, 80, "tcp", "")),
    ("80", PortMapping(0, 80, "tcp", "")),  # host port 0: pish picks one
    ("53/udp", PortMapping(0, 53, "udp", "")),
    ("127.0.0.1:18181:80", PortMapping(18181, 80, "tcp", "127.0.0.1")),
    ("192.0.2.7:53:53/udp", PortMapping(53, 53, "udp", "192.0.2.7")),
    ("127.0.0.1::80", PortMapping(0, 80, "tcp", "127.0.0.1")),
    ("0.0.0.0:8080:80", PortMapping(8080, 80, "tcp", "")),  # every address, as docker means it
    ("0.0.0.0::80", PortMapping(0, 80, "tcp", "")),
    ("65535:1", PortMapping(65535, 1, "tcp", "")),
])
def test_parse_publish(text: str, expected: PortMapping) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    (":80", "use [IP:][HOSTPORT:]CONTAINERPORT"),  # docker would take it for `80`: likelier a typo
    ("::80", "'' is not an IPv4 address"),
    ("70000:80", "ports go from 1 to 65535"),
    ("0:80", "ports go from 1 to 65535"),
    ("8080:0", "ports go from 1 to 65535"),
    ("0", "ports go from 1 to 65535"),
    ("8080:70000", "ports go from 1 to 65535"),
    ("127.0.0.1:0:80", "ports go from 1 to 65535"),
    ("8080:", "use [IP:]"),
    ("", "use [IP:]"),
    ("80/sctp", "use [IP:]"),
    ("http:80", "use [IP:]"),
    ("-1:80", "use [IP:]"),
    ("+80", "use [IP:]"),
    (" 80", "use [IP:]"),
    ("²:80", "use [IP:]"),
    ("80:²", "use [IP:]"),
    ("127.0.0.1:80", "use [IP:]"),  # an address and a container port, no host port
    ("1:2:3:4", "use [IP:]"),
    ("localhost:8080:80", "'localhost' is not an IPv4 address"),
    ("1.2.3:8080:80", "'1.2.3' is not an IPv4 address"),
    ("1.2.3.256:8080:80", "is not an IPv4 address"),
    ("[::1]:8080:80", "use [IP:]"),
])
def test_parse_publish_refuses(text: str, message: str) -> None:
    with pytest.raises(SpecError, match="invalid -p") as info:
        parse_publish(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_port_from_an_older_record_has_no_host_ip() -> None:
    """Specs written before ``-p IP:...`` hold ports without ``host_ip``: every address, as then."""
    spec = NetworkSpec(ports=({"host_port": 8080, "container_port": 80, "protocol": "tcp"},))  # type: ignore[arg-type]
    assert spec.ports == (PortMapping(8080, 80, "tcp", ""),)


@pytest.mark.parametrize(("one", "other", "expected"), [
    ("8080:80", "8080:81", True),
    ("8080:80", "8080:80/udp", False),
    ("8080:80", "127.0.0.1:8080:80", True),  # every address includes 127.0.0.1
    ("127.0.0.1:8080:80", "192.0.2.7:8080:80", False),  # two addresses, one port each: as docker allows
    ("127.0.0.1:8080:80", "127.0.0.1:8080:81", True),
    ("8080:80", "8081:80", False),
])
def test_clashes(one: str, other: str, expected: bool) -> None:
    a, b = parse_publish(one), parse_publish(other)
    assert clashes(a, b) is expected and clashes(b, a) is expected
