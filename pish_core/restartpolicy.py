"""``--restart no|on-failure[:N]|always|unless-stopped``: whether a supervisor starts its container again,
and after how long (docker's restart manager).

The delay starts at 100 ms and doubles with each restart, capped at a minute; a container that ran for
10 s or more before it exited is restarted after 100 ms again. An explicit ``pish stop`` / ``kill`` ends
every policy (docker's ``always`` comes back only when its daemon restarts, which pish has not).
"""
from __future__ import annotations

from pish_core.errors import SpecError
from pish_core.value import Value, value

NAMES = ("no", "on-failure", "always", "unless-stopped")
FIRST_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0


@value
class RestartPolicy(Value):
    name: str = "no"
    max_retries: int = 0  # on-failure:N; 0 means no limit, as docker's

    def __str__(self) -> str:
        return f"{self.name}:{self.max_retries}" if self.name == "on-failure" and self.max_retries else self.name

    def should_restart(self, exit_code: int, restarts_so_far: int, stopped_by_user: bool) -> bool:
        """Start the container again after it exited with ``exit_code``?"""
        if stopped_by_user or self.name == "no":
            return False
        if self.name == "on-failure":
            return exit_code != 0 and (self.max_retries == 0 or restarts_so_far < self.max_retries)
        return True

    def to_dict(self) -> dict[str, object]:
        """As docker's inspect shows it (HostConfig.RestartPolicy)."""
        return {"Name": self.name, "MaximumRetryCount": self.max_retries}


def parse(value: str | None, *, auto_remove: bool = False) -> RestartPolicy:
    """``--restart`` checked at the edge: one line naming what is wrong."""
    if value is None or value == "":
        return RestartPolicy()
    name, colon, count = value.partition(":")
    if name not in NAMES:
        raise SpecError(f"invalid --restart {value!r}: use no, on-failure[:N], always or unless-stopped")
    retries = 0
    if colon:
        if name != "on-failure":
            raise SpecError(f"invalid --restart {value!r}: only on-failure takes a maximum retry count")
        if not (count.isascii() and count.isdigit()) or len(count) > 9:
            raise SpecError(f"invalid --restart {value!r}: the retry count must be a number from 0 up")
        retries = int(count)
    if auto_remove and name != "no":
        raise SpecError(f"--restart {value} and --rm conflict: a container removed when it exits cannot be restarted")
    return RestartPolicy(name, retries)


def from_dict(data: object) -> RestartPolicy:
    """The policy a state record keeps (``to_dict``'s shape); "no" for a record without one."""
    if isinstance(data, dict) and data.get("Name") in NAMES:
        return RestartPolicy(str(data["Name"]), int(data.get("MaximumRetryCount") or 0))
    return RestartPolicy()


class Backoff:
    """The delay before each restart: 100 ms, doubling, capped; back to 100 ms after a long run."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # the last delay: carried across the supervisor's exec of its monitor and back

    def next(self, ran_for: float) -> float:
        """The delay before the next start, given how long the last run lasted (seconds)."""
        if self.delay == 0 or ran_for >= RESET_AFTER:
            self.delay = FIRST_DELAY
        else:
            self.delay = min(self.delay * 2, MAX_DELAY)
        return self.delay
