"""Audio from a pipe, decoded as it arrives: ``arecord … | hark stream -`` must not wait for the end.

Three readers, each an iterator of mono float32 chunks at the rate asked for:

* :func:`raw_chunks`: headerless PCM (``--raw``): the caller says the rate and encoding.
* WAV (``RIFF``/``RF64``): parsed here, a few lines, so that nothing waits for the pipe's end. Writers
  that stream to a pipe (``arecord``, ``sox``, ``ffmpeg``) put 0 or a placeholder in the header's length,
  which is read as "until the pipe ends".
* anything else libsndfile knows (FLAC, Ogg, AIFF, ...): libsndfile over :class:`_PipeView`, a seekable
  view of the pipe that keeps the bytes read so far and reports an unknown length.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import BinaryIO, Final

import numpy as np
import soundfile as sf

from hark.client.audio import FloatArray
from hark.core.audio import AudioError, StreamResampler, check_sample_rate

RAW_ENCODINGS: Final = ("s16le", "f32le")
_UNKNOWN_LENGTHS: Final = (0, 0xFFFFFFFF)
_PLACEHOLDER_LENGTH: Final = 0x7FFF0000  # and above: a streaming writer's "I don't know yet"
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_REPORTED_LENGTH: Final = 1 << 40  # what _PipeView says the pipe's length is: libsndfile must not wait for it


def read_exactly(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at the end of the pipe."""
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def raw_chunks(stream: BinaryIO, *, encoding: str, rate: int, chunk_ms: int) -> Iterator[bytes]:
    """Headerless mono PCM in whole-sample chunks of ``chunk_ms``, passed on as they are (no decoding)."""
    if encoding not in RAW_ENCODINGS:
        raise AudioError(f"unsupported raw encoding {encoding!r}; use one of {', '.join(RAW_ENCODINGS)}")
    check_sample_rate(rate)
    width = 2 if encoding == "s16le" else 4
    size = max(1, rate * chunk_ms // 1000) * width
    while data := read_exactly(stream, size):
        whole = len(data) - len(data) % width
        if whole:
            yield data[:whole]
        if len(data) < size:
            return


def decoded_chunks(stream: BinaryIO, *, rate: int, chunk_ms: int) -> Iterator[FloatArray]:
    """A WAV or any libsndfile format from ``stream``, as mono float32 chunks at ``rate``, decoded as it comes."""
    check_sample_rate(rate)
    head = read_exactly(stream, 12)
    if len(head) < 12:
        raise AudioError("stdin holds no audio (fewer than 12 bytes)")
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        source = _wav_chunks(stream, chunk_ms)
    else:
        source = _libsndfile_chunks(_PipeView(stream, head), chunk_ms)
    input_rate = next(source)
    assert isinstance(input_rate, int)
    resampler = StreamResampler(input_rate, rate)
    for chunk in source:
        assert not isinstance(chunk, int)
        if (out := resampler.process(chunk)).size:
            yield out
    if (tail := resampler.process(np.zeros(0, np.float32), last=True)).size:
        yield tail


# ----------------------------------------------------------------------------------------------------- WAV


def _wav_chunks(stream: BinaryIO, chunk_ms: int) -> Iterator[int | FloatArray]:
    """The WAV's sample rate, then its audio as mono float32 chunks of ``chunk_ms``."""
    fmt: tuple[int, int, int, int] | None = None  # format tag, channels, rate, bits
    while True:
        header = read_exactly(stream, 8)
        if len(header) < 8:
            raise AudioError("the WAV on stdin ends before its data chunk")
        chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(read_exactly(stream, size + size % 2)[:size])
        elif chunk_id == b"data":
            break
        else:  # LIST, fact, ds64 (RF64's real sizes: the data then runs to the end, which is how we read it)
            read_exactly(stream, size + size % 2)
    if fmt is None:
        raise AudioError("the WAV on stdin has no fmt chunk before its data")
    tag, channels, rate, bits = fmt
    check_sample_rate_input(rate)
    frame_bytes = channels * bits // 8
    remaining = None if size in _UNKNOWN_LENGTHS or size >= _PLACEHOLDER_LENGTH else size
    yield rate
    step = max(1, rate * chunk_ms // 1000) * frame_bytes
    while remaining is None or remaining > 0:
        want = step if remaining is None else min(step, remaining)
        data = read_exactly(stream, want)
        whole = len(data) - len(data) % frame_bytes
        if whole:
            yield _decode_frames(data[:whole], tag, channels, bits)
        if remaining is not None:
            remaining -= len(data)
        if len(data) < want:
            return


def check_sample_rate_input(rate: int) -> None:
    if not 1_000 <= rate <= 384_000:
        raise AudioError(f"the WAV on stdin declares a sample rate of {rate} Hz")


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise AudioError("the WAV on stdin has a fmt chunk too short to read")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # the first two bytes of the sub-format GUID
    supported = (tag == _PCM and bits in (8, 16, 24, 32)) or (tag == _FLOAT and bits in (32, 64))
    if not supported or channels < 1:
        raise AudioError(
            f"the WAV on stdin is format {tag} with {bits}-bit samples; stream 8/16/24/32-bit integer or "
            "32/64-bit float PCM (or convert it: sox in.wav -b 16 -t wav -)"
        )
    return tag, channels, rate, bits


def _decode_frames(data: bytes, tag: int, channels: int, bits: int) -> FloatArray:
    if tag == _FLOAT:
        x = np.frombuffer(data, dtype="<f4" if bits == 32 else "<f8").astype(np.float32)
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    elif bits == 8:
        x = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - np.float32(128)) / np.float32(128)
    elif bits == 24:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8).astype(np.float32) / np.float32(8_388_608)
    else:
        dtype, scale = ("<i2", 32_768) if bits == 16 else ("<i4", 2_147_483_648)
        x = np.frombuffer(data, dtype=dtype).astype(np.float32) / np.float32(scale)
    frames = x.reshape(-1, channels)
    mono = frames.mean(axis=1, dtype=np.float32) if channels > 1 else frames[:, 0]
    return np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32)


# ------------------------------------------------------------------------------------------ other formats


def _libsndfile_chunks(view: _PipeView, chunk_ms: int) -> Iterator[int | FloatArray]:
    try:
        audio = sf.SoundFile(view)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"cannot read stdin as audio: {e} (headerless PCM? add --raw)") from None
    with audio:
        yield audio.samplerate
        step = max(1, audio.samplerate * chunk_ms // 1000)
        while True:
            block = audio.read(step, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                return
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            yield np.ascontiguousarray(np.nan_to_num(mono), dtype=np.float32)


class _PipeView(io.RawIOBase):
    """A seekable view of a pipe for libsndfile: keeps what was read, claims a length it cannot know.

    libsndfile asks for the file's length before it decodes anything; the true answer would mean
    waiting for the end of a live pipe, so the view reports a huge length and the decoder stops at
    the pipe's real end. The bytes read stay in memory (compressed audio: about 1 MB a minute).
    """

    def __init__(self, stream: BinaryIO, head: bytes) -> None:
        super().__init__()
        self._stream = stream
        self._buffer = bytearray(head)
        self._pos = 0
        self._ended = False

    def _fill(self, upto: int) -> None:
        while len(self._buffer) < upto and not self._ended:
            data = self._stream.read(min(upto - len(self._buffer), 1 << 16))
            if not data:
                self._ended = True
            self._buffer += data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self._fill(self._pos + len(buffer))
        data = self._buffer[self._pos : self._pos + len(buffer)]
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _REPORTED_LENGTH
        out = bytearray(min(size, 1 << 20))
        n = self.readinto(memoryview(out))
        return bytes(out[:n])

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: _REPORTED_LENGTH}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos
