"""Structured logs, configured once: JSON lines in production, key=value on a terminal.

Every stream binds ``stream_id``, ``model`` and ``version`` to its logger, so one stream's lines can be
picked out of many. Logs describe what happened, never the payload: no audio, no tokens.
"""

from __future__ import annotations

import logging as _stdlib_logging
import sys
from typing import Any, Literal

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_configured = False


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is *now*, so a swapped stream (pytest) is honoured.

    One ``write`` per line, newline included: the workers of ``--workers N`` share one stderr, and a line
    written in two pieces could interleave with another process's line."""

    def __init__(self, name: str = "hark") -> None:
        self.name = name

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _logger_factory(*args: Any) -> _StderrLogger:
    return _StderrLogger(str(args[0]) if args else "hark")


def _add_logger_name(logger: Any, method_name: str, event_dict: Any) -> Any:
    event_dict.setdefault("logger", getattr(logger, "name", "hark"))
    return event_dict


def configure_logging(
    log_format: Literal["auto", "json", "console"] = "auto",
    level: Literal["debug", "info", "warning", "error"] = "info",
    *,
    force: bool = False,
) -> None:
    """Set structlog up for the process; later calls are no-ops unless ``force``.

    ``auto`` picks the console renderer when stderr is a terminal and JSON otherwise.
    """
    global _configured
    if _configured and not force:
        return
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=False,
    )
    # Libraries (grpc) log through the standard library: keep their warnings, in the same stream.
    _stdlib_logging.basicConfig(level=max(_LEVELS[level], 30), stream=sys.stderr, format="%(name)s: %(message)s")
    _configured = True


def get_logger(name: str = "hark", **bound: Any) -> Any:
    """A structlog logger with ``logger=name`` and ``bound`` on every line.

    Lazy: it takes the configuration in force when it is first used (or ``bind``-ed), so a module-level
    logger made at import time still follows :func:`configure_logging` called later.
    """
    return structlog.get_logger(name, **bound)
