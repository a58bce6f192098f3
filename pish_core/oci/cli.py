"""``pish-oci``: runc's command line over pish's core, for engines (podman's conmon, containerd's shim,
CRI-O) that call a runtime with an OCI bundle. Globals and commands are runc's, and so are its exit codes
(0, or 1 with a message) and its error log: with ``--log FILE --log-format json`` each error is a line
``{"level":"error","msg":"...","time":"<RFC 3339>"}`` there, as engines read it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from pish_core import log, quickexit
from pish_core.errors import PishError

VERSION = "0.1.0"
SPEC_VERSION = "1.0.2"


class _Globals:
    log_file: str | None = None
    log_format = "text"


G = _Globals()


def _default_root() -> str:
    if os.geteuid() == 0:
        return "/run/pish-oci"
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/pish-oci-{os.getuid()}", "pish-oci")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), default=None, envvar="PISH_OCI_ROOT",
              help="State directory (default /run/pish-oci; env PISH_OCI_ROOT).")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), default=None, help="Where errors go.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--systemd-cgroup", is_flag=True, help="cgroupsPath is slice:prefix:name, made through systemd.")
@click.option("--debug", is_flag=True)
@click.option("--rootless", default="auto", hidden=True)
@click.option("--criu", default=None, hidden=True)
@click.version_option(VERSION, "-v", "--version", message=f"pish-oci version %(version)s\nspec: {SPEC_VERSION}")
@click.pass_context
def cli(ctx: click.Context, root: str | None, log_file: str | None, log_format: str, systemd_cgroup: bool,
        debug: bool, rootless: str, criu: str | None) -> None:
    """pish-oci: an OCI runtime (runc's command line) over pish's core and drivers."""
    os.environ["PISH_ROOT"] = root or _default_root()
    G.log_file, G.log_format = log_file, log_format
    log.setup("debug" if debug else "warning")
    ctx.obj = {"systemd_cgroup": systemd_cgroup}


def _c() -> ModuleType:
    """pish_core.oci.container, imported when a command runs (start-up time is a feature)."""
    from pish_core.oci import container

    return container


@cli.command()
@click.option("--bundle", "-b", type=click.Path(file_okay=False), default=".")
@click.option("--pid-file", type=click.Path(dir_okay=False), default=None)
@click.option("--console-socket", default=None)
@click.option("--no-pivot", is_flag=True, help="Move the root onto / and chroot instead of pivot_root (a ramdisk root).")
@click.option("--no-new-keyring", is_flag=True)
@click.option("--preserve-fds", type=int, default=0)
@click.argument("container_id")
@click.pass_context
def create(ctx: click.Context, bundle: str, pid_file: str | None, console_socket: str | None, no_pivot: bool,
           no_new_keyring: bool, preserve_fds: int, container_id: str) -> None:
    """Create a container, stopped before its program runs."""
    _c().create(container_id, Path(bundle), pid_file=Path(pid_file) if pid_file else None,
                console_socket=console_socket, preserve_fds=preserve_fds,
                systemd_cgroup=ctx.obj["systemd_cgroup"], no_pivot=no_pivot)


@cli.command()
@click.argument("container_id")
def start(container_id: str) -> None:
    """Start a created container's program."""
    _c().start(container_id)


@cli.command()
@click.option("--bundle", "-b", type=click.Path(file_okay=False), default=".")
@click.option("--pid-file", type=click.Path(dir_okay=False), default=None)
@click.option("--console-socket", default=None)
@click.option("--detach", "-d", is_flag=True)
@click.option("--no-pivot", is_flag=True, help="Move the root onto / and chroot instead of pivot_root (a ramdisk root).")
@click.option("--no-new-keyring", is_flag=True)
@click.option("--preserve-fds", type=int, default=0)
@click.option("--keep", is_flag=True, help="Do not delete the container after it exits.")
@click.argument("container_id")
@click.pass_context
def run(ctx: click.Context, bundle: str, pid_file: str | None, console_socket: str | None, detach: bool,
        no_pivot: bool, no_new_keyring: bool, preserve_fds: int, keep: bool, container_id: str) -> None:
    """Create and start a container; without --detach, wait for it, delete it and exit with its status."""
    c = _c()
    c.create(container_id, Path(bundle), pid_file=Path(pid_file) if pid_file else None,
             console_socket=console_socket, preserve_fds=preserve_fds, systemd_cgroup=ctx.obj["systemd_cgroup"],
             no_pivot=no_pivot)
    try:
        c.start(container_id)
        if detach:
            return
        code = c.wait(container_id)
    except BaseException:
        c.delete(container_id, force=True)  # a run that failed leaves nothing
        raise
    if not keep:
        c.delete(container_id, force=True)
    sys.exit(code)


@cli.command()
@click.argument("container_id")
def state(container_id: str) -> None:
    """Print a container's state as JSON."""
    click.echo(json.dumps(_c().state_json(container_id), indent=2))


def parse_signal(text: str) -> int:
    """``9``, ``KILL``, ``SIGKILL``: runc takes numbers and names."""
    if text.isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise PishError(f"unknown signal {text!r}") from None


@cli.command()
@click.option("--all", "-a", "all_processes", is_flag=True)
@click.argument("container_id")
@click.argument("sig", default="SIGTERM")
def kill(all_processes: bool, container_id: str, sig: str) -> None:
    """Send a signal to the container's first process (--all: to every process of it)."""
    _c().kill(container_id, parse_signal(sig), all_processes)


@cli.command()
@click.option("--force", "-f", is_flag=True)
@click.argument("container_id")
def delete(force: bool, container_id: str) -> None:
    """Delete a stopped container (--force: kill it first; a missing one is fine)."""
    _c().delete(container_id, force)


@cli.command(name="exec", context_settings={"allow_interspersed_args": False})
@click.option("--process", "-p", "process_file", type=click.Path(dir_okay=False), default=None)
@click.option("--detach", "-d", is_flag=True)
@click.option("--pid-file", type=click.Path(dir_okay=False), default=None)
@click.option("--tty", "-t", is_flag=True)
@click.option("--console-socket", default=None)
@click.option("--cwd", default=None)
@click.option("--env", "-e", multiple=True)
@click.option("--user", "-u", default=None)
@click.option("--additional-gids", "-g", multiple=True, type=int)
@click.option("--cap", "-c", multiple=True)
@click.option("--no-new-privs", is_flag=True)
@click.option("--preserve-fds", type=int, default=0)
@click.option("--apparmor", default=None, hidden=True)
@click.option("--process-label", default=None, hidden=True)
@click.argument("container_id")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_(process_file: str | None, detach: bool, pid_file: str | None, tty: bool, console_socket: str | None,
          cwd: str | None, env: tuple[str, ...], user: str | None, additional_gids: tuple[int, ...],
          cap: tuple[str, ...], no_new_privs: bool, preserve_fds: int, apparmor: str | None,
          process_label: str | None, container_id: str, command: tuple[str, ...]) -> None:
    """Run a process in a running container."""
    from pish_core.oci import process as process_json

    c = _c()
    if process_file:
        proc, security = process_json.load(Path(process_file), c.container_spec(container_id))
    else:
        if not command:
            raise PishError("exec: no command given (and no --process)")
        proc, security = process_json.from_flags(c.container_spec(container_id), command, tty=tty, cwd=cwd,
                                                 env=env, user=user, additional_gids=additional_gids, caps=cap,
                                                 no_new_privs=no_new_privs)
    code = c.exec_process(container_id, proc, detach=detach, pid_file=Path(pid_file) if pid_file else None,
                          console_socket=console_socket, preserve_fds=preserve_fds, security=security)
    sys.exit(code)


@cli.command()
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.argument("container_id")
@click.argument("ps_args", nargs=-1)
def ps(fmt: str, container_id: str, ps_args: tuple[str, ...]) -> None:
    """List the processes of a container."""
    pids = _c().pids(container_id)
    if fmt == "json":
        click.echo(json.dumps(pids))
        return
    click.echo("PID")
    for pid in pids:
        click.echo(str(pid))


@cli.command()
@click.argument("container_id")
def pause(container_id: str) -> None:
    """Freeze every process of a container."""
    _c().pause(container_id, True)


@cli.command()
@click.argument("container_id")
def resume(container_id: str) -> None:
    """Thaw a paused container."""
    _c().pause(container_id, False)


@cli.command(name="list")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--quiet", "-q", is_flag=True)
def list_(fmt: str, quiet: bool) -> None:
    """List containers."""
    rows = _c().list_all()
    if quiet:
        for row in rows:
            click.echo(row["id"])
    elif fmt == "json":
        click.echo(json.dumps(rows))
    else:
        click.echo(f"{'ID':<20} {'PID':<8} {'STATUS':<10} {'BUNDLE':<40} CREATED")
        for row in rows:
            click.echo(f"{row['id']:<20} {row['pid']:<8} {row['status']:<10} {row['bundle']:<40} {row['created']}")


@cli.command()
@click.option("--stats", is_flag=True, help="Print the container's figures once and exit.")
@click.option("--interval", default="5s")
@click.argument("container_id")
def events(stats: bool, interval: str, container_id: str) -> None:
    """Print a container's figures (--stats: once; else every --interval) as JSON lines."""
    every = float(interval.rstrip("s") or 5)
    c = _c()
    while True:
        click.echo(json.dumps(c.stats(container_id)))
        if stats:
            return
        time.sleep(every)
        if c.status(c._record(container_id)) == "stopped":
            return


@cli.command()
@click.option("--resources", "-r", "resources_file", type=click.Path(dir_okay=False), default=None)
@click.option("--memory", default=None)
@click.option("--pids-limit", type=int, default=None)
@click.option("--cpu-quota", type=int, default=None)
@click.option("--cpu-period", type=int, default=None)
@click.option("--cpu-share", type=int, default=None)
@click.argument("container_id")
def update(resources_file: str | None, memory: str | None, pids_limit: int | None, cpu_quota: int | None,
           cpu_period: int | None, cpu_share: int | None, container_id: str) -> None:
    """Change a running container's limits (a linux.resources JSON file, or flags)."""
    from pish_core.oci import update as updating

    updating.update(container_id, Path(resources_file) if resources_file else None, memory=memory,
                    pids_limit=pids_limit, cpu_quota=cpu_quota, cpu_period=cpu_period, cpu_share=cpu_share)


@cli.command()
def features() -> None:
    """Print what this runtime supports (the runtime-spec's features document)."""
    from pish_core.oci import features as feats

    click.echo(json.dumps(feats.document(), indent=2))


@cli.command()
@click.option("--bundle", "-b", type=click.Path(file_okay=False), default=".")
@click.option("--rootless", is_flag=True)
def spec(bundle: str, rootless: bool) -> None:
    """Write a default config.json in the bundle, as runc spec does."""
    from pish_core.oci import default_spec

    default_spec.write(Path(bundle), rootless=rootless)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def checkpoint(args: tuple[str, ...]) -> None:
    """Not supported."""
    raise PishError("checkpoint is not supported by pish-oci (no CRIU support)")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def restore(args: tuple[str, ...]) -> None:
    """Not supported."""
    raise PishError("restore is not supported by pish-oci (no CRIU support)")


def _log_error(message: str) -> None:
    """The error, to stderr and to --log (JSON lines with --log-format json), as runc writes it."""
    print(message, file=sys.stderr)
    if not G.log_file:
        return
    if G.log_format == "json":
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        line = json.dumps({"level": "error", "msg": message, "time": stamp})
    else:
        line = f'time="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}" level=error msg="{message}"'
    try:
        with open(G.log_file, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; any failure is one message (runc's words where engines parse them) and exit 1."""
    try:
        code: Any = cli.main(args=argv, prog_name="pish-oci", standalone_mode=False)
    except PishError as exc:
        _log_error(str(exc))
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        _log_error(exc.format_message())
        sys.exit(1)
    except OSError as exc:
        if os.environ.get("PISH_DEBUG"):
            raise
        _log_error(str(exc))
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def entry() -> None:
    """The ``pish-oci`` console script. Unlike ``pish`` it keeps the fds it was given: an engine passes
    some on purpose (--preserve-fds, LISTEN_FDS); the container's init closes the rest before exec."""
    quickexit.run_and_exit(main)


if __name__ == "__main__":
    entry()
