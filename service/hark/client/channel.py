"""How a client reaches a server: channel options, TLS, the bearer token, and the retry policy.

Retries are gRPC's own (the service config's ``retryPolicy``), not a loop of ours: gRPC then honours the
server's ``grpc-retry-pushback-ms`` (sent with ``RESOURCE_EXHAUSTED`` at the stream limit), retries a
stream only before the server has answered it (the audio sent so far is replayed from gRPC's buffer), and
never retries a call whose deadline has passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from hark.security import bearer_metadata, channel_credentials
from hark.v1 import hark_pb2

DEFAULT_SERVER: Final = "127.0.0.1:50051"
# The server's default limit (Settings.max_message_bytes); a larger client limit would only move the error.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
# gRPC caps attempts at 5; with backoff 0.2, 0.4, 0.8, 1.6 s (or the server's pushback, 1 s at the stream
# limit) a refused call is tried for a few seconds before its error reaches the caller.
DEFAULT_MAX_ATTEMPTS: Final = 5
RETRYABLE_CODES: Final = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
# Audio a stream may send before its first answer and still be replayed on a retry (gRPC's default is 256 KiB).
RETRY_BUFFER_BYTES: Final = 1024 * 1024

SERVICE_NAME: Final = hark_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name


def service_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> dict[str, Any]:
    """The gRPC service config: a retry policy on every ``hark.v1.Classifier`` method (none when 1 attempt)."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if max_attempts == 1:
        return {}
    policy = {
        "maxAttempts": min(max_attempts, 5),
        "initialBackoff": "0.2s",
        "maxBackoff": "5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": list(RETRYABLE_CODES),
    }
    return {"methodConfig": [{"name": [{"service": SERVICE_NAME}], "retryPolicy": policy}]}


@dataclass(frozen=True)
class ChannelSpec:
    """Everything needed to open a channel (sync or async) to one server, checked when built."""

    target: str
    options: tuple[tuple[str, Any], ...]
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def build(
        cls,
        target: str,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        tls_ca: Path | str | None = None,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        token: str | None = None,
    ) -> ChannelSpec:
        """Any of ``tls_ca`` (the CA to trust), ``tls_cert``/``tls_key`` (a client certificate, for mutual
        TLS) makes the channel TLS; ``token`` goes as ``authorization: Bearer <token>`` on every call.
        A bad file or token raises :class:`~hark.security.SecurityError`."""
        config = service_config(max_attempts)
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1 if config else 0),
            ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
            # Ours, not one a DNS TXT record could swap in.
            ("grpc.service_config_disable_resolution", 1),
        ]
        if config:
            options.append(("grpc.service_config", json.dumps(config)))
        credentials = channel_credentials(tls_ca, tls_cert, tls_key) if (tls_ca or tls_cert or tls_key) else None
        return cls(target, tuple(options), credentials, bearer_metadata(token))

    def sync_channel(self) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(self.target, self.credentials, options=self.options)
        return grpc.insecure_channel(self.target, options=self.options)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.credentials is not None:
            return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)
        return grpc.aio.insecure_channel(self.target, options=self.options)
