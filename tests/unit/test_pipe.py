"""Decoding a pipe as it arrives (``hark stream -``) gives the samples reading the whole file gives."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark.client import read_clip
from hark.client.pipe import decoded_chunks, raw_chunks
from hark.core.audio import AudioError


def speechlike(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


class Trickle(io.RawIOBase):
    """A pipe that hands over at most ``step`` bytes a read, as a live writer does."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self._step if size is None or size < 0 else min(size, self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


@pytest.mark.parametrize(
    ("fmt", "subtype", "channels", "rate"),
    [
        ("WAV", "PCM_16", 1, 16_000),
        ("WAV", "PCM_U8", 1, 8_000),
        ("WAV", "PCM_24", 2, 44_100),
        ("WAV", "PCM_32", 1, 48_000),
        ("WAV", "FLOAT", 2, 22_050),
        ("WAV", "DOUBLE", 1, 16_000),
        ("WAVEX", "PCM_16", 2, 16_000),
        ("FLAC", "PCM_16", 1, 32_000),
    ],
)
@pytest.mark.parametrize("step", [7, 4096])
def test_a_pipe_decodes_to_the_whole_file_s_samples(
    tmp_path: Path, fmt: str, subtype: str, channels: int, rate: int, step: int
) -> None:
    path = tmp_path / f"clip.{'flac' if fmt == 'FLAC' else 'wav'}"
    sf.write(path, np.stack([speechlike(1.3, rate)] * channels, axis=1), rate, format=fmt, subtype=subtype)
    whole = read_clip(path, 16_000)
    piped = np.concatenate(list(decoded_chunks(Trickle(path.read_bytes(), step), rate=16_000, chunk_ms=100)))  # type: ignore[arg-type]
    assert piped.shape == whole.shape
    assert np.max(np.abs(piped - whole)) < 1e-5


@pytest.mark.parametrize("length", [0, 0xFFFFFFFF, 0x7FFFF000])
def test_a_streaming_writer_s_unknown_length_reads_to_the_end(length: int) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, speechlike(0.5, 16_000), 16_000, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    data[40:44] = length.to_bytes(4, "little")  # the data chunk's size, as arecord or espeak-ng --stdout write it
    piped = np.concatenate(list(decoded_chunks(io.BytesIO(bytes(data)), rate=16_000, chunk_ms=100)))
    assert piped.size == 8_000


def test_text_is_not_audio() -> None:
    with pytest.raises(AudioError, match="--raw"):
        list(decoded_chunks(io.BytesIO(b"hello, this is not a sound file at all"), rate=16_000, chunk_ms=100))


def test_raw_chunks_are_whole_samples_of_chunk_ms() -> None:
    pcm = bytes(range(256)) * 25 + b"\x01"  # 6401 bytes: 3200 samples and a stray byte
    chunks = list(raw_chunks(io.BytesIO(pcm), encoding="s16le", rate=16_000, chunk_ms=100))
    assert [len(c) for c in chunks] == [3200, 3200]
    assert b"".join(chunks) == pcm[:6400]
    with pytest.raises(AudioError, match="s16le, f32le"):
        list(raw_chunks(io.BytesIO(pcm), encoding="u8", rate=16_000, chunk_ms=100))
