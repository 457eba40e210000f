"""A small synchronous client for the Hark gRPC API, used by ``hark`` and importable by applications.

It hides the protocol's mechanics: the config-first request order of a stream, real-time pacing by
wall clock, half-closing after the last chunk while still reading the server's final events, and
turning ``grpc.RpcError`` into :class:`HarkError` with the status code a caller can branch on.

Example::

    from hark.client import HarkClient, read_clip

    with HarkClient("127.0.0.1:50051") as client:
        samples = read_clip("yes.wav")                     # mono float32 at 16 kHz
        print(client.classify(samples).label)
        for item in client.stream(samples, realtime=False):
            print(item)
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import grpc
import numpy as np
import numpy.typing as npt
import soundfile as sf

from hark.core.audio import (
    BYTES_PER_SAMPLE,
    PCM_F32LE,
    PCM_S16LE,
    AudioError,
    check_sample_rate,
    encode_pcm,
    read_audio,
)
from hark.security import bearer_metadata, channel_credentials
from hark.v1 import hark_pb2, hark_pb2_grpc

DEFAULT_SERVER: Final = "127.0.0.1:50051"
DEFAULT_SAMPLE_RATE: Final = 16_000
DEFAULT_CHUNK_MS: Final = 100
# The server's default limit (Settings.max_message_bytes); a larger client limit would only move the error.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
# Room for a ClassifyRequest's fields other than the PCM itself.
_REQUEST_OVERHEAD_BYTES: Final = 1024

_ENCODINGS: Final = {PCM_S16LE: hark_pb2.PCM_S16LE, PCM_F32LE: hark_pb2.PCM_F32LE}

FloatArray = npt.NDArray[np.float32]
AudioChunk = FloatArray | bytes


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


# ----------------------------------------------------------------------------------------------- results


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


# ------------------------------------------------------------------------------------------------- audio

# libsndfile logs "data : <declared> (should be <actual>)" when a WAV's data chunk is cut short.
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Writers that stream to a pipe cannot know the length and put 0 or a huge placeholder in the header.
_PLACEHOLDER_LENGTH = 0x7FFF0000


def read_clip(path: Path | str, sample_rate: int = DEFAULT_SAMPLE_RATE) -> FloatArray:
    """Read any WAV/FLAC as mono float32 at ``sample_rate``, refusing WAVs that were cut short.

    libsndfile quietly returns the part of a truncated WAV that is there; a client classifying a
    half-written recording should hear about it rather than get a confident answer for half a word.
    """
    check_sample_rate(sample_rate)
    if Path(path).is_dir():
        raise AudioError(f"{path} is a directory, not an audio file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        if not Path(path).exists():
            raise AudioError(f"{path}: no such file") from e
        raise AudioError(f"cannot read {path} as audio: {e}") from e
    if info.format in ("WAV", "WAVEX", "RF64") and (m := _SHORT_DATA.search(info.extra_info)):
        declared, actual = int(m.group(1)), int(m.group(2))
        if actual < declared < _PLACEHOLDER_LENGTH:
            raise AudioError(f"{path} is truncated: its header declares {declared} bytes of audio, it holds {actual}")
    return read_audio(path, sample_rate)


def split_chunks(samples: FloatArray, sample_rate: int, chunk_ms: float) -> Iterator[FloatArray]:
    """Cut a clip into ``chunk_ms`` pieces (the last may be shorter), as a microphone would deliver it."""
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
    step = max(1, round(sample_rate * chunk_ms / 1000))
    for start in range(0, len(samples), step):
        yield samples[start : start + step]


class Pacer:
    """Releases chunks at the pace of their audio: chunk k goes out at t0 + (audio sent before it).

    Deadlines come from the start time, not from the previous send, so time spent serialising or
    in a slow scheduler does not accumulate into drift over a long stream.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] = time.sleep,
    ) -> None:
        self._clock = clock
        self._wait = wait
        self._t0: float | None = None
        self._sent_s = 0.0

    def wait_turn(self) -> None:
        """Block until the next chunk is due (the first is due at once)."""
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        delay = self._t0 + self._sent_s - now
        if delay > 0:
            self._wait(delay)

    def sent(self, duration_s: float) -> None:
        self._sent_s += duration_s


# ------------------------------------------------------------------------------------------------ client


class HarkClient:
    """A connection to one Hark server. Thread-safe; close it (or use ``with``) to free the channel."""

    def __init__(
        self,
        target: str = DEFAULT_SERVER,
        *,
        timeout: float | None = 30.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        channel: grpc.Channel | None = None,
        tls_ca: Path | str | None = None,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        token: str | None = None,
    ) -> None:
        """``timeout`` is the deadline of each unary call in seconds; streams have none (they last as
        long as their audio). Pass ``channel`` to use one you built (interceptors, other credentials).

        Any of ``tls_ca`` (the CA to trust), ``tls_cert``/``tls_key`` (a client certificate, for mutual
        TLS) makes the connection TLS; ``token`` is sent as ``authorization: Bearer <token>`` on every call.
        A bad file raises :class:`~hark.security.SecurityError`.
        """
        self.target = target
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._metadata = bearer_metadata(token)
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if channel is None and (tls_ca or tls_cert or tls_key):
            channel = grpc.secure_channel(target, channel_credentials(tls_ca, tls_cert, tls_key), options=options)
        self._channel = channel or grpc.insecure_channel(target, options=options)
        self._stub = hark_pb2_grpc.ClassifierStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> HarkClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- unary calls

    def classify(
        self,
        samples: FloatArray,
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        model: str = "",
        version: int = 0,
        encoding: str = PCM_S16LE,
    ) -> Classification:
        """Classify a whole clip of mono float samples in one call.

        Raises :class:`AudioError` before sending a clip that cannot fit in one message (stream it
        instead) and :class:`HarkError` when the server refuses the call.
        """
        pcm = encode_pcm(samples, encoding)
        if len(pcm) + _REQUEST_OVERHEAD_BYTES > self.max_message_bytes:
            limit_s = (self.max_message_bytes - _REQUEST_OVERHEAD_BYTES) / BYTES_PER_SAMPLE[encoding] / sample_rate
            raise AudioError(
                f"{len(samples) / sample_rate:.1f} s of audio is too long for one Classify call "
                f"(at most {limit_s:.0f} s at {sample_rate} Hz); stream it instead"
            )
        request = hark_pb2.ClassifyRequest(
            model=model, version=version, sample_rate_hz=sample_rate, encoding=_encoding(encoding), pcm=pcm
        )
        response = self._unary(self._stub.Classify, request)
        return Classification(
            model=response.model,
            version=response.version,
            label=response.label,
            score=float(response.score),
            scores={s.label: float(s.score) for s in response.scores},
            active={s.label: float(s.score) for s in response.active},
        )

    def list_models(self) -> list[ModelInfo]:
        """The models and versions the server can serve now."""
        response = self._unary(self._stub.ListModels, hark_pb2.ListModelsRequest())
        return [_model_info(m) for m in response.models]

    def get_model(self, name: str) -> ModelInfo:
        """One model's versions; ``HarkError`` with NOT_FOUND when the server has no such model."""
        return _model_info(self._unary(self._stub.GetModel, hark_pb2.GetModelRequest(name=name)))

    def health(self, service: str = "") -> str:
        """The ``grpc.health.v1`` status name of ``service`` ("" = the whole server), e.g. ``SERVING``.

        An unknown service is reported as ``SERVICE_UNKNOWN``, not raised; an unreachable server raises.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service))
        except HarkError as e:
            if e.code is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # -- streaming

    def stream(
        self,
        audio: FloatArray | Iterable[AudioChunk],
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        model: str = "",
        version: int = 0,
        encoding: str = PCM_S16LE,
        chunk_ms: float = DEFAULT_CHUNK_MS,
        realtime: bool = True,
        emit_scores: bool = False,
        timeout: float | None = None,
        class_thresholds: Mapping[str, float] | None = None,
        sensitivity: float = 0.0,
        allowed_classes: Sequence[str] = (),
    ) -> Generator[StreamItem, None, None]:
        """Stream audio and yield what the server answers: one :class:`StreamStarted`, then
        :class:`HopScores` (with ``emit_scores``) and :class:`Detection` events as they come.

        ``audio`` is a whole clip (a float array, cut into ``chunk_ms`` chunks) or any iterable of
        chunks (float arrays or PCM bytes in ``encoding``), e.g. a microphone. With ``realtime`` the
        chunks are sent no faster than their audio lasts. After the last chunk the client half-closes
        and keeps yielding until the server ends the call, so the final events are not lost. Closing the
        iterator early (``break``, Ctrl-C) cancels the call.

        ``class_thresholds``, ``sensitivity`` and ``allowed_classes`` change detection for this stream (see
        ``StreamConfig`` in the proto).
        """
        check_sample_rate(sample_rate)
        config = hark_pb2.StreamConfig(
            model=model,
            version=version,
            sample_rate_hz=sample_rate,
            encoding=_encoding(encoding),
            emit_scores=emit_scores,
            class_thresholds=dict(class_thresholds or {}),
            sensitivity=sensitivity,
            allowed_classes=list(allowed_classes),
        )
        chunks: Iterable[AudioChunk] = (
            split_chunks(audio, sample_rate, chunk_ms) if isinstance(audio, np.ndarray) else audio
        )
        stop = threading.Event()
        pacer = Pacer(wait=stop.wait) if realtime else None
        requests = _stream_requests(config, chunks, encoding, sample_rate, pacer, stop)
        call = self._stub.StreamClassify(requests, timeout=timeout, metadata=self._metadata)
        labels: tuple[str, ...] = ()
        try:
            for response in call:
                kind = response.WhichOneof("response")
                if kind == "started":
                    s = response.started
                    labels = tuple(s.labels)
                    yield StreamStarted(s.model, s.version, labels, s.window_s, s.hop_s)
                elif kind == "scores":
                    w = response.scores
                    yield HopScores(w.start_s, w.end_s, _label_scores(labels, w.scores), w.gated)
                elif kind == "event":
                    e = response.event
                    if e.kind == hark_pb2.Event.OFFSET:
                        yield Detection(e.label, float(e.score), e.time_s, "offset", e.onset_s)
                    else:
                        yield Detection(e.label, float(e.score), e.time_s)
        except grpc.RpcError as e:
            raise HarkError.from_rpc_error(e) from None
        finally:
            stop.set()  # wakes a request thread that is waiting for its next chunk's turn
            call.cancel()  # a no-op when the server already ended the call

    # -- internals

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise HarkError.from_rpc_error(e) from None


def _encoding(name: str) -> hark_pb2.AudioEncoding:
    try:
        return _ENCODINGS[name]
    except KeyError:
        raise AudioError(f"unsupported encoding {name!r}; use one of {sorted(_ENCODINGS)}") from None


def _stream_requests(
    config: hark_pb2.StreamConfig,
    chunks: Iterable[AudioChunk],
    encoding: str,
    sample_rate: int,
    pacer: Pacer | None,
    stop: threading.Event,
) -> Iterator[hark_pb2.StreamRequest]:
    """The request side of a stream, consumed by gRPC on its own thread; ends (half-closes) after the last chunk."""
    yield hark_pb2.StreamRequest(config=config)
    bytes_per_second = BYTES_PER_SAMPLE[encoding] * sample_rate
    for chunk in chunks:
        if stop.is_set():
            return
        pcm = chunk if isinstance(chunk, bytes) else encode_pcm(chunk, encoding)
        if pacer is not None:
            pacer.wait_turn()
            if stop.is_set():
                return
        yield hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=pcm))
        if pacer is not None:
            pacer.sent(len(pcm) / bytes_per_second)


def _label_scores(labels: tuple[str, ...], scores: Iterable[float]) -> dict[str, float]:
    values = [float(s) for s in scores]
    if len(values) != len(labels):  # a server that skipped StreamStarted; keep the numbers anyway
        return {str(i): v for i, v in enumerate(values)}
    return dict(zip(labels, values, strict=True))


def _model_info(m: hark_pb2.ModelInfo) -> ModelInfo:
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
