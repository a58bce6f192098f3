"""Entry point of the ``pish`` command: the click group and the one place errors become one-line messages."""
from __future__ import annotations

import os
import sys

import click

from pish_core.cli import containers
from pish_core.cli.drivers import drivers
from pish_core.cli.image import demo_image, image
from pish_core.cli.network import network
from pish_core.cli.run import create, run
from pish_core.errors import PishError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), envvar="PISH_ROOT",
              help="State directory (default /run/pish; env PISH_ROOT).")
def cli(root: str | None) -> None:
    """pish: a small Linux container runtime with pluggable drivers."""
    if root:
        os.environ["PISH_ROOT"] = root


for command in (run, create, containers.start, containers.exec_, containers.ps, containers.logs,
                containers.stop, containers.kill, containers.rm, containers.inspect, containers.gc,
                drivers, demo_image, network, image):
    cli.add_command(command)


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
    main()
