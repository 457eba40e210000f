"""What a request can do wrong, in words every transport understands.

The serving core raises these (and the core's own :class:`~hark.core.audio.AudioError`,
:class:`~hark.core.model_store.InvalidModelName`, ...); :func:`refusal_of` turns any of them into one
:class:`Refusal` whose ``code`` is a gRPC status name. gRPC uses it as is, the WebSocket and REST
transports map it to their own codes (:data:`HTTP_STATUS`), so a refusal reads the same on every wire.
"""

from __future__ import annotations

from typing import Final

from hark.core.audio import AudioError
from hark.core.model_store import InvalidModelName, ModelNotFound
from hark.core.text import clip
from hark.serving.batcher import InferenceError
from hark.serving.session import StreamTooLong

# Sent with RESOURCE_EXHAUSTED at the stream limit: a client with a retry policy waits this long.
RETRY_PUSHBACK_MS: Final = 1000

# The status names a refusal may carry, with the HTTP status the REST and WebSocket transports use.
HTTP_STATUS: Final[dict[str, int]] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "DEADLINE_EXCEEDED": 408,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
}


class Refusal(Exception):
    """A request refused, with a status name (a key of :data:`HTTP_STATUS`) and a message a person can act on.

    ``retry_after_ms`` is set when waiting helps (the stream limit): gRPC sends it as
    ``grpc-retry-pushback-ms``, HTTP as ``Retry-After``.
    """

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown status name {code!r}")
        message = clip(message)  # the last guard: no client string can make a status (or log line) large
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


def refusal_of(error: Exception) -> Refusal:
    """The one mapping from what the core raises to a :class:`Refusal`; anything unknown is INTERNAL."""
    if isinstance(error, Refusal):
        return error
    if isinstance(error, (AudioError, InvalidModelName)):
        return Refusal("INVALID_ARGUMENT", str(error))
    if isinstance(error, ModelNotFound):
        return Refusal("NOT_FOUND", str(error))
    if isinstance(error, StreamTooLong):
        return Refusal("RESOURCE_EXHAUSTED", str(error))
    if isinstance(error, InferenceError):
        return Refusal("INTERNAL", str(error))
    return Refusal("INTERNAL", f"internal error: {type(error).__name__}")


# Every exception :func:`refusal_of` maps on purpose; anything else is a bug.
REFUSALS: Final = (Refusal, AudioError, InvalidModelName, ModelNotFound, StreamTooLong, InferenceError)
