"""Entry point of the ``pish`` command: the click group and the one place errors become one-line messages."""
from __future__ import annotations

import importlib
import os
import sys

import click

from pish_core import quickexit
from pish_core.errors import PishError

#: command name -> "module:attribute". Imported only when used: start-up time is a feature.
COMMANDS = {
    "run": "pish_core.cli.run:run",
    "create": "pish_core.cli.run:create",
    "start": "pish_core.cli.containers:start",
    "restart": "pish_core.cli.containers:restart",
    "events": "pish_core.cli.events:events",
    "cp": "pish_core.cli.cp:cp",
    "attach": "pish_core.cli.containers:attach",
    "exec": "pish_core.cli.containers:exec_",
    "ps": "pish_core.cli.containers:ps",
    "logs": "pish_core.cli.containers:logs",
    "stop": "pish_core.cli.containers:stop",
    "kill": "pish_core.cli.containers:kill",
    "rm": "pish_core.cli.containers:rm",
    "inspect": "pish_core.cli.containers:inspect",
    "gc": "pish_core.cli.containers:gc",
    "pause": "pish_core.cli.containers:pause",
    "unpause": "pish_core.cli.containers:unpause",
    "wait": "pish_core.cli.containers:wait",
    "port": "pish_core.cli.containers:port",
    "rename": "pish_core.cli.containers:rename",
    "top": "pish_core.cli.containers:top",
    "update": "pish_core.cli.containers:update",
    "stats": "pish_core.cli.containers:stats",
    "network": "pish_core.cli.network:network",
    "image": "pish_core.cli.image:image",
    "demo-image": "pish_core.cli.image:demo_image",
    "drivers": "pish_core.cli.drivers:drivers",
    "pull": "pish_core.cli.pull:pull",
    "login": "pish_core.cli.pull:login",
    "logout": "pish_core.cli.pull:logout",
    "export": "pish_core.cli.transfer:export",
    "commit": "pish_core.cli.transfer:commit",
    "push": "pish_core.cli.transfer:push",
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command runs (or help lists it)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), envvar="PISH_ROOT",
              help="State directory (default /run/pish; env PISH_ROOT).")
def cli(root: str | None) -> None:
    """pish: a small Linux container runtime with pluggable drivers."""
    if root:
        os.environ["PISH_ROOT"] = root



def entry() -> None:
    """The ``pish`` command. Descriptors beyond stdio that the caller left open (a shell's ``3>file``, a
    test harness's pipe) are not pish's: they are closed first, so no supervisor or container holds them."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    quickexit.run_and_exit(main)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; pish's own errors exit 125 (126/127 when the command cannot start), as docker's do."""
    try:
        code = cli.main(args=argv, prog_name="pish", standalone_mode=False)
    except PishError as exc:
        print(f"pish: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        print("pish: aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as exc:  # bad flags: one line, like every other error
        print(f"pish: {exc.format_message()}", file=sys.stderr)
        sys.exit(125)
    except OSError as exc:  # the host refused something pish did not foresee: still one line
        if os.environ.get("PISH_DEBUG"):
            raise
        print(f"pish: {exc} (PISH_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(125)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    entry()
