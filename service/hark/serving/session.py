"""One stream's state, from PCM bytes to feature windows and from scores to events; no gRPC, no asyncio.

A :class:`StreamSession` is created per call and owns everything that call needs: the decoder
settings, a streaming resampler to the model's rate, the incremental log-Mel frontend, a ring of the
last ``window_frames`` frames, the postprocessor and the counters. It holds the :class:`LoadedModel` it
started with, so a stream keeps its version even when the store swaps in a newer one.

The servicer drives it: ``feed_pcm`` → windows → (batcher) → ``score`` → scores and events; at
half-close ``finish`` pads the tail so the last audio is scored too. Keeping the session synchronous and
pure makes it testable without a server and keeps the servicer thin.

Stream time is counted in samples at the model's rate after resampling. The streaming resampler is
latency-compensated (output sample ``k`` is input time ``k / rate_out``), so these times are the
client's own audio times whatever rate it sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from hark.config import Settings
from hark.core.audio import (
    BYTES_PER_SAMPLE,
    AudioError,
    StreamResampler,
    check_channels,
    check_sample_rate,
    decode_pcm,
    mix_down,
)
from hark.core.frontend import FrontendConfig, LogMel, StreamingLogMel
from hark.core.model_store import LoadedModel
from hark.core.postprocess import Detection, DetectionOverrides, PostprocessConfig, Postprocessor
from hark.core.ring_buffer import FrameRing

FloatArray = npt.NDArray[np.float32]

# Called as ``observe(stage, seconds)`` after each timed stage ("decode", "frontend", "postprocess");
# metrics.py can plug a histogram in here without the session knowing about Prometheus.
StageObserver = Callable[[str, float], None]
# Called as ``on_audio(samples, rate)`` with each chunk's decoded samples at the client's rate, for the
# input-level statistics of drift.py.
AudioObserver = Callable[[FloatArray, int], None]

# Level of the padding used to complete the last hop: about -80 dBFS of deterministic noise, which a
# model trained on real recordings sees as silence, where exact digital zeros may be out of distribution.
PAD_LEVEL = 1e-4
# Label whose one-hot distribution stands in for the model's output on a gated (too quiet) window.
SILENCE_LABEL = "_silence_"
# Without a silence class, a gated window's scores are the previous smoothed scores times this.
GATE_DECAY = 0.5


def _ignore(stage: str, seconds: float) -> None:
    return None


def _ignore_audio(samples: FloatArray, rate: int) -> None:
    return None


class StreamTooLong(Exception):
    """The stream has carried more audio than ``max_stream_s``: a limit, not bad audio."""


@dataclass(frozen=True)
class Window:
    """One model input and where it lies in the stream's audio."""

    index: int
    # (window_frames, n_mels), or for a streaming model the hop's (hop_frames, n_mels); owned: the ring may be
    # overwritten
    features: FloatArray
    start_s: float
    end_s: float
    gated: bool = False  # too quiet to be worth a model call (``gate_dbfs``)
    # A streaming model's hop before the first whole window: it only builds the model's state; ``features``
    # holds that hop's frames (zero-padded in front), and it is never scored.
    warmup: bool = False

    @property
    def centre_s(self) -> float:
        return (self.start_s + self.end_s) / 2


@dataclass(frozen=True)
class Scored:
    """A window after postprocessing: smoothed scores in label order, and any events it raised.

    ``probabilities`` is what postprocessing was given: the model's output, or the gate's stand-in."""

    window: Window
    scores: FloatArray
    events: list[Detection] = field(default_factory=list)
    probabilities: FloatArray | None = None
    # Events of the stream's end (offsets of classes still active), not of a new window: no scores to send.
    closing: bool = False


class StreamSession:
    """Everything one stream owns. Feed it audio in order; it tells you which windows are due.

    Raises :class:`AudioError` for audio that cannot be used (partial samples, non-finite floats,
    chunks over the size limit) and :class:`StreamTooLong` past ``max_stream_s``; either way the
    stream should end.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        sample_rate: int,
        encoding: str,
        settings: Settings,
        stream_id: str = "",
        emit_scores: bool = False,
        detection: DetectionOverrides | None = None,
        observe: StageObserver = _ignore,
        on_audio: AudioObserver = _ignore_audio,
        channels: int = 1,
    ) -> None:
        if encoding not in BYTES_PER_SAMPLE:
            raise AudioError(f"unsupported encoding {encoding!r}; use one of {sorted(BYTES_PER_SAMPLE)}")
        self.model = model
        self.stream_id = stream_id
        self.emit_scores = emit_scores
        self.sample_rate = check_sample_rate(sample_rate)
        self.encoding = encoding
        self.channels = check_channels(channels)  # interleaved input is mixed down to mono on decode
        self.max_chunk_bytes = settings.max_chunk_bytes
        self.max_stream_s = settings.max_stream_s
        self._observe = observe
        self._on_audio = on_audio
        m = model.manifest
        self.frontend_config = m.frontend
        self.model_rate = m.frontend.sample_rate
        self.window_frames = m.window_frames
        self.hop_frames = m.hop_frames
        self._resampler = StreamResampler(self.sample_rate, self.model_rate)
        self._frontend = StreamingLogMel(m.frontend)
        # A streaming model needs only each hop's new frames (its state holds the rest), and drift reads only
        # those: its ring holds one hop, where a windowed model's holds the window.
        self._feature_frames = m.hop_frames if m.model_kind == "streaming" else m.window_frames
        self._ring = FrameRing(self._feature_frames, m.frontend.n_mels)
        # Raises ValueError for detection overrides that do not fit the model (unknown class, bad range).
        self._post = Postprocessor(PostprocessConfig.from_settings(settings, m, detection))
        self._next_due = m.window_frames  # frame count at which the next window is complete
        # A streaming model sees every hop from the start, so its state holds the first window when it is due.
        self._streaming = m.model_kind == "streaming"
        if self._streaming:
            self._next_due -= m.hop_frames * ((m.window_frames - 1) // m.hop_frames)
        # Energy gating: each frame's total Mel power, kept beside the frame ring; a window whose loudest
        # frame is below the gate is not sent to the model.
        gate = settings.gate_dbfs
        self._gate_power = (
            None if gate is None or not np.isfinite(gate) else full_scale_power(m.frontend) * 10 ** (gate / 10)
        )
        self._powers = FrameRing(m.window_frames, 1) if self._gate_power is not None else None
        self._silence = np.zeros(len(m.labels), dtype=np.float32)
        if SILENCE_LABEL in m.labels:
            self._silence[m.labels.index(SILENCE_LABEL)] = 1.0
        self._last_scores: FloatArray | None = None
        self._last_window: Window | None = None
        self.gated = 0
        self._finished = False
        # Counters
        self.input_samples = 0  # at the client's rate
        self.model_samples = 0  # after resampling, fed to the frontend (padding included)
        self.chunks = 0
        self.windows = 0
        self.events = 0

    def observe_with(self, observe: StageObserver, on_audio: AudioObserver) -> None:
        """Hook in stage timings and decoded-audio statistics (the version's metric instruments)."""
        self._observe = observe
        self._on_audio = on_audio

    # Audio in ---------------------------------------------------------------------------------------

    @property
    def audio_s(self) -> float:
        """Seconds of client audio received so far."""
        return self.input_samples / self.sample_rate

    def decode(self, data: bytes) -> FloatArray:
        """Validate and decode one chunk of PCM bytes (at the client's rate)."""
        if len(data) > self.max_chunk_bytes:
            raise AudioError(
                f"audio chunk of {len(data)} bytes exceeds the limit of {self.max_chunk_bytes} bytes; "
                "send smaller chunks (100 ms of audio is typical)"
            )
        t0 = time.perf_counter()
        samples = mix_down(decode_pcm(data, self.encoding), self.channels)
        self._observe("decode", time.perf_counter() - t0)
        return samples

    def feed_pcm(self, data: bytes) -> list[Window]:
        """Decode one chunk and feed it; an empty chunk is allowed and changes nothing."""
        return self.feed(self.decode(data))

    def feed(self, samples: FloatArray) -> list[Window]:
        """Feed float samples at the client's rate; return the windows they complete, oldest first."""
        if self._finished:
            raise RuntimeError("session already finished")
        if samples.size == 0:
            return []
        if (self.input_samples + samples.size) / self.sample_rate > self.max_stream_s:
            raise StreamTooLong(
                f"stream exceeds the limit of {self.max_stream_s:g} s of audio; open a new stream to continue"
            )
        self.input_samples += samples.size
        self.chunks += 1
        self._on_audio(samples, self.sample_rate)
        return self._push(self._resampler.process(samples))

    def finish(self) -> list[Window]:
        """End of audio: flush the resampler and pad the tail with near-silence to complete the last hop.

        So the final audio is scored: if samples arrived after the end of the last window (or no window
        was complete yet), enough padding is added for exactly one more window. A stream with no audio
        yields nothing.
        """
        if self._finished:
            return []
        windows = self._push(self._resampler.process(np.zeros(0, dtype=np.float32), last=True))
        self._finished = True
        last_end = self.frontend_config.n_samples(self._next_due - self.hop_frames) if self.windows else 0
        if self.model_samples == 0 or self.model_samples <= last_end:
            return windows
        missing = self.frontend_config.n_samples(max(self._next_due, self.window_frames)) - self.model_samples
        if missing > 0:
            rng = np.random.default_rng(0)
            pad = (rng.standard_normal(missing) * PAD_LEVEL).astype(np.float32)
            windows += self._push(pad)
        return windows

    def _push(self, samples: FloatArray) -> list[Window]:
        if samples.size == 0:
            return []
        self.model_samples += samples.size
        t0 = time.perf_counter()
        frames = self._frontend.push(samples)
        powers = None
        if self._powers is not None and frames.shape[0]:
            powers = self._frontend.mel_power(frames).sum(axis=1, keepdims=True)
        windows: list[Window] = []
        # Split the new frames at each point where a window is due, so a large chunk yields every
        # window it completes, not only the last one the ring still holds.
        pos = 0
        while pos < frames.shape[0]:
            take = min(frames.shape[0] - pos, self._next_due - self._ring.total)
            self._ring.extend(frames[pos : pos + take])
            if self._powers is not None and powers is not None:
                self._powers.extend(powers[pos : pos + take])
            pos += take
            if self._ring.total == self._next_due:
                windows.append(self._window())
                self._next_due += self.hop_frames
        self._observe("frontend", time.perf_counter() - t0)
        return windows

    def _window(self) -> Window:
        c = self.frontend_config
        if self._ring.total < self.window_frames:
            return self._warmup_window()
        first = self._ring.total - self.window_frames
        start = first * c.hop_length
        end = start + c.n_samples(self.window_frames)
        gated = False
        if self._powers is not None and self._gate_power is not None:
            gated = bool(self._powers.latest(self.window_frames).max() < self._gate_power)
            self.gated += gated
        window = Window(
            index=self.windows,
            features=self._ring.latest(self._feature_frames).copy(),
            start_s=start / c.sample_rate,
            end_s=end / c.sample_rate,
            gated=gated,
        )
        self.windows += 1
        return window

    def _warmup_window(self) -> Window:
        frames = np.zeros((self.hop_frames, self.frontend_config.n_mels), dtype=np.float32)
        held = min(self.hop_frames, self._ring.count)
        frames[self.hop_frames - held :] = self._ring.latest(held)
        end = self._ring.total * self.frontend_config.hop_length / self.model_rate
        return Window(index=-1, features=frames, start_s=0.0, end_s=end, warmup=True)

    # Scores out -------------------------------------------------------------------------------------

    def score(self, window: Window, probabilities: FloatArray) -> Scored:
        """Postprocess one window's probabilities; windows must be scored in the order they came."""
        t0 = time.perf_counter()
        smoothed, events = self._post.update(probabilities, window.centre_s)
        self._last_scores = smoothed
        self._last_window = window
        self.events += len(events)
        self._observe("postprocess", time.perf_counter() - t0)
        return Scored(window=window, scores=smoothed, events=events, probabilities=probabilities)

    def close(self) -> Scored | None:
        """After :meth:`finish` and the scoring of its windows: the offsets of classes still active when the
        audio ended (multi-label models), timed at the end of the audio, as a closing :class:`Scored`."""
        if self._last_window is None or self._last_scores is None:
            return None
        events = self._post.close(self.model_samples / self.model_rate)
        if not events:
            return None
        self.events += len(events)
        return Scored(window=self._last_window, scores=self._last_scores, events=events, closing=True)

    def gated_probabilities(self) -> FloatArray:
        """What a gated window is scored as, in place of the model's output: a one-hot ``_silence_`` when
        the model has that class (smoothing then decays the scores toward it), else the previous smoothed
        scores times ``GATE_DECAY``. Call it in window order, just before :meth:`score`."""
        if self._silence.any():
            return self._silence
        if self._last_scores is None:
            return np.zeros_like(self._silence)
        decayed: FloatArray = (self._last_scores * GATE_DECAY).astype(np.float32)
        return decayed


@lru_cache(maxsize=16)
def full_scale_power(config: FrontendConfig) -> float:
    """The mean total Mel power of a frame of white noise at 0 dBFS RMS: the reference of ``gate_dbfs``, so
    a frame's level is ``10 log10(power / full_scale_power)`` dB, close to its RMS level for broadband sound."""
    noise = np.random.default_rng(0).standard_normal(config.sample_rate).astype(np.float32)
    logmel = LogMel(config)
    return float(logmel.mel_power(logmel.frames(noise)).astype(np.float64).sum(axis=1).mean())


def clip_windows(samples: FloatArray, model: LoadedModel) -> list[FloatArray]:
    """A whole clip (at the model's rate) as its ``(window_frames, n_mels)`` windows for :func:`Classify`.

    A clip shorter than one window is centre-padded with zeros to exactly one window, so a short word
    sits where training data put it. A longer clip is cut every hop; when the hops leave frames at the
    end uncovered, one more window ending at the last frame is added so the end of the clip is scored.

    Each window is a view of the clip's frames, not a copy (hostile clients: a 4 MB clip's 1,241 windows
    copied out were 18.6 MB, ten times its frames); the batcher copies a batch's worth when it stacks one.
    """
    m = model.manifest
    need = m.frontend.n_samples(m.window_frames)
    if samples.size < need:
        left = (need - samples.size) // 2
        samples = np.pad(samples, (left, need - samples.size - left))
    frames = LogMel(m.frontend).frames(samples)
    starts = list(range(0, frames.shape[0] - m.window_frames + 1, m.hop_frames))
    if starts[-1] + m.window_frames < frames.shape[0]:
        starts.append(frames.shape[0] - m.window_frames)
    return [frames[s : s + m.window_frames] for s in starts]
