"""What a Hark call answers, as plain typed values, and the one conversion from the wire to them.

The sync and async clients share these, so the same file gives equal results through either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from hark.v1 import hark_pb2


class HarkError(Exception):
    """A failed call, with the gRPC status code so callers can tell bad input from an absent server."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> HarkError:
        """Wrap an error raised by a call; every such error is also a ``grpc.Call`` with code and details."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = error.details() if callable(getattr(error, "details", None)) else None
        return cls(code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN, str(details or error))


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """The server accepted the stream: which model version answers it and what its scores mean."""

    model: str
    version: int
    labels: tuple[str, ...]
    window_s: float
    hop_s: float


@dataclass(frozen=True, slots=True)
class HopScores:
    """Smoothed class probabilities for one window (sent every hop when ``emit_scores`` is set)."""

    start_s: float
    end_s: float
    scores: dict[str, float]
    gated: bool


@dataclass(frozen=True, slots=True)
class Detection:
    """A debounced event; ``time_s`` is the centre of the triggering window in the stream's audio.

    ``kind`` is ``"onset"`` or, from a multi-label model, ``"offset"`` (``onset_s`` then says when it began)."""

    label: str
    score: float
    time_s: float
    kind: str = "onset"
    onset_s: float | None = None


StreamItem = StreamStarted | HopScores | Detection


@dataclass(frozen=True, slots=True)
class Classification:
    """One whole clip's answer: the best label, every class's probability, and the classes active in the clip
    (strongest first; several for a multi-label model)."""

    model: str
    version: int
    label: str
    score: float
    scores: dict[str, float]
    active: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    version: int
    sha256: str
    labels: tuple[str, ...]
    window_s: float
    hop_s: float
    sample_rate_hz: int
    test_accuracy: float
    created_at: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A served model; ``default_version`` is what an unpinned request gets."""

    name: str
    default_version: int
    versions: tuple[ModelVersionInfo, ...]


class StreamDecoder:
    """Turns one stream's responses into :data:`StreamItem` values; remembers the labels of ``started``."""

    def __init__(self) -> None:
        self.labels: tuple[str, ...] = ()

    def item(self, response: hark_pb2.StreamResponse) -> StreamItem | None:
        """The response as a typed item; None for a response kind this client does not know."""
        kind = response.WhichOneof("response")
        if kind == "started":
            s = response.started
            self.labels = tuple(s.labels)
            return StreamStarted(s.model, s.version, self.labels, s.window_s, s.hop_s)
        if kind == "scores":
            w = response.scores
            return HopScores(w.start_s, w.end_s, _label_scores(self.labels, w.scores), w.gated)
        if kind == "event":
            e = response.event
            if e.kind == hark_pb2.Event.OFFSET:
                return Detection(e.label, float(e.score), e.time_s, "offset", e.onset_s)
            return Detection(e.label, float(e.score), e.time_s)
        return None


def classification(response: hark_pb2.ClassifyResponse) -> Classification:
    return Classification(
        model=response.model,
        version=response.version,
        label=response.label,
        score=float(response.score),
        scores={s.label: float(s.score) for s in response.scores},
        active={s.label: float(s.score) for s in response.active},
    )


def model_info(m: hark_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=m.name,
        default_version=m.default_version,
        versions=tuple(
            ModelVersionInfo(
                version=v.version,
                sha256=v.sha256,
                labels=tuple(v.labels),
                window_s=v.window_s,
                hop_s=v.hop_s,
                sample_rate_hz=v.sample_rate_hz,
                test_accuracy=v.test_accuracy,
                created_at=v.created_at,
            )
            for v in m.versions
        ),
    )


def _label_scores(labels: tuple[str, ...], scores: Iterable[float]) -> dict[str, float]:
    values = [float(s) for s in scores]
    if len(values) != len(labels):  # a server that skipped StreamStarted; keep the numbers anyway
        return {str(i): v for i, v in enumerate(values)}
    return dict(zip(labels, values, strict=True))
