"""The request side of the protocol, shared by both clients: what a Classify call and a stream send."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from hark.client.audio import AudioChunk
from hark.core.audio import BYTES_PER_SAMPLE, PCM_F32LE, PCM_S16LE, AudioError, check_sample_rate, encode_pcm
from hark.v1 import hark_pb2

# Room for a ClassifyRequest's fields other than the PCM itself.
_REQUEST_OVERHEAD_BYTES: Final = 1024
_ENCODINGS: Final = {PCM_S16LE: hark_pb2.PCM_S16LE, PCM_F32LE: hark_pb2.PCM_F32LE}


def encoding_enum(name: str) -> hark_pb2.AudioEncoding:
    try:
        return _ENCODINGS[name]
    except KeyError:
        raise AudioError(f"unsupported encoding {name!r}; use one of {sorted(_ENCODINGS)}") from None


def classify_request(
    pcm: bytes, *, sample_rate: int, model: str, version: int, encoding: str, max_message_bytes: int
) -> hark_pb2.ClassifyRequest:
    """One clip's request; :class:`AudioError` before sending a clip that cannot fit in one message."""
    if len(pcm) + _REQUEST_OVERHEAD_BYTES > max_message_bytes:
        seconds = len(pcm) / BYTES_PER_SAMPLE[encoding] / sample_rate
        limit_s = (max_message_bytes - _REQUEST_OVERHEAD_BYTES) / BYTES_PER_SAMPLE[encoding] / sample_rate
        raise AudioError(
            f"{seconds:.1f} s of audio is too long for one Classify call "
            f"(at most {limit_s:.0f} s at {sample_rate} Hz); stream it instead"
        )
    return hark_pb2.ClassifyRequest(
        model=model, version=version, sample_rate_hz=sample_rate, encoding=encoding_enum(encoding), pcm=pcm
    )


def config_request(
    *,
    sample_rate: int,
    model: str,
    version: int,
    encoding: str,
    emit_scores: bool,
    class_thresholds: Mapping[str, float] | None = None,
    sensitivity: float = 0.0,
    allowed_classes: Sequence[str] = (),
    fast: bool = False,
) -> hark_pb2.StreamRequest:
    """A stream's first message; ``class_thresholds``, ``sensitivity`` and ``allowed_classes`` are its
    detection settings (``StreamConfig`` fields 7-9); ``fast`` declares a file sent as fast as possible."""
    check_sample_rate(sample_rate)
    config = hark_pb2.StreamConfig(
        model=model,
        version=version,
        sample_rate_hz=sample_rate,
        encoding=encoding_enum(encoding),
        emit_scores=emit_scores,
        class_thresholds=dict(class_thresholds or {}),
        sensitivity=sensitivity,
        allowed_classes=list(allowed_classes),
        fast=fast,
    )
    return hark_pb2.StreamRequest(config=config)


def audio_request(pcm: bytes) -> hark_pb2.StreamRequest:
    return hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=pcm))


def chunk_pcm(chunk: AudioChunk, encoding: str) -> bytes:
    """A chunk as PCM bytes: bytes pass as they are (already in ``encoding``), float samples are encoded."""
    return chunk if isinstance(chunk, bytes) else encode_pcm(chunk, encoding)
