"""Coverage-guided fuzzing (atheris) of request handling, through a real in-process server.

Each input is turned into one call: a ``StreamClassify`` stream of fuzzed ``StreamRequest``s (structured:
configs with any rate, encoding, model name and version, audio chunks of any bytes, empty requests; or
raw bytes that need not be protobuf at all) or a fuzzed ``Classify`` request, sent over gRPC to the
server running on a thread of this process with tight limits. The oracle, per call:

* the status is one a client can cause (OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED), never
  INTERNAL or UNKNOWN, and a refusal says why (non-empty details);
* an OK stream at 16 kHz with scores asked for gets exactly one score per window of its audio (nothing
  lost), after one ``started``;
* the server logs no error line (a bug) and holds no stream afterwards.

    python -m tests.fuzz.fuzz_requests -max_total_time=600           # make fuzz
    python -m tests.fuzz.fuzz_requests -runs=2000 -artifact_prefix=/tmp/

A crash (an oracle failure) is written by libFuzzer as ``crash-<sha1>`` under ``-artifact_prefix``;
replay it with ``python -m tests.fuzz.fuzz_requests <that file>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["hark"]):
    from hark.config import Settings
    from hark.core.audio import SUPPORTED_SAMPLE_RATES
    from hark.server import RunningServer, start_server
    from hark.v1 import hark_pb2

import grpc

from tests.fixtures_models import publish_tiny

LIMITS: dict[str, Any] = {
    "max_chunk_bytes": 4_096,
    "max_message_bytes": 64 * 1024,
    "max_stream_s": 2.0,
    "idle_timeout_s": 5.0,
    "max_delay_ms": 0.5,
}
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
MODEL_NAMES = ["", "tiny", "other", "../tiny", "tiny/../tiny", "TINY", "t" * 64, "t" * 65, "..", "a\\b"]
DEFAULT_FLAGS = {"-max_len": 12_000, "-len_control": 0, "-timeout": 30}
STREAM = "/hark.v1.Classifier/StreamClassify"
CLASSIFY = "/hark.v1.Classifier/Classify"


class ErrorTap:
    """Stands in for stderr: passes everything through, keeps the server's error-level log lines."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        if '"level": "error"' in text or '"level": "critical"' in text:
            self.lines.append(text)
        return int(self.target.write(text))

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False


class Harness:
    """The server on its own event loop thread, and a blocking channel to it."""

    def __init__(self) -> None:
        self.tap = ErrorTap(sys.stderr)
        sys.stderr = self.tap
        self._tmp = tempfile.TemporaryDirectory(prefix="hark-fuzz-")
        store = Path(self._tmp.name) / "store"
        publish_tiny(store, "tiny")
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.running: RunningServer | None = None

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            settings = Settings(
                model_store=store,
                port=0,
                metrics_port=-1,
                reload_interval_s=0,
                log_format="json",
                log_level="warning",
                **LIMITS,
            )
            self.running = self.loop.run_until_complete(start_server(settings))
            started.set()
            self.loop.run_forever()

        threading.Thread(target=serve, name="hark-fuzz-server", daemon=True).start()
        if not started.wait(60) or self.running is None:
            raise RuntimeError("the server did not start")
        self.channel = grpc.insecure_channel(self.running.address, options=[("grpc.max_send_message_length", -1)])
        self.stream = self.channel.stream_stream(STREAM, request_serializer=_serialize)
        self.classify = self.channel.unary_unary(CLASSIFY, request_serializer=_serialize)
        self.calls = 0

    def assert_idle(self) -> None:
        """Every call has ended, so the server must hold no stream (a moment for the last to unwind)."""
        assert self.running is not None
        servicer = self.running.servicer
        for _ in range(100):
            if servicer.active_streams == 0 and servicer.active_calls == 0:
                return
            time.sleep(0.01)
        raise AssertionError(f"the server still holds {servicer.active_streams} streams after their calls ended")


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


def _rate(fdp: atheris.FuzzedDataProvider) -> int:
    return int(fdp.PickValueInList([*SUPPORTED_SAMPLE_RATES, 0, 1, 12_345, 10_000_000, 2**32 - 1]))


def _model(fdp: atheris.FuzzedDataProvider) -> str:
    return str(fdp.PickValueInList(MODEL_NAMES)) if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(12)


def stream_requests(fdp: atheris.FuzzedDataProvider) -> list[hark_pb2.StreamRequest | bytes]:
    """A fuzzed stream: usually a config first (so audio handling is reached), then anything."""
    requests: list[hark_pb2.StreamRequest | bytes] = []
    for position in range(fdp.ConsumeIntInRange(0, 8)):
        kind = fdp.ConsumeIntInRange(0, 9)
        if (position == 0 and kind < 7) or kind == 9:
            requests.append(
                hark_pb2.StreamRequest(
                    config=hark_pb2.StreamConfig(
                        model=_model(fdp),
                        version=fdp.ConsumeIntInRange(0, 3),
                        sample_rate_hz=_rate(fdp),
                        encoding=fdp.ConsumeIntInRange(0, 3),
                        emit_scores=fdp.ConsumeBool(),
                    )
                )
            )
        elif kind < 7:
            requests.append(
                hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 6_000))))
            )
        elif kind == 7:
            requests.append(hark_pb2.StreamRequest())
        else:
            requests.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))  # raw, need not be protobuf
    return requests


def expected_windows(n_samples: int) -> int:
    """Windows of a 16 kHz stream for the tiny model (98-frame window, 10-frame hop), tail included."""
    if n_samples == 0:
        return 0
    frames = 1 + (n_samples - 400) // 160 if n_samples >= 400 else 0
    if frames < 98:
        return 1
    windows = 1 + (frames - 98) // 10
    last_end = 400 + (98 + (windows - 1) * 10 - 1) * 160
    return windows + (1 if n_samples > last_end else 0)


def check_stream(harness: Harness, requests: list[hark_pb2.StreamRequest | bytes]) -> None:
    call = harness.stream(iter(requests), timeout=20)
    responses = []
    with contextlib.suppress(grpc.RpcError):
        responses = [hark_pb2.StreamResponse.FromString(r) for r in call]
    code, details = call.code(), call.details() or ""
    assert code in ALLOWED, f"stream ended {code.name}: {details!r} for {requests!r:.2000}"
    assert code == grpc.StatusCode.OK or details, f"{code.name} without a message"
    if code != grpc.StatusCode.OK:
        return
    assert responses and responses[0].WhichOneof("response") == "started", responses[:1]
    first = requests[0]
    assert isinstance(first, hark_pb2.StreamRequest)
    config = first.config
    if config.emit_scores and config.sample_rate_hz == 16_000:
        width = 2 if config.encoding == hark_pb2.PCM_S16LE else 4
        samples = sum(len(r.audio.pcm) // width for r in requests[1:] if isinstance(r, hark_pb2.StreamRequest))
        scores = sum(r.WhichOneof("response") == "scores" for r in responses)
        assert scores == expected_windows(samples), f"{scores} scores for {samples} samples: audio lost"


def check_classify(harness: Harness, fdp: atheris.FuzzedDataProvider) -> None:
    if fdp.ConsumeBool():
        request: hark_pb2.ClassifyRequest | bytes = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    else:
        request = hark_pb2.ClassifyRequest(
            model=_model(fdp),
            version=fdp.ConsumeIntInRange(0, 3),
            sample_rate_hz=_rate(fdp),
            encoding=fdp.ConsumeIntInRange(0, 3),
            pcm=fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40_000)),
        )
    try:
        harness.classify(request, timeout=20)
    except grpc.RpcError as e:
        assert e.code() in ALLOWED, f"Classify ended {e.code().name}: {e.details()!r} for {request!r:.2000}"
        assert e.details(), f"{e.code().name} without a message"


_harness: Harness | None = None


def test_one_input(data: bytes) -> None:
    assert _harness is not None
    fdp = atheris.FuzzedDataProvider(data)
    errors_before = len(_harness.tap.lines)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        check_classify(_harness, fdp)
    else:
        check_stream(_harness, stream_requests(fdp))
    assert len(_harness.tap.lines) == errors_before, f"the server logged an error: {_harness.tap.lines[-1]}"
    _harness.calls += 1
    if _harness.calls % 100 == 0:
        _harness.assert_idle()


def main(argv: list[str] | None = None) -> None:
    global _harness
    _harness = Harness()
    args = list(sys.argv[1:] if argv is None else argv)
    # Inputs long enough for several chunks of audio from the start (libFuzzer grows them slowly otherwise).
    defaults = [f"{flag}={value}" for flag, value in DEFAULT_FLAGS.items() if not any(a.startswith(flag) for a in args)]
    atheris.Setup([sys.argv[0], *defaults, *args], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
