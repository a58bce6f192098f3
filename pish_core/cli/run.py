"""``pish run`` and ``pish create``: parse docker-style flags into a ContainerSpec, then run it in the
foreground or hand it to a supervisor (``-d``, ``create``)."""
from __future__ import annotations

import sys
from typing import Any

import click

from pish_core import log


def container_options(f: Any) -> Any:
    """The flags that describe a container; shared by every command that makes one."""
    options = [
        click.option("--name", help="Container name (default: a generated adjective_noun)."),
        click.option("--hostname", help="Hostname inside the container (default: the name)."),
        click.option("--storage", default="overlay", show_default=True, help="Storage driver."),
        click.option("--storage-opt", multiple=True, help="Storage driver option key=value."),
        click.option("--limits", "limits_driver", default="auto", show_default=True,
                     help="Limits driver; auto: cgroupv2 on a unified host, cgroupv1 else, none when rootless."),
        click.option("--net", help="Network driver: bridge, none, host, ... (default: bridge with --network, else none)."),
        click.option("--net-opt", multiple=True, help="Network driver option key=value."),
        click.option("--network", help="Network to join (default pish0), as docker's: a network's name alone "
                                        "uses the bridge driver; none, host and bridge name the driver."),
        click.option("--ip", help="Address in CIDR form, e.g. 10.0.4.6/24 (default: the next free one)."),
        click.option("-p", "--publish", multiple=True, help="Publish a port: [IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp] (no HOSTPORT: pish picks one)."),
        click.option("--dns", multiple=True, help="Nameserver for the container (default: the host's)."),
        click.option("--network-alias", multiple=True,
                     help="Another name the container answers to on its network (in the network's /etc/hosts)."),
        click.option("--isolation", default="unshare", show_default=True, help="Isolation driver."),
        click.option("--memory", "-m", help="Memory limit, e.g. 64m (at least 6m)."),
        click.option("--cpus", help="CPU quota in CPUs, e.g. 0.5."),
        click.option("--cpuset-cpus", help="CPUs the container may use, e.g. 0-1."),
        click.option("--pids-limit", help="Maximum number of processes."),
        click.option("--memory-swap", help="Memory plus swap, e.g. 128m; -1: unlimited swap."),
        click.option("--memory-reservation", help="Soft memory floor (cgroup v2 memory.low), e.g. 32m."),
        click.option("--cpu-shares", "-c", help="Relative CPU weight (default 1024; cgroup v2 cpu.weight)."),
        click.option("--cpuset-mems", help="Memory nodes the container may use, e.g. 0."),
        click.option("--blkio-weight", help="Relative block IO weight, 10 to 1000 (cgroup v2 io.weight)."),
        click.option("--device-read-bps", multiple=True, help="Read rate limit on a device, e.g. /dev/vda:1mb."),
        click.option("--device-write-bps", multiple=True, help="Write rate limit on a device, e.g. /dev/vda:1mb."),
        click.option("--device-read-iops", multiple=True, help="Read IO/s limit on a device, e.g. /dev/vda:100."),
        click.option("--device-write-iops", multiple=True, help="Write IO/s limit on a device, e.g. /dev/vda:100."),
        click.option("--limit", "limit", multiple=True, help="Raw cgroup setting controller.key=value."),
        click.option("--cgroupns", type=click.Choice(["private", "host"]),
                     help="Cgroup namespace (default: private on cgroup v2, host on v1, as docker)."),
        click.option("-e", "--env", multiple=True, help="Environment variable KEY=VALUE."),
        click.option("-v", "--volume", multiple=True, help="Bind mount HOSTPATH:CONTAINERPATH[:ro]."),
        click.option("--tmpfs", multiple=True, help="Mount a tmpfs at CONTAINERPATH[:size=64m]."),
        click.option("-w", "--workdir", help="Working directory inside, an absolute path (default: the image's, else /)."),
        click.option("-u", "--user", help="Run as USER[:GROUP], names from the image's /etc/passwd and /etc/group."),
        click.option("--entrypoint", help="Replace the image's entrypoint (and drop its Cmd); '' clears it."),
        click.option("--read-only", is_flag=True, help="Mount the root read-only (tmpfs and volumes stay as given)."),
        click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal."),
        click.option("-i", "--interactive", is_flag=True, help="Keep stdin open."),
        click.option("--stop-timeout", default="10", show_default=True,
                     help="Seconds between a forwarded SIGTERM/SIGINT and SIGKILL."),
        click.option("--cap-add", multiple=True, help="Add a capability (NET_ADMIN, CAP_SYS_TIME, ALL...)."),
        click.option("--cap-drop", multiple=True, help="Drop a capability from docker's default set (or ALL)."),
        click.option("--privileged", is_flag=True,
                     help="Every capability and device, no seccomp filter, no masked paths."),
        click.option("--security-opt", multiple=True,
                     help="seccomp=FILE (a custom profile, docker's format), seccomp=unconfined, or "
                          "no-new-privileges[=false] (on by default)."),
        click.option("--userns", help="User namespace: host (default), auto, or CONTAINERID:HOSTID:COUNT (HOSTID 0 only with --privileged)."),
        click.option("--pull", "pull_policy", type=click.Choice(["missing", "always", "never"]), default="missing",
                     show_default=True, help="Pull IMAGE from its registry: when not in the store, always, never."),
        click.option("--platform", help="OS/ARCH[/VARIANT] to pull (default: the host's)."),
        click.option("--tls-verify", "tls_verify", default="true", show_default=True, metavar="BOOL",
                     help="Verify the registry's TLS certificate when pulling; false: plain HTTP."),
        click.argument("image"),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _image_process(opts: dict[str, Any]) -> tuple[Any, Any]:
    """The image (an archive is imported on the way) and the Process its config and the flags make."""
    from pish_core.flags import parse_env
    from pish_core.image.cache import resolve
    from pish_core.image.config import process_for

    image = resolve(opts["image"])
    process = process_for(image.config, image.layers, args=tuple(opts["command"]), env=parse_env(opts["env"]),
                          workdir=opts["workdir"], user=opts["user"], entrypoint=opts["entrypoint"],
                          terminal=opts["tty"], interactive=opts["interactive"])
    return image, process


def _pull_if_needed(opts: dict[str, Any]) -> None:
    """``--pull``: fetch IMAGE from its registry when it names no path and (``missing``) no stored image.
    Imports the registry client only then: a run of a local tar or a stored image never loads it."""
    from pathlib import Path

    image, policy = opts["image"], opts.get("pull_policy", "missing")
    if policy == "never" or Path(image).exists() or image.endswith((".tar", ".tar.gz", ".tgz")) \
            or image.startswith(("/", "./", "../")):
        return
    from pish_core.image import store

    if policy == "missing" and store.find(image) is not None:
        return
    from pish_core.image.reference import candidates, looks_like_reference

    if not looks_like_reference(image):
        return
    if policy == "missing":  # a short name pulled before from a search registry other than Docker Hub
        for ref in candidates(image):
            if ref.store_name and (found := store.find(ref.store_name)) is not None:
                opts["image"] = found.id
                return
    from pish_core.cli.pull import _tls_verify
    from pish_core.errors import ImageError
    from pish_core.image.pull import pull

    try:
        img = pull(image, platform=opts.get("platform"), tls_verify=_tls_verify(opts.get("tls_verify", "true")))
    except ImageError as exc:
        if policy == "always":
            raise
        raise ImageError(f"image {image!r} is not in the store (pish image ls) and pulling it failed: {exc}") from None
    found = store.find(image)
    if found is None or found.id != img.id:  # pulled by digest: no name to find it by
        opts["image"] = img.id


def build_spec(opts: dict[str, Any]) -> Any:
    """Turn the flags into a validated ContainerSpec: the one place input from the edge is checked."""
    from pish_core import names
    from pish_core.drivers import load_class
    from pish_core.flags import (
        DEVICE_LIMIT_FLAGS,
        check_image,
        parse_cpus,
        parse_cpuset,
        parse_cpuset_mems,
        parse_device_limit,
        parse_dns,
        parse_ip,
        parse_limit,
        parse_memory,
        parse_memory_swap,
        parse_network_alias,
        parse_options,
        parse_positive_int,
        parse_publish,
        parse_size,
        parse_tmpfs,
        parse_volume,
        parse_workdir,
    )
    from pish_core.spec import ContainerSpec, DriverChoice, NetworkSpec, Resources

    name = names.check_name(opts["name"]) if opts["name"] is not None else names.random_name()
    if opts["workdir"] is not None:
        parse_workdir(opts["workdir"])
    resources = Resources(
        memory=parse_memory(opts["memory"]) if opts["memory"] else None,
        cpus=parse_cpus(opts["cpus"]) if opts["cpus"] else None,
        cpuset_cpus=parse_cpuset(opts["cpuset_cpus"]) if opts["cpuset_cpus"] else None,
        pids_limit=parse_positive_int(opts["pids_limit"], "--pids-limit") if opts["pids_limit"] else None,
        extra=tuple(parse_limit(item) for item in opts["limit"]),
        memory_swap=parse_memory_swap(opts["memory_swap"]) if opts["memory_swap"] else None,
        memory_reservation=(parse_size(opts["memory_reservation"], "--memory-reservation")
                            if opts["memory_reservation"] else None),
        cpu_shares=parse_positive_int(opts["cpu_shares"], "--cpu-shares") if opts["cpu_shares"] else None,
        cpuset_mems=parse_cpuset_mems(opts["cpuset_mems"]) if opts["cpuset_mems"] else None,
        blkio_weight=parse_positive_int(opts["blkio_weight"], "--blkio-weight") if opts["blkio_weight"] else None,
        device_limits=tuple(parse_device_limit(item, flag) for flag in DEVICE_LIMIT_FLAGS
                            for item in opts[flag.lstrip("-").replace("-", "_")]),
    )
    limits, limits_class, security, user_namespace = _security_choices(opts, resources)
    try:
        stop_timeout = float(opts["stop_timeout"])
    except ValueError:
        stop_timeout = -1
    if not 0 <= stop_timeout <= 3600:
        from pish_core.errors import SpecError

        raise SpecError(f"invalid --stop-timeout {opts['stop_timeout']!r}: use seconds from 0 to 3600")
    net, network_name = network_choice(opts["net"], opts["network"])
    choices = {
        "storage": DriverChoice(opts["storage"], parse_options(opts["storage_opt"], "--storage-opt")),
        "limits": DriverChoice(limits),
        "net": DriverChoice(net, parse_options(opts["net_opt"], "--net-opt")),
        "isolation": DriverChoice(opts["isolation"]),
    }
    for slot, choice in choices.items():  # an unknown driver is refused before any image is imported
        names.check_name(choice.name, f"{slot} driver name")
        load_class("network" if slot == "net" else slot, choice.name)
    hostname = names.check_hostname(opts["hostname"]) if opts["hostname"] else names.hostname_for(name)
    network = NetworkSpec(network=network_name, ip=parse_ip(address) if (address := opts.get("ip")) else None,
                          ports=tuple(parse_publish(p) for p in opts["publish"]),
                          dns=tuple(parse_dns(d) for d in opts["dns"]),
                          aliases=tuple(parse_network_alias(a) for a in opts["network_alias"]))
    mounts = tuple(parse_volume(v) for v in opts["volume"]) + tuple(parse_tmpfs(t) for t in opts["tmpfs"])
    # Last, because it may import an archive into the store: every cheap check has passed by now.
    _pull_if_needed(opts)
    check_image(opts["image"])
    image, process = _image_process(opts)
    return ContainerSpec(
        id=names.new_id(),
        name=name,
        image=opts["image"],
        hostname=hostname,
        process=process,
        image_id=image.image_id,
        readonly_rootfs=opts["read_only"],
        resources=resources,
        network=network,
        mounts=mounts,
        stop_timeout=stop_timeout,
        security=security,
        userns=user_namespace,
        cgroupns=opts["cgroupns"] or ("private" if limits_class.unified else "host"),
        storage=choices["storage"],
        limits=choices["limits"],
        net=choices["net"],
        isolation=choices["isolation"],
    )


DEFAULT_NETWORK = "pish0"


def network_choice(net: str | None, network: str | None) -> tuple[str, str]:
    """The network driver and the network to join, from ``--net`` and ``--network`` as docker reads its one
    ``--network``: ``none``, ``host`` and ``bridge`` name the driver (bridge: on pish0), any other name is a
    network of the bridge driver. ``--net`` alone picks the driver; neither means no network."""
    if net is None and network in ("none", "host", "bridge"):
        return network, DEFAULT_NETWORK
    if net is None:
        return ("bridge" if network else "none"), network or DEFAULT_NETWORK
    return net, DEFAULT_NETWORK if network in (None, "bridge") else network


def _security_choices(opts: dict[str, Any], resources: Any) -> tuple[str, Any, Any, Any]:
    """The limits driver (``auto`` resolved) and its class, the security flags and ``--userns``."""
    from pish_core import names, paths, userns
    from pish_core.drivers import load_class
    from pish_core.security.options import security_from_flags
    from pish_drivers.limits.auto import choose

    limits = opts["limits_driver"]
    if limits == "auto":
        limits = choose(resources, rootless=paths.rootless())
    limits_class: Any = load_class("limits", names.check_name(limits, "limits driver name"))
    security = security_from_flags(opts["cap_add"], opts["cap_drop"], opts["privileged"], opts["security_opt"],
                                   device_allowlist=limits_class.device_allowlist)
    user_namespace = userns.parse(opts["userns"])
    if not opts["privileged"] and userns.maps_host_root(user_namespace):
        from pish_core.errors import SpecError

        raise SpecError(f"--userns {opts['userns']}: maps the host's root (uid 0) into the container, "
                        "which is no user namespace at all; map other ids, or add --privileged")
    return limits, limits_class, security, user_namespace


restart_option = click.option(
    "--restart", metavar="POLICY",
    help="Restart the container when it exits: no (default), on-failure[:N] (N restarts at most), always, "
         "unless-stopped; with a back-off from 100 ms, doubling. Not with --rm; run needs -d.")
log_level_option = click.option("--log-level", default="info", show_default=True,
                                type=click.Choice(log.LEVELS, case_sensitive=False),
                                help="How much pish says on stderr.")


@click.command(context_settings={"allow_interspersed_args": False})
@log_level_option
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the container id.")
@click.option("--rm", "auto_remove", is_flag=True,
              help="Remove the container when it exits (a foreground run always leaves nothing).")
@restart_option
@container_options
def run(log_level: str, detach: bool, auto_remove: bool, restart: str | None, **opts: Any) -> None:
    """Run COMMAND (default: the image's) in a new container on IMAGE and exit with its status.

    IMAGE is an imported image (NAME[:TAG] or id), an image archive, or a rootfs tar or directory."""
    log.setup(log_level)
    from pish_core.restartpolicy import parse as parse_restart

    policy = parse_restart(restart, auto_remove=auto_remove)
    if policy.name != "no" and not detach:
        from pish_core.errors import SpecError

        raise SpecError(f"--restart {restart} needs -d: a supervisor in the background restarts the container")
    spec = build_spec(opts)
    if detach:
        from pish_core.detach import start_detached

        click.echo(start_detached(spec, start=True, auto_remove=auto_remove, restart=policy))
        return
    from pish_core.runtime import run as run_container

    sys.exit(run_container(spec))


@click.command(context_settings={"allow_interspersed_args": False})
@log_level_option
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@restart_option
@container_options
def create(log_level: str, auto_remove: bool, restart: str | None, **opts: Any) -> None:
    """Create a container whose command waits for `pish start`; print its id."""
    log.setup(log_level)
    from pish_core.detach import start_detached
    from pish_core.restartpolicy import parse as parse_restart

    policy = parse_restart(restart, auto_remove=auto_remove)
    click.echo(start_detached(build_spec(opts), start=False, auto_remove=auto_remove, restart=policy))
