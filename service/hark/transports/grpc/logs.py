"""What gRPC's own Python code logs about a client's call, kept to one short line.

Hostile clients: a header value that is not UTF-8 made grpcio log ``Invalid encoding on <the whole value>``
with a traceback, for every call and before authentication (32 KB a call). :func:`quiet_metadata_errors`
filters the ``grpc._cython.cygrpc`` logger: such a record becomes one line naming the value (quoted,
64 characters at most), without the traceback, at most 10 lines a second.
"""

from __future__ import annotations

import logging

from hark.core.text import quote
from hark.log_sampling import LogSampler

GRPC_LOGGER = "grpc._cython.cygrpc"
_INVALID_ENCODING = "Invalid encoding on"


class MetadataDecodeFilter(logging.Filter):
    """Rewrites grpcio's metadata decode failures to one short line, sampled."""

    def __init__(self) -> None:
        super().__init__()
        self.sampler = LogSampler(10)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_INVALID_ENCODING):
            return True
        if (skipped := self.sampler.allow()) is None:
            return False
        value = record.args[0] if isinstance(record.args, tuple) and record.args else b""
        record.msg = "metadata value is not UTF-8; the call goes on without it: %s (skipped %d)"
        record.args = (quote(value if isinstance(value, str | bytes) else repr(value)), skipped)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_metadata_errors() -> None:
    """Install :class:`MetadataDecodeFilter` on grpcio's logger, once per process."""
    logger = logging.getLogger(GRPC_LOGGER)
    if not any(isinstance(f, MetadataDecodeFilter) for f in logger.filters):
        logger.addFilter(MetadataDecodeFilter())
