"""Facts about host processes: identity read from /proc that survives pid reuse, namespace members, exit statuses."""
from __future__ import annotations

import os


def exit_status(raw: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + N when killed by signal N."""
    if os.WIFSIGNALED(raw):
        return 128 + os.WTERMSIG(raw)
    return os.WEXITSTATUS(raw)


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the pid, it names one process for
    good, so a recorded pid that was reused by another process is never signalled."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def is_same(pid: int | None, start: str | None) -> bool:
    return pid is not None and start is not None and start_time(pid) == start


def pids_in_pidns_of(pid: int) -> list[int]:
    """Host pids of every process in the PID namespace of ``pid`` (the container's processes)."""
    try:
        target = os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == target:
                    out.append(int(entry))
            except OSError:
                continue
    return sorted(out)
