"""Live audio sources: a microphone through ``sounddevice`` (the ``mic`` extra), or a file played like one.

A source is anything with :meth:`AudioSource.chunks`: mono float32 chunks at ``sample_rate``, as they
are captured, until the source is closed. ``hark listen`` takes any source, so its tests drive it with
:class:`FileSource` (a file at real-time pace), and applications hand ``source.chunks()`` to a client::

    with HarkClient() as client, Microphone() as mic:
        for item in client.stream(mic.chunks(), sample_rate=mic.sample_rate, realtime=False):
            print(item)
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol

import numpy as np

from hark.client.audio import DEFAULT_SAMPLE_RATE, FloatArray, Pacer, read_clip, split_chunks
from hark.core.audio import StreamResampler

DEFAULT_CHUNK_MS: Final = 100
_MIC_EXTRA_HINT: Final = "install the microphone extra: pip install 'hark[mic]' (in a checkout: make dev)"
_PORTAUDIO_HINT: Final = (
    "the microphone needs the PortAudio library: apt-get install libportaudio2 (Debian/Ubuntu), "
    "brew install portaudio (macOS)"
)


class MicrophoneError(RuntimeError):
    """No way to capture audio here (no sounddevice, no PortAudio, no input device); the message says what to do."""


class AudioSource(Protocol):
    """A live source of mono float32 audio."""

    sample_rate: int
    name: str

    def chunks(self) -> Iterator[FloatArray]:
        """Chunks as they are captured; ends when the source is closed or runs out."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_sample_rate: float
    is_default: bool


def _sounddevice() -> Any:
    """The ``sounddevice`` module, or :class:`MicrophoneError` saying what is missing."""
    try:
        import sounddevice
    except ImportError:
        raise MicrophoneError(f"no microphone support: {_MIC_EXTRA_HINT}") from None
    except OSError:  # sounddevice raises OSError('PortAudio library not found') at import
        raise MicrophoneError(_PORTAUDIO_HINT) from None
    return sounddevice


def list_input_devices() -> list[InputDevice]:
    """The devices that can capture audio; :class:`MicrophoneError` when audio capture is unavailable."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        default_input = sd.default.device[0]
    except sd.PortAudioError as e:
        raise MicrophoneError(f"cannot list audio devices: {e}") from None
    return [
        InputDevice(
            index=int(d["index"]),
            name=str(d["name"]),
            channels=int(d["max_input_channels"]),
            default_sample_rate=float(d["default_samplerate"]),
            is_default=int(d["index"]) == default_input,
        )
        for d in devices
        if int(d["max_input_channels"]) > 0
    ]


class Microphone:
    """An input device (the default one unless ``device`` names or numbers another), captured as mono.

    Captures at ``sample_rate`` when the device can, else at the device's own rate, resampled here. The
    PortAudio callback only queues blocks; a consumer that falls behind loses the oldest audio (a live
    stream must stay live), and :attr:`dropped` counts the blocks lost.
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        chunk_ms: int = DEFAULT_CHUNK_MS,
        max_queued_s: float = 5.0,
    ) -> None:
        sd = _sounddevice()
        self.sample_rate = sample_rate
        self.dropped = 0
        try:
            info = sd.query_devices(device, kind="input")
        except (sd.PortAudioError, ValueError) as e:
            which = "no default input device" if device is None else f"no input device {device!r}"
            raise MicrophoneError(f"{which} ({e}); `hark listen --list-devices` shows the devices") from None
        self.name = str(info["name"])
        capture_rate = sample_rate
        try:
            sd.check_input_settings(device=device, samplerate=sample_rate, channels=1, dtype="float32")
        except (sd.PortAudioError, ValueError):
            capture_rate = int(info["default_samplerate"])
        self._resampler = StreamResampler(capture_rate, sample_rate)
        self._queue: queue.Queue[FloatArray | None] = queue.Queue(maxsize=max(1, round(max_queued_s * 1000 / chunk_ms)))
        self._closed = threading.Event()
        try:
            self._stream = sd.InputStream(
                device=device,
                samplerate=capture_rate,
                channels=1,
                dtype="float32",
                blocksize=max(1, capture_rate * chunk_ms // 1000),
                callback=self._on_block,
            )
            self._stream.start()
        except sd.PortAudioError as e:
            raise MicrophoneError(f"cannot open {self.name}: {e}") from None

    def _on_block(self, block: Any, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's callback thread: queue a copy, dropping the oldest block when the queue is full."""
        chunk = np.array(block[:, 0], dtype=np.float32)
        while True:
            try:
                self._queue.put_nowait(chunk)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def chunks(self) -> Iterator[FloatArray]:
        while not self._closed.is_set():
            try:
                block = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if block is None:
                return
            if (out := self._resampler.process(block)).size:
                yield out

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._stream.stop()
            self._stream.close()
        finally:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def __enter__(self) -> Microphone:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FileSource:
    """A file played as if it were a microphone: its chunks come at the pace of their audio.

    What ``hark listen --device file:PATH`` uses, and what the tests drive ``hark listen`` with.
    """

    def __init__(
        self, path: Path | str, *, sample_rate: int = DEFAULT_SAMPLE_RATE, chunk_ms: int = DEFAULT_CHUNK_MS
    ) -> None:
        self.sample_rate = sample_rate
        self.name = f"file {path}"
        self._samples = read_clip(path, sample_rate)
        self._chunk_ms = chunk_ms
        self._closed = threading.Event()

    def chunks(self) -> Iterator[FloatArray]:
        pacer = Pacer(wait=self._closed.wait)
        for chunk in split_chunks(self._samples, self.sample_rate, self._chunk_ms):
            # A microphone hands over a block once it has been captured, i.e. at the end of its audio.
            pacer.sent(len(chunk) / self.sample_rate)
            pacer.wait_turn()
            if self._closed.is_set():
                return
            yield chunk

    def close(self) -> None:
        self._closed.set()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_source(
    device: str | None, *, sample_rate: int = DEFAULT_SAMPLE_RATE, chunk_ms: int = DEFAULT_CHUNK_MS
) -> AudioSource:
    """The source ``hark listen --device`` names: ``file:PATH`` plays a file; a number is a device index;
    other text a device name (or part of it); None the default input device."""
    if device is not None and device.startswith("file:"):
        return FileSource(device.removeprefix("file:"), sample_rate=sample_rate, chunk_ms=chunk_ms)
    chosen: int | str | None = int(device) if device is not None and device.isdigit() else device
    return Microphone(chosen, sample_rate=sample_rate, chunk_ms=chunk_ms)
