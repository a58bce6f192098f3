"""``pish events``: what happened to containers, from the log ``pish_core/events.py`` keeps.

As docker's: without ``--since``/``--until`` it prints events from now on until Ctrl-C; ``--since`` first
prints the kept events from then; ``--until`` stops at that time (at once when it is past).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from pish_core.errors import SpecError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
FILTER_KEYS = ("container", "event", "type")


def parse_time(value: str, flag: str, now: float | None = None) -> int:
    """A ``--since``/``--until`` value as docker takes it, in ns since the epoch: a unix timestamp
    (``1700000000.5``), an RFC 3339 date or time (``2026-12-02T06:00:00Z``; no zone: local time), or a
    duration before now (``10m``, ``1h30m``, ``500ms``)."""
    now = time.time() if now is None else now
    text = value.strip()
    try:
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return int(float(text) * 1e9)
        if text and _DURATION.sub("", text) == "":
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(text))
            return int((now - seconds) * 1e9)
    except OverflowError:  # more digits than a float holds: infinity
        raise SpecError(f"invalid {flag} {value!r}: the time is out of range") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SpecError(f"invalid {flag} {value!r}: use a unix timestamp, an RFC 3339 time "
                        "(2026-12-02T06:00:00Z) or a duration before now (10m)") from None
    try:
        if when.tzinfo is None:
            when = when.astimezone()  # local time, as docker reads it
        return int(when.timestamp() * 1e9)
    except (ValueError, OverflowError, OSError):  # a year the platform cannot place in local time
        raise SpecError(f"invalid {flag} {value!r}: the time is out of range") from None


def parse_filters(items: tuple[str, ...]) -> dict[str, set[str]]:
    """``--filter KEY=VALUE``: values of one key are alternatives, keys must all match (docker's rule)."""
    filters: dict[str, set[str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not value or key not in FILTER_KEYS:
            raise SpecError(f"invalid --filter {item!r}: use {', '.join(k + '=...' for k in FILTER_KEYS)}")
        filters.setdefault(key, set()).add(value)
    return filters


def matches(event: dict[str, Any], filters: dict[str, set[str]]) -> bool:
    actor = event.get("Actor", {})
    cid, name = str(actor.get("ID", "")), str(actor.get("Attributes", {}).get("name", ""))
    if "container" in filters and not any(ref in (cid, name) or (len(ref) >= 3 and cid.startswith(ref))
                                          for ref in filters["container"]):
        return False
    if "event" in filters and event.get("Action") not in filters["event"]:
        return False
    return "type" not in filters or event.get("Type") in filters["type"]


def text(event: dict[str, Any]) -> str:
    """docker's line: ``2026-12-02T06:54:35.123456789+00:00 container die ID (exitCode=1, name=x)``."""
    ns = int(event["timeNano"])
    local = datetime.fromtimestamp(ns // 1_000_000_000, UTC).astimezone()
    stamp = local.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}" + local.strftime("%z")
    stamp = stamp[:-2] + ":" + stamp[-2:]
    actor = event.get("Actor", {})
    attrs = ", ".join(f"{k}={v}" for k, v in sorted(actor.get("Attributes", {}).items()))
    return f"{stamp} {event.get('Type')} {event.get('Action')} {actor.get('ID')}" + (f" ({attrs})" if attrs else "")


@click.command()
@click.option("--since", help="Show the kept events from this time: a unix timestamp, an RFC 3339 time or "
                              "a duration before now (10m).")
@click.option("--until", help="Stop at this time (same forms); without it, stream until Ctrl-C.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="container=NAME|ID, event=ACTION (die, start, ...), type=container|network; repeatable.")
@click.option("--format", "fmt", default="text", show_default=True, metavar="text|json",
              help="text: docker's lines; json: one JSON object a line.")
def events(since: str | None, until: str | None, filters: tuple[str, ...], fmt: str) -> None:
    """Show what happens to containers: create, start, die (exitCode), oom, kill, stop, restart, pause,
    unpause, destroy."""
    from pish_core import events as log

    if fmt not in ("text", "json"):
        raise SpecError(f"invalid --format {fmt!r}: use text or json")
    now = time.time()
    since_ns = parse_time(since, "--since", now) if since is not None else None
    until_ns = parse_time(until, "--until", now) if until is not None else None
    wanted = parse_filters(filters)

    def show(event: dict[str, Any]) -> None:
        click.echo(log_json(event) if fmt == "json" else text(event))

    stream = log.follow() if until_ns is None or until_ns > now * 1e9 else None
    if stream is not None:
        next(stream)  # opened now, at the end of the log: nothing written from here on is missed
    seen: set[tuple[int, str, str]] = set()
    try:
        if since_ns is not None or until_ns is not None:
            for event in log.read_all():
                seen.add(_key(event))
                if (since_ns or 0) <= int(event["timeNano"]) <= (until_ns or sys.maxsize) and matches(event, wanted):
                    show(event)
        if stream is None:
            return
        for new in stream:
            if until_ns is not None and time.time_ns() > until_ns:
                return
            if new is None or _key(new) in seen:
                continue
            if until_ns is not None and int(new["timeNano"]) > until_ns:
                return
            if matches(new, wanted):
                show(new)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # `pish events | head`: what is still buffered goes nowhere, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if stream is not None:
            stream.close()


def _key(event: dict[str, Any]) -> tuple[int, str, str]:
    return int(event["timeNano"]), str(event.get("Actor", {}).get("ID")), str(event.get("Action"))


def log_json(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True)
