"""What the server process needs from the operating system: file descriptors, and its own resources.

Hostile clients: under the common soft limit of 1,024 descriptors, 1,100 idle connections locked gRPC out
entirely (reloads failed with ``EMFILE``). At start the soft ``RLIMIT_NOFILE`` is raised to the hard
limit, and the number of client connections is capped below it with :data:`FD_HEADROOM` to spare for the
model store, the logs, the metrics port and onnxruntime.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Final

FD_HEADROOM: Final = 128


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (as far as the kernel allows); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a hard limit above the kernel's nr_open: keep what we have
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def connection_limit(wanted: int, fd_limit: int) -> int:
    """``wanted`` connections, or fewer when the descriptor limit leaves less after the headroom."""
    return max(1, min(wanted, fd_limit - FD_HEADROOM))


def rss_bytes() -> int:
    """This process's resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds() -> int:
    """Descriptors this process holds (0 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
