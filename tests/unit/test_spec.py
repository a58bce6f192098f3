"""The edge of pish: strings from the command line become a validated spec, or one SpecError."""
from __future__ import annotations

import ipaddress

import pytest

from pish_core import names
from pish_core.errors import SpecError
from pish_core.flags import parse_cpus, parse_ip, parse_limit, parse_size
from pish_core.spec import ContainerSpec, Process


@pytest.mark.parametrize(("text", "expected"), [
    ("64m", 64 * 2**20),
    ("64M", 64 * 2**20),
    ("64mb", 64 * 2**20),
    ("64MiB", 64 * 2**20),
    ("512k", 512 * 2**10),
    ("1g", 2**30),
    ("1.5g", 3 * 2**29),
    ("1048576", 1048576),
    ("100b", 100),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_64m_is_docker_s() -> None:
    assert parse_size("64m") == 67108864


@pytest.mark.parametrize("text", ["lots", "", "m", "-1", "0", "64x", "64 m m", "1e9", "0.1b"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(SpecError, match="invalid"):
        parse_size(text)


def test_parse_size_names_what() -> None:
    with pytest.raises(SpecError, match="--memory 'lots'"):
        parse_size("lots", "--memory")


def test_parse_ip() -> None:
    assert parse_ip("10.0.4.6/24") == ipaddress.IPv4Interface("10.0.4.6/24")


@pytest.mark.parametrize("text", [
    "10.0.4.6",  # no prefix: which network?
    "10.0.4.300/24",
    "10.0.4.6/33",
    "10.0.4.0/24",  # the network's own address
    "10.0.4.255/24",  # its broadcast address
    "fe80::1/64",
    "pish0",
    "",
])
def test_parse_ip_refuses(text: str) -> None:
    with pytest.raises(SpecError, match="--ip"):
        parse_ip(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("memory.swappiness=0", ("memory", "memory.swappiness", "0")),
    ("pids.max=100", ("pids", "pids.max", "100")),
    ("cpu.cfs_period_us=100000", ("cpu", "cpu.cfs_period_us", "100000")),
    ("memory.limit_in_bytes=", ("memory", "memory.limit_in_bytes", "")),
])
def test_parse_limit(text: str, expected: tuple[str, str, str]) -> None:
    assert parse_limit(text) == expected


@pytest.mark.parametrize("text", [
    "memory",
    "memory.swappiness",  # no value
    "swappiness=0",  # no controller
    "=0",
    "Memory.swappiness=0",
    "../memory.x=1",
    "memory/../../x.y=1",
    "memory.swappiness=0\n1",
])
def test_parse_limit_refuses(text: str) -> None:
    with pytest.raises(SpecError, match="--limit"):
        parse_limit(text)


@pytest.mark.parametrize(("text", "expected"), [("0.5", 0.5), ("2", 2.0), ("0.01", 0.01)])
def test_parse_cpus(text: str, expected: float) -> None:
    assert parse_cpus(text) == expected


@pytest.mark.parametrize("text", ["half", "", "0", "-1", "0.001", "2000", "nan"])
def test_parse_cpus_refuses(text: str) -> None:
    with pytest.raises(SpecError, match="--cpus"):
        parse_cpus(text)


@pytest.mark.parametrize("name", ["web", "web-1", "a.b_c", "A1", "x" * 64, "1"])
def test_check_name_accepts(name: str) -> None:
    assert names.check_name(name) == name


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "a..b", ".", ".hidden", "-x", "_x", "a b", "x" * 65,
                                  "", "a\nb", "a\0b", "é"])
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(SpecError, match="invalid container name"):
        names.check_name(name)


def _spec(**changes: object) -> ContainerSpec:
    fields: dict[str, object] = {
        "id": "0" * 64, "name": "web", "image": "busybox.tar",
        "process": Process(args=("/bin/true",)), "hostname": "web",
    }
    fields.update(changes)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


def test_spec_valid() -> None:
    assert _spec().name == "web"


@pytest.mark.parametrize("changes", [
    {"name": "../x"},
    {"hostname": "a b"},
    {"id": "not-an-id"},
    {"process": Process(args=())},
    {"process": Process(args=("/bin/true",), cwd="relative")},
])
def test_spec_refuses(changes: dict[str, object]) -> None:
    with pytest.raises(SpecError):
        _spec(**changes)
