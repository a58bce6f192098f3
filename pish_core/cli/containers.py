"""Commands on existing containers: ps, inspect, logs, start, stop, kill, rm, exec, gc."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime
from typing import Any

import click

from pish_core import log
from pish_core.cli.output import json_or_table


def _each(refs: tuple[str, ...], action: object, echo: bool = True) -> None:
    """Apply ``action`` to each container and print its name (with ``echo``), as docker does; fail at the
    end if any failed."""
    from pish_core.errors import PishError

    failed: PishError | None = None
    for ref in refs:
        try:
            action(ref)  # type: ignore[operator]
            if echo:
                click.echo(ref)
        except PishError as exc:
            print(f"pish: {exc}", file=sys.stderr)
            failed = exc
    if failed is not None:
        sys.exit(failed.exit_code)


def _ago(ts: float | None) -> str:
    if ts is None:
        return ""
    secs = int(time.time() - ts)
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if secs >= size:
            return f"{secs // size} {unit} ago"
    return f"{secs} seconds ago"


def _ports(resources: list[dict[str, Any]]) -> list[str]:
    """The ports a container publishes now, as docker shows them (``0.0.0.0:8080->80/tcp``). From its
    journal, the one place that holds the host port pish picked for ``-p CPORT`` (a released port
    leaves it)."""
    return [f"{r.get('host_ip') or '0.0.0.0'}:{r['host_port']}->{r['container_port']}/{r['protocol']}"
            for r in resources if r.get("kind") == "network" and r.get("what") == "port"]


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show every container, not only running ones.")
@click.option("-q", "--quiet", is_flag=True, help="Only print ids.")
@json_or_table
def ps(show_all: bool, quiet: bool, as_json: bool) -> None:
    """List containers."""
    from pish_core import state
    from pish_core.lifecycle import status_text

    rows: list[dict[str, Any]] = []
    for s in state.list_all():
        status = status_text(s)
        if not show_all and status not in ("running", "paused") and not status.startswith("restarting"):
            continue
        rows.append({"id": s.id, "name": s.name, "image": s.image, "command": " ".join(s.command),
                     "status": status, "created": s.created, "address": s.address,
                     "ports": _ports(s.resources), "restart_count": s.restart_count})
    if quiet:
        for r in rows:
            click.echo(r["id"][:12])
    elif as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        table = [("CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS", "CREATED", "ADDRESS", "PORTS")]
        table += [(r["id"][:12], r["name"], os.path.basename(r["image"]), _clip(r["command"]), r["status"],
                   _ago(r["created"]), r["address"] or "", ", ".join(r["ports"])) for r in rows]
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
        for row in table:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _clip(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@click.command()
@click.argument("refs", nargs=-1, required=True)
def inspect(refs: tuple[str, ...]) -> None:
    """Print containers as JSON: spec, state, processes, published ports and the resources they hold."""
    import dataclasses

    from pish_core import proc, state
    from pish_core.lifecycle import status_text

    out = []
    for ref in refs:
        s = state.resolve(ref)
        data = dataclasses.asdict(s)
        data["state"] = status_text(s)
        data["pids"] = proc.pids_in_pidns_of(s.pid) if s.pid and proc.is_same(s.pid, s.pid_start) else []
        data["created_at"] = datetime.fromtimestamp(s.created).isoformat()
        data["ports"] = _ports(s.resources)
        data["RestartCount"] = s.restart_count  # docker's keys: restarts by the policy, and the policy
        data["RestartPolicy"] = s.restart_policy or {"Name": "no", "MaximumRetryCount": 0}
        out.append(data)
    click.echo(json.dumps(out, indent=2))


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing output as it comes, until the container ends.")
@click.argument("ref")
def logs(follow: bool, ref: str) -> None:
    """Print what a detached container wrote to stdout and stderr."""
    from pish_core import paths, state

    s = state.resolve(ref)
    out = sys.stdout.buffer
    if not paths.log_file(s.id).exists():
        return
    with open(paths.log_file(s.id), "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not follow or not state.supervisor_alive(s.id):
                if not (chunk := f.read()):
                    return
                out.write(chunk)
                continue
            time.sleep(0.1)


@click.command()
@click.option("--log-level", default="warning", type=click.Choice(log.LEVELS), show_default=True)
@click.argument("refs", nargs=-1, required=True)
def start(log_level: str, refs: tuple[str, ...]) -> None:
    """Start created containers, or exited ones again (same id, name, spec and files; a new process)."""
    from pish_core.lifecycle import start as start_one

    log.setup(log_level)
    _each(refs, start_one)


@click.command()
@click.option("-t", "--time", "timeout", default=10.0, show_default=True,
              help="Seconds to wait for a running container to stop before SIGKILL.")
@click.argument("refs", nargs=-1, required=True)
def restart(timeout: float, refs: tuple[str, ...]) -> None:
    """Stop containers (SIGTERM, SIGKILL after the timeout) and start them again."""
    from pish_core.lifecycle import restart as restart_one

    log.setup("warning")
    _each(refs, lambda ref: restart_one(ref, timeout))


@click.command()
@click.option("-t", "--time", "timeout", default=10.0, show_default=True, help="Seconds to wait before SIGKILL.")
@click.argument("refs", nargs=-1, required=True)
def stop(timeout: float, refs: tuple[str, ...]) -> None:
    """Stop running containers: SIGTERM, then SIGKILL after the timeout."""
    from pish_core.lifecycle import stop as stop_one

    log.setup("warning")
    _each(refs, lambda ref: stop_one(ref, timeout))


@click.command()
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal name or number.")
@click.argument("refs", nargs=-1, required=True)
def kill(sig: str, refs: tuple[str, ...]) -> None:
    """Send a signal to running containers."""
    from pish_core.errors import SpecError
    from pish_core.lifecycle import kill as kill_one

    name = sig.upper().removeprefix("SIG")
    try:
        signum = int(name) if name.isdigit() else int(signal.Signals[f"SIG{name}"])
    except KeyError:
        raise SpecError(f"invalid signal {sig!r}") from None
    _each(refs, lambda ref: kill_one(ref, signum))


@click.command()
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.argument("refs", nargs=-1, required=True)
def rm(force: bool, refs: tuple[str, ...]) -> None:
    """Remove containers."""
    from pish_core.lifecycle import remove

    log.setup("warning")
    _each(refs, lambda ref: remove(ref, force))


@click.command()
@click.option("--log-level", default="info", type=click.Choice(log.LEVELS), show_default=True)
def gc(log_level: str) -> None:
    """Release everything held by containers whose supervisor died (after a crash or a SIGKILL), and remove
    the partial layers of killed imports and pulls."""
    from pish_core.errors import PishError
    from pish_core.lifecycle import gc as collect_all

    log.setup(log_level)
    failed: list[PishError] = []
    for cid in collect_all(failed):
        click.echo(cid[:12])
    from pish_core.image.importer import clean_partial

    clean_partial()  # partial layers of killed imports and pulls
    for exc in failed:
        print(f"pish: {exc}", file=sys.stderr)
    if failed:
        sys.exit(failed[0].exit_code)


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-e", "--env", multiple=True, help="Environment variable KEY=VALUE.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="USER[:GROUP] to run as (default: the container's user).")
@click.argument("ref")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(interactive: bool, tty: bool, env: tuple[str, ...], workdir: str | None, user: str | None, ref: str,
          command: tuple[str, ...]) -> None:
    """Run COMMAND in a running container and exit with its status."""
    from pish_core.flags import parse_env, parse_workdir
    from pish_core.lifecycle import exec_in

    if workdir is not None:
        parse_workdir(workdir)
    sys.exit(exec_in(ref, command, env=parse_env(env), cwd=workdir, user=user, terminal=tty,
                     interactive=interactive))


@click.command()
@click.argument("refs", nargs=-1, required=True)
def pause(refs: tuple[str, ...]) -> None:
    """Freeze every process of running containers where it is (cgroup freezer)."""
    from pish_core.lifecycle import pause as pause_one

    log.setup("warning")
    _each(refs, lambda ref: pause_one(ref, True))


@click.command()
@click.argument("refs", nargs=-1, required=True)
def unpause(refs: tuple[str, ...]) -> None:
    """Let paused containers go on."""
    from pish_core.lifecycle import pause as pause_one

    log.setup("warning")
    _each(refs, lambda ref: pause_one(ref, False))


@click.command()
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True,
              help="Keys that detach from the container and leave it running (ctrl-LETTER or a character, "
                   "comma-separated).")
@click.argument("ref")
def attach(detach_keys: str, ref: str) -> None:
    """Attach this terminal to a running container made with -t (its input too with -i); exit with its
    exit code when it ends, or 0 when the detach keys leave it running."""
    from pish_core.attach import attach as attach_to

    sys.exit(attach_to(ref, detach_keys))


@click.command()
@click.argument("refs", nargs=-1, required=True)
def wait(refs: tuple[str, ...]) -> None:
    """Block until containers stop, then print their exit codes, one a line."""
    from pish_core.lifecycle import wait as wait_one

    _each(refs, lambda ref: click.echo(wait_one(ref)), echo=False)


@click.command()
@click.argument("ref")
@click.argument("private_port", required=False)
def port(ref: str, private_port: str | None) -> None:
    """List a container's published ports (80/tcp -> 0.0.0.0:8080), or the host side of PRIVATE_PORT."""
    from pish_core import state
    from pish_core.errors import PishError

    s = state.resolve(ref)
    want = None
    if private_port is not None:
        number, _, protocol = private_port.partition("/")
        if not number.isascii() or not number.isdigit() or protocol not in ("", "tcp", "udp"):
            raise PishError(f"invalid port {private_port!r}: use PORT[/tcp|udp], e.g. 80/tcp")
        want = (int(number), protocol or "tcp")
    found = False
    for r in s.resources:
        if r.get("kind") != "network" or r.get("what") != "port":
            continue
        key = (int(r["container_port"]), r["protocol"])
        if want is None or key == want:
            found = True
            host = f"{r.get('host_ip') or '0.0.0.0'}:{r['host_port']}"
            click.echo(host if want else f"{key[0]}/{key[1]} -> {host}")
    if want is not None and not found:
        raise PishError(f"no public port '{want[0]}/{want[1]}' published for {s.name}")


@click.command()
@click.argument("old")
@click.argument("new")
def rename(old: str, new: str) -> None:
    """Rename container OLD to NEW."""
    from pish_core import state

    state.rename(old, new)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("ref")
@click.argument("ps_options", nargs=-1, type=click.UNPROCESSED)
def top(ref: str, ps_options: tuple[str, ...]) -> None:
    """Show the processes of a running container: the host's ps (default -ef) cut to its rows."""
    import subprocess

    from pish_core.errors import PishError
    from pish_core.lifecycle import processes

    pids = set(processes(ref))
    try:
        out = subprocess.run(["ps", *(ps_options or ("-ef",))], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise PishError(f"cannot run ps: {exc.strerror}") from None
    lines = out.stdout.splitlines()
    if out.returncode != 0 or not lines:
        raise PishError(f"ps {' '.join(ps_options)} failed: {out.stderr.strip().splitlines()[-1:] or ['no output']}")
    header = lines[0].split()
    if "PID" not in header:
        raise PishError(f"ps {' '.join(ps_options)}: its output has no PID column")
    column = header.index("PID")
    click.echo(lines[0])
    for line in lines[1:]:
        fields = line.split(None, len(header) - 1)
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in pids:
            click.echo(line)


@click.command()
@click.option("--memory", "-m", help="Memory limit, e.g. 64m (at least 6m).")
@click.option("--cpus", help="CPU quota in CPUs, e.g. 0.5.")
@click.option("--pids-limit", help="Maximum number of processes.")
@click.argument("refs", nargs=-1, required=True)
def update(memory: str | None, cpus: str | None, pids_limit: str | None, refs: tuple[str, ...]) -> None:
    """Change the limits of running containers, live (their cgroup's files)."""
    from pish_core.errors import SpecError
    from pish_core.flags import parse_cpus, parse_memory, parse_positive_int
    from pish_core.lifecycle import update as update_one
    from pish_core.spec import Resources

    if memory is None and cpus is None and pids_limit is None:
        raise SpecError("update: give at least one of --memory, --cpus, --pids-limit")
    res = Resources(memory=parse_memory(memory) if memory is not None else None,
                    cpus=parse_cpus(cpus) if cpus is not None else None,
                    pids_limit=parse_positive_int(pids_limit, "--pids-limit") if pids_limit is not None else None)
    log.setup("warning")
    _each(refs, lambda ref: update_one(ref, res))


def _size(n: float) -> str:
    """Bytes as docker's stats shows them: 1.5MiB, 64MiB, 7.6GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


@click.command()
@click.option("--no-stream", is_flag=True, help="Print one sample and exit (default: refresh every second).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table, or json: one object a line, docker's keys and the raw figures.")
@click.argument("refs", nargs=-1)
def stats(no_stream: bool, fmt: str, refs: tuple[str, ...]) -> None:
    """CPU %, memory use / limit and pids of running containers (all of them by default), from their cgroups."""
    from pish_core.lifecycle import usage

    while True:
        rows = usage(list(refs))
        lines = []
        for r in rows:
            mem, limit = int(str(r["memory_bytes"])), int(str(r["memory_limit"]))
            docker = {"ID": str(r["id"])[:12], "Name": r["name"], "CPUPerc": f"{r['cpu_percent']:.2f}%",
                      "MemUsage": f"{_size(mem)} / {_size(limit)}", "MemPerc": f"{100 * mem / limit:.2f}%",
                      "PIDs": str(r["pids"])}
            lines.append(json.dumps({**docker, **r}) if fmt == "json" else "\t".join(map(str, docker.values())))
        if fmt == "table":
            table = [line.split("\t") for line in
                     ["CONTAINER ID\tNAME\tCPU %\tMEM USAGE / LIMIT\tMEM %\tPIDS", *lines]]
            widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
            lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        if not no_stream and sys.stdout.isatty():
            click.echo("\033[2J\033[H", nl=False)
        click.echo("\n".join(lines))
        if no_stream:
            return
        time.sleep(0.5)
