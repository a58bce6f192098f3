"""``pish pull`` (and ``pish image pull``), ``pish login`` and ``pish logout``: images from registries."""
from __future__ import annotations

import sys

import click

from pish_core import log


def _tls_verify(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise click.BadParameter(f"{value!r}: use true or false", param_hint="--tls-verify")


pull_options = [
    click.option("--platform", help="OS/ARCH[/VARIANT] to pull from a multi-platform image (default: the host's)."),
    click.option("--tls-verify", "tls_verify", default="true", show_default=True, metavar="BOOL",
                 help="Verify the registry's TLS certificate; false: talk plain HTTP."),
    click.option("-q", "--quiet", is_flag=True, help="No progress; print only the image id."),
    click.option("--log-level", default="info", show_default=True,
                 type=click.Choice(log.LEVELS, case_sensitive=False), help="How much pish says on stderr."),
    click.argument("reference"),
]


def _pull(reference: str, platform: str | None, tls_verify: str, quiet: bool, log_level: str) -> None:
    """Pull REFERENCE ([HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]) from its registry into the image store."""
    log.setup("warning" if quiet else log_level)
    from pish_core.image.pull import pull as do_pull

    img = do_pull(reference, platform=platform, tls_verify=_tls_verify(tls_verify), quiet=quiet)
    click.echo(f"sha256:{img.id}")


pull = click.command("pull", help=_pull.__doc__)(_pull)
for _option in reversed(pull_options):
    pull = _option(pull)


@click.command()
@click.option("-u", "--username", help="User name (default: asked on the terminal).")
@click.option("-p", "--password", help="Password (visible in ps: prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--tls-verify", "tls_verify", default="true", show_default=True, metavar="BOOL",
              help="Verify the registry's TLS certificate; false: talk plain HTTP.")
@click.argument("host")
def login(username: str | None, password: str | None, password_stdin: bool, tls_verify: str, host: str) -> None:
    """Log in to registry HOST: the credentials are checked, then kept in the auth file (see docs/images.md)."""
    log.setup("info")
    from pish_core.errors import ImageError
    from pish_core.image import auth
    from pish_core.image.reference import DOCKER_HUB, DOCKER_HUB_API
    from pish_core.image.registry import Registry

    if username is None:
        username = click.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password is None:
        password = click.prompt("Password", hide_input=True)
    if not username or not password:
        raise ImageError("login needs a user name and a password")
    host = DOCKER_HUB if host in ("docker.io", "index.docker.io", DOCKER_HUB_API) else host
    api = DOCKER_HUB_API if host == DOCKER_HUB else host
    Registry(api, "", tls_verify=_tls_verify(tls_verify), credentials=(username, password)).check_login()
    auth.store(host, username, password)
    click.echo("Login Succeeded!")


@click.command()
@click.argument("host")
def logout(host: str) -> None:
    """Forget the credentials for registry HOST."""
    log.setup("info")
    from pish_core.errors import ImageError
    from pish_core.image import auth

    if not auth.forget(host):
        raise ImageError(f"not logged in to {host}")
    click.echo(f"Removed login credentials for {host}")
