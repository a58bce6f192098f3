"""The error types of pish. The CLI prints any PishError as one line and exits with its code."""
from __future__ import annotations


class PishError(Exception):
    """Something pish itself could not do. ``exit_code`` follows docker: 125 for the runtime's own errors."""

    exit_code = 125


class SpecError(PishError):
    """Bad input: a name, an address, a limit, an option. Raised before anything is created."""


class DriverError(PishError):
    """A driver is unknown, cannot load, or cannot work on this host."""


class ImageError(PishError):
    """An image is missing, unreadable or hostile."""


class StateError(PishError):
    """The container state store disagrees with the request (unknown name, name in use, ...)."""


class ExecError(PishError):
    """The container's command could not be started. 127: not found; 126: found but not runnable."""

    def __init__(self, message: str, exit_code: int = 127) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class InitError(Exception):
    """A failure inside the container's init, before exec: its message and exit code travel to the parent
    on the init's error pipe (126/127 as a shell gives them; 125 for the rest)."""

    def __init__(self, message: str, code: int = 125) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(PishError):
    """pish got SIGINT/SIGTERM/SIGHUP before the container ran; everything made so far is undone."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"interrupted by {signal.Signals(signum).name} during set-up; cleaned up")
        self.exit_code = 128 + signum
