"""Name resolution for containers: the /etc/hosts of a network and the /etc/resolv.conf of a container.

Docker answers names with a DNS server of its own inside every container's namespace; pish does it the
older way, with files, which costs nothing at run time:

- **/etc/hosts**: one file per network (``paths.hosts_file``) listing its containers by name, hostname
  and aliases (``networks.py`` writes it). A container's own path (``paths.etc_hosts``) is a hard link
  to it, bind-mounted read-only, so when a container joins or leaves, that one file is rewritten *in
  place* and every member sees it: a bind mount pins the inode, so a new file renamed over the old one
  would go unseen by the containers already running. A container connected to a second network gets a
  file of its own (every network it is on), mounted over the link from inside its mount namespace
  (``bind_into``).
- **/etc/resolv.conf**: one file per container (``paths.resolv_conf``), with the ``--dns`` servers or
  else the host's. As docker does, nameservers on the host's loopback (a local caching resolver such as
  systemd-resolved's 127.0.0.53) are dropped: the container's loopback is not the host's.
"""
from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from pish_core import paths
from pish_core.spec import Mount

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
#: How these files are mounted into a container: read-only, and nothing in them can be executed or a device.
FILE_MOUNT_OPTIONS = ("bind", "ro", "nosuid", "nodev", "noexec")
#: What docker falls back to when the host has no nameserver a container can reach.
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")

_HEADER = """\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
"""


def hosts_text(entries: Iterable[tuple[str, Sequence[str]]]) -> str:
    """The hosts file for ``entries`` of (address, names), names deduplicated in order."""
    return _HEADER + _lines(entries)


def _lines(entries: Iterable[tuple[str, Sequence[str]]]) -> str:
    return "".join(f"{address}\t{' '.join(dict.fromkeys(n for n in names if n))}\n" for address, names in entries)


def write_in_place(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path``'s content without replacing the file (its inode is bind-mounted elsewhere).

    Written whole, then cut to length, so a reader sees at worst a moment of old lines after new ones,
    never an empty file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        data = text.encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def write_hosts(path: Path, entries: Iterable[tuple[str, Sequence[str]]]) -> None:
    write_in_place(path, hosts_text(entries))


def append_hosts(path: Path, entries: Iterable[tuple[str, Sequence[str]]]) -> bool:
    """Add the lines of ``entries`` at the end of hosts file ``path`` (one write); False if there is no
    such file yet (it needs its header: write it whole)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        os.write(fd, _lines(entries).encode())
    finally:
        os.close(fd)
    return True


def host_resolv_conf(path: Path = HOST_RESOLV_CONF) -> tuple[list[str], list[str]]:
    """The host's nameservers a container can use, and its other lines (search, options)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return [], []
    servers, other = [], []
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        if fields[0] == "nameserver" and len(fields) > 1:
            try:
                address = ipaddress.ip_address(fields[1].split("%")[0])
            except ValueError:
                continue
            if not address.is_loopback:
                servers.append(fields[1])
        elif fields[0] in ("search", "domain", "options"):
            other.append(" ".join(fields))
    return servers, other


def resolv_conf_text(dns: Sequence[str], host: Path = HOST_RESOLV_CONF) -> str:
    """The container's resolv.conf: ``dns`` if given, else the host's reachable nameservers."""
    servers, other = host_resolv_conf(host)
    if dns:
        servers = list(dns)
    elif not servers:
        servers = list(FALLBACK_NAMESERVERS)
    return "".join(f"nameserver {s}\n" for s in servers) + "".join(f"{line}\n" for line in other)


def write_resolv_conf(path: Path, dns: Sequence[str]) -> None:
    write_in_place(path, resolv_conf_text(dns))


def hostname_mounts(cid: str, hostname: str) -> list[Mount]:
    """Write the container's /etc/hostname; its read-only mount (none when the spec keeps the host's)."""
    if not hostname:
        return []
    path = paths.etc_hostname(cid)
    write_in_place(path, f"{hostname}\n")
    return [Mount("/etc/hostname", str(path), "bind", FILE_MOUNT_OPTIONS)]


def host_hosts_mounts(path: Path = Path("/etc/hosts")) -> list[Mount]:
    """The host's /etc/hosts, read-only, for a container on the host's network (none if it has none)."""
    return [Mount("/etc/hosts", str(path), "bind", FILE_MOUNT_OPTIONS)] if path.is_file() else []


def loopback_hosts_mount(cid: str, hostname: str) -> Mount:
    """Write an /etc/hosts of the loopback names alone (and the hostname, on 127.0.0.1) for a container
    on no network; its read-only mount."""
    path = paths.etc_hosts(cid)
    write_in_place(path, _HEADER + (f"127.0.0.1\t{hostname}\n" if hostname else ""))
    return Mount("/etc/hosts", str(path), "bind", FILE_MOUNT_OPTIONS)


def resolv_conf_mount(cid: str, dns: Sequence[str]) -> Mount:
    """Write the container's /etc/resolv.conf (``dns``, else the host's nameservers); its read-only mount."""
    path = paths.resolv_conf(cid)
    write_resolv_conf(path, dns)
    return Mount("/etc/resolv.conf", str(path), "bind", FILE_MOUNT_OPTIONS)


CLONE_FS = 0x200  # <linux/sched.h>: a thread that shares no cwd/root with the others may change mount ns


def bind_into(pid: int, source: Path, target: str = "/etc/hosts") -> None:
    """Bind ``source`` (a host file) read-only over ``target`` inside the running container ``pid``.

    A thread of ours does it, and dies with what it entered (no fork): it stops sharing its root and
    cwd with the process (``unshare(CLONE_FS)``, which setns into a mount namespace requires), joins the
    container's mount namespace and attaches there a copy of ``source``'s mount taken at home
    (``open_tree``: a path of the host means nothing inside).
    """
    from pish_core import native

    tree = native.open_tree(str(source), native.OPEN_TREE_CLONE | native.OPEN_TREE_CLOEXEC)
    failed: list[BaseException] = []

    def inside() -> None:
        try:
            mnt = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            try:
                native.unshare(CLONE_FS)
                native.setns(mnt, native.CLONE_NEWNS)
            finally:
                os.close(mnt)
            native.move_mount(tree, target)
            native.mount(None, target, None, native.MS_REMOUNT | native.MS_BIND | native.MS_RDONLY
                         | native.MS_NOSUID | native.MS_NODEV | native.MS_NOEXEC)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failed.append(exc)

    try:
        thread = threading.Thread(target=inside, name=f"pish-mount-{pid}")
        thread.start()
        thread.join()
    finally:
        os.close(tree)
    if failed:
        raise failed[0]
