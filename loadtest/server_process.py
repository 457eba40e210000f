"""What ``bench.py``, ``memory.py`` and ``soak.py`` share about a Hark server they start: its environment
and its resources as Linux reports them (``/proc``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hark_env(store: Path, **settings: object) -> dict[str, str]:
    """The environment for ``python -m hark.server``: this process's, less any ``HARK_`` setting, then
    the store, an ephemeral port, JSON logs, no metrics port and no reloading, then ``settings`` (as
    ``HARK_<NAME>``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARK_")}
    env.update(
        HARK_MODEL_STORE=str(store),
        HARK_PORT="0",
        HARK_METRICS_PORT="-1",
        HARK_LOG_FORMAT="json",
        HARK_RELOAD_INTERVAL_S="0",
        # This checkout's packages, whatever an editable install elsewhere points at.
        PYTHONPATH=os.pathsep.join(str(p) for p in (REPO / "service", REPO / "training", REPO)),
    )
    env.update({f"HARK_{k.upper()}": str(v) for k, v in settings.items()})
    return env


SERVER_ARGV = [sys.executable, "-m", "hark.server"]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
