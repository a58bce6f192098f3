"""How listing commands choose their output: one decorator for ``--json`` / ``--format table|json``."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_or_table(f: F) -> F:
    """Give a command ``--json`` and ``--format table|json`` (docker's spelling); it receives one
    ``as_json`` argument."""
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
                  help="table, or json (the same as --json).")
    @functools.wraps(f)
    def wrapper(*args: Any, as_json: bool, fmt: str, **kwargs: Any) -> Any:
        return f(*args, as_json=as_json or fmt == "json", **kwargs)

    return wrapper  # type: ignore[return-value]
