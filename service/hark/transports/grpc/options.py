"""The gRPC server's channel arguments, each set on purpose: what a client can make the server hold.

gRPC's defaults suit trusted peers: a 4 MiB window per call that BDP probing grows further, no limit on
concurrent calls per connection or on connections, no time limit on a call that never sends its message.
A hostile client used them to make the server buffer gigabytes before any handler (authentication
included) ran. Here every such bound follows from :class:`~hark.config.Settings`:

* ``grpc.max_concurrent_streams``: calls per connection (HTTP/2 ``MAX_CONCURRENT_STREAMS``).
* ``grpc.http2.lookahead_bytes`` with BDP probing off: each call's flow-control window, so a call that no
  handler has read yet holds at most this many bytes.
* ``grpc.max_receive_message_length``: the largest message any method needs: a stream chunk
  (``max_chunk_bytes``) or a ``Classify`` clip (:func:`max_clip_bytes`).
* ``grpc.max_allowed_incoming_connections``: connections, so file descriptors stay for the model store.
* ``grpc.server_max_unrequested_time_in_server``: a call no handler picks up is dropped after this long.
* ``grpc.server_handshake_timeout_ms``: a connection that never speaks is closed after ``request_timeout_s``.
* ``grpc.max_metadata_size``: headers, including an over-long model name or token.
* Keepalive enforcement (``max_ping_strikes``): a client pinging without data gets GOAWAY.
* ``grpc.max_connection_age_ms``: every connection gets GOAWAY after ``max_connection_age_s`` (its
  running calls then have ``max_stream_s`` to finish, ``grpc.max_connection_age_grace_ms``). gRPC core
  (1.85) sends no GOAWAY for an HTTP/2 rapid-reset flood as such: its mitigations (``ping_on_rst_stream_percent``,
  ``max_requests_per_read``, tarpitting, ``max_concurrent_streams_overload_protection``, all at their
  defaults here) slow a flood down; the connection age is what ends it.
"""

from __future__ import annotations

import math
from typing import Any

from hark.config import Settings
from hark.core.audio import SUPPORTED_SAMPLE_RATES

# Bytes per sample of the widest encoding (PCM_F32LE).
_WIDEST_SAMPLE = 4
# Room for the protobuf fields around the audio (model name, rate, encoding).
_ENVELOPE = 1024
METADATA_BYTES = 16 * 1024


def max_clip_bytes(settings: Settings) -> int:
    """The largest ``Classify`` message: ``max_stream_s`` of float32 audio at the highest supported rate,
    and never more than ``max_message_bytes``."""
    longest = math.ceil(settings.max_stream_s * max(SUPPORTED_SAMPLE_RATES) * _WIDEST_SAMPLE) + _ENVELOPE
    return min(settings.max_message_bytes, longest)


def max_receive_bytes(settings: Settings) -> int:
    """The largest message any method needs, a stream chunk or a clip, within ``max_message_bytes``."""
    return min(settings.max_message_bytes, max(settings.max_chunk_bytes + _ENVELOPE, max_clip_bytes(settings)))


def _millis(seconds: float) -> int:
    """Seconds as a channel argument's milliseconds (a C int: at most 2**31 - 1, about 24 days)."""
    return min(2**31 - 1, max(1, round(seconds * 1000)))


def server_options(
    settings: Settings, max_connections: int | None = None, *, reuse_port: bool = False
) -> list[tuple[str, Any]]:
    """Channel arguments for ``grpc.aio.server``; ``max_connections`` overrides the setting (the process
    may have fewer descriptors than it asks for); ``reuse_port`` is for the workers of ``--workers N``."""
    return [
        ("grpc.max_receive_message_length", max_receive_bytes(settings)),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.http2.lookahead_bytes", settings.stream_window_bytes),
        ("grpc.http2.bdp_probe", 0),  # BDP probing would grow each window past lookahead_bytes
        ("grpc.max_allowed_incoming_connections", max_connections or settings.max_connections),
        ("grpc.server_max_unrequested_time_in_server", max(1, math.ceil(settings.request_timeout_s))),
        # A connection that has not finished its HTTP/2 (or TLS) handshake by then is closed: idle sockets
        # cannot hold the connection slots.
        ("grpc.server_handshake_timeout_ms", round(settings.request_timeout_s * 1000)),
        ("grpc.max_metadata_size", METADATA_BYTES),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_connection_age_ms", _millis(settings.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", _millis(settings.max_stream_s)),
        # Workers share one port; a server on its own must fail on a taken port, not share it.
        ("grpc.so_reuseport", int(reuse_port)),
    ]
