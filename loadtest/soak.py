"""Soak test: a real server process under mixed load, faults and hostile clients, for minutes.

    python -m loadtest.soak                  # 10 minutes (make soak)
    python -m loadtest.soak --duration 30    # what tests/integration/test_soak.py runs

A server subprocess (``python -m hark.server``) serves a temporary store holding the tiny test model.
Worker tasks keep it busy with a random mix of scenarios, each with the outcome it must get:

* ``stream``: a clip streamed faster than real time, every hop's scores asked for; must be OK with
  exactly one score per window of the clip (nothing lost) from the version the stream started on.
* ``classify``: a whole clip in one call; OK.
* ``cancel`` / ``drop``: a stream cancelled by the client, or its connection closed, mid-audio (faults).
* ``deadline``: a stream whose deadline passes while it waits; DEADLINE_EXCEEDED.
* ``bad``: one of the hostile inputs of ``BAD_STREAMS``; its own status code, never INTERNAL.
* ``stalled``: a client that never reads responses; the server ends it (DEADLINE_EXCEEDED).
* Hostile clients (``loadtest/hostile.py``): ``unfinished`` Classify calls that never complete their
  message (refused at the headers or ended, never OK), ``empty chunks`` that do not keep a stream alive
  (DEADLINE_EXCEEDED), a ``fast`` sender held to 4x real time past its burst (OK, every window), a
  ``fast file`` declared fast (OK with every window, or RESOURCE_EXHAUSTED when the fast-stream budget is
  full), ``unfinished oip`` ModelInfer calls (as ``unfinished``), a ``slow body`` to the OIP REST route
  (429 at its headers, or 408 once admitted), a ``rapid reset`` burst, and a ``long name`` of 1 MB
  (INVALID_ARGUMENT with a short message).

Meanwhile a publisher adds a new model version every few seconds (and now and then a broken one, which
must be refused) and prunes old ones, so streams run across reloads. The server's RSS and open file
descriptors are sampled throughout. The report: streams served, faults injected, outcomes by scenario and
code, unexpected outcomes, server error log lines, RSS and fds at start (after warm-up) and end, and the
exit code after SIGTERM. Exit status 0 means zero unexpected outcomes and a clean exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python loadtest/soak.py` as well as `python -m loadtest.soak`
    sys.path.insert(0, str(REPO))

from hark.core.audio import encode_pcm  # noqa: E402
from hark.core.model_store import MODEL_FILE  # noqa: E402
from hark.v1 import hark_pb2, hark_pb2_grpc  # noqa: E402
from loadtest.hostile import slow_bodies  # noqa: E402
from loadtest.server_process import SERVER_ARGV, hark_env, open_fds, rss_bytes  # noqa: E402
from tests.fixtures_models import noise, publish_tiny, quiet  # noqa: E402

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
RATE = 16_000


# The server process ---------------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """``python -m hark.server`` in a subprocess, its stderr (JSON log lines) drained continuously so a
    full pipe can never stall it; error-level lines are kept for the report."""

    proc: asyncio.subprocess.Process
    address: str
    levels: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    log_bytes: int = 0  # everything the server wrote to stderr
    metrics_url: str = ""  # the /metrics address, when the server serves one
    websocket_port: int | None = None  # when the server serves the WebSocket port
    oip_http_port: int | None = None  # when the server serves the OIP REST port
    _drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, store: Path, **settings: object) -> ServerProcess:
        proc = await asyncio.create_subprocess_exec(
            *SERVER_ARGV, cwd=REPO, env=hark_env(store, **settings), stderr=asyncio.subprocess.PIPE
        )
        assert proc.stderr is not None
        server = cls(proc, "")
        while not server.address:
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            if not line:
                raise RuntimeError(f"the server exited before listening (code {await proc.wait()})")
            entry = server._record(line)
            if str(entry.get("event", "")).startswith("listening on "):
                server.address = str(entry["address"])
                server.metrics_url = str(entry.get("metrics") or "")
                server.websocket_port = entry.get("websocket")
                server.oip_http_port = entry.get("oip_http")
        server._drain = asyncio.get_running_loop().create_task(server._read_logs())
        return server

    def _record(self, line: bytes) -> dict[str, Any]:
        self.log_bytes += len(line)
        try:
            entry: dict[str, Any] = json.loads(line)
        except ValueError:  # grpc core's own lines are not JSON
            return {}
        level = str(entry.get("level", ""))
        self.levels[level] += 1
        self.events[str(entry.get("event", ""))] += 1
        if level in ("error", "critical") and len(self.errors) < 50:
            self.errors.append(entry)
        return entry

    async def _read_logs(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self._record(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def open_fds(self) -> int:
        return open_fds(self.pid)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL if it does not come)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 5)
        return code


# Clients ----------------------------------------------------------------------------------------------------


def config(**fields: Any) -> hark_pb2.StreamRequest:
    values: dict[str, Any] = {"sample_rate_hz": RATE, "encoding": hark_pb2.PCM_S16LE, **fields}
    return hark_pb2.StreamRequest(config=hark_pb2.StreamConfig(**values))


def audio(pcm: bytes) -> hark_pb2.StreamRequest:
    return hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=pcm))


def chunks(samples: np.ndarray, chunk_s: float = 0.1) -> list[hark_pb2.StreamRequest]:
    step = round(chunk_s * RATE)
    return [audio(encode_pcm(samples[i : i + step])) for i in range(0, samples.size, step)]


def expected_windows(n_samples: int) -> int:
    """Windows the tiny model's 16 kHz stream of ``n_samples`` yields (98-frame window, 10-frame hop)."""
    frames = 1 + (n_samples - 400) // 160
    if frames < 98:
        return 1  # the tail is padded to one window
    windows = 1 + (frames - 98) // 10
    last_end = 400 + (98 + (windows - 1) * 10 - 1) * 160
    return windows + (1 if n_samples > last_end else 0)


def clip(rng: random.Random) -> np.ndarray:
    """Quiet, a noise burst (the tiny model's word), quiet: 1.5 to 3 s."""
    before, word, after = rng.uniform(0.3, 1.0), rng.uniform(0.4, 0.8), rng.uniform(0.5, 1.2)
    seed = rng.randrange(1 << 30)
    return np.concatenate([quiet(before), noise(word, seed=seed), quiet(after)])


# Hostile inputs and the status each must get.
BAD_STREAMS: dict[str, tuple[list[hark_pb2.StreamRequest], grpc.StatusCode]] = {
    "audio before config": ([audio(b"\0\0")], INVALID),
    "config twice": ([config(), config()], INVALID),
    "odd byte count": ([config(), audio(b"\0\0\0")], INVALID),
    "huge sample rate": ([config(sample_rate_hz=2**32 - 1)], INVALID),
    "10 MHz": ([config(sample_rate_hz=10_000_000)], INVALID),
    "encoding 99": ([config(encoding=99)], INVALID),
    "NaN float": ([config(encoding=hark_pb2.PCM_F32LE), audio(np.array([np.nan], "<f4").tobytes())], INVALID),
    "Inf float": ([config(encoding=hark_pb2.PCM_F32LE), audio(np.array([0, np.inf], "<f4").tobytes())], INVALID),
    "path in model name": ([config(model="../../etc/passwd")], INVALID),
    "unknown version": ([config(version=99_999)], grpc.StatusCode.NOT_FOUND),
    "oversized chunk": ([config(), audio(bytes(200_002))], INVALID),
}
MALFORMED = b"\x0a\xff\xff\xff\xff\x0f"  # a truncated length-delimited field: not a StreamRequest


@dataclass
class Outcome:
    scenario: str
    expected: bool
    code: str
    detail: str = ""
    version: int = 0


async def _requests(items: Sequence[hark_pb2.StreamRequest], pace_s: float) -> AsyncIterator[hark_pb2.StreamRequest]:
    for item in items:
        yield item
        if pace_s:
            await asyncio.sleep(pace_s)


async def scenario_stream(stub: hark_pb2_grpc.ClassifierStub, rng: random.Random) -> Outcome:
    samples = clip(rng)
    call = stub.StreamClassify(_requests([config(emit_scores=True), *chunks(samples)], 0.02), timeout=60)
    started = 0
    scores = 0
    try:
        async for response in call:
            kind = response.WhichOneof("response")
            if kind == "started":
                started = response.started.version
            elif kind == "scores":
                scores += 1
    except grpc.aio.AioRpcError:
        pass
    code = await call.code()
    want = expected_windows(samples.size)
    lost = code == OK and scores != want
    detail = f"{scores} scores for {want} windows" if lost else (await call.details() or "")
    return Outcome("stream", code == OK and not lost and started > 0, code.name, detail, started)


async def scenario_classify(stub: hark_pb2_grpc.ClassifierStub, rng: random.Random) -> Outcome:
    request = hark_pb2.ClassifyRequest(sample_rate_hz=RATE, encoding=hark_pb2.PCM_S16LE, pcm=encode_pcm(clip(rng)))
    try:
        response = await stub.Classify(request, timeout=30)
    except grpc.aio.AioRpcError as e:
        # At max_clip_calls (the hostile "unfinished" scenario holds clip slots) a clip is refused with a
        # retry hint: a bound doing its work, not a failure.
        return Outcome("classify", clip_slots_busy(e), e.code().name, e.details() or "")
    return Outcome("classify", True, "OK", version=response.version)


def clip_slots_busy(error: grpc.aio.AioRpcError) -> bool:
    """A clip refused at ``max_clip_calls`` (the hostile scenarios hold clip slots): the bound at work."""
    return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "concurrent Classify calls" in (error.details() or "")


async def scenario_cancel(stub: hark_pb2_grpc.ClassifierStub, rng: random.Random) -> Outcome:
    """The client cancels mid-stream (RST_STREAM): a fault the server must absorb."""
    call = stub.StreamClassify(_requests([config(emit_scores=True), *chunks(clip(rng))], 0.01))
    after = rng.randint(1, 15)
    n = 0
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        async for _ in call:
            n += 1
            if n >= after:
                call.cancel()
                break
    code = await call.code()
    return Outcome("cancel", code in (grpc.StatusCode.CANCELLED, OK), code.name)


async def scenario_drop(address: str, rng: random.Random) -> Outcome:
    """The client's connection goes away mid-stream (its channel closed under it)."""
    channel = grpc.aio.insecure_channel(address)
    stub = hark_pb2_grpc.ClassifierStub(channel)  # type: ignore[no-untyped-call]
    call = stub.StreamClassify(_requests([config(), *chunks(clip(rng))], 0.01))
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.read()
    await asyncio.sleep(rng.uniform(0.0, 0.2))
    await channel.close(grace=None)
    code = await call.code()
    return Outcome("drop", code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE, OK), code.name)


async def scenario_deadline(address: str, rng: random.Random) -> Outcome:
    code = await asyncio.to_thread(expired_stream_status, address, rng.uniform(0.05, 0.3))
    return Outcome("deadline", code == grpc.StatusCode.DEADLINE_EXCEEDED, code.name)


def expired_stream_status(address: str, timeout: float) -> grpc.StatusCode:
    """The status of a stream whose client deadline passes while it waits for audio; blocking. The blocking
    client: when a grpc.aio client's first write meets its own deadline, it can report INTERNAL
    (grpc/grpc#36066)."""

    def silent_after_config() -> Iterator[hark_pb2.StreamRequest]:
        yield config()
        time.sleep(timeout * 3)

    code, _, _ = refusal_status(address, silent_after_config(), timeout=timeout)
    return code


CONNECT_TIMEOUT_S = 10.0

# A tiny receive window: a server write waits as soon as the client stops reading.
TINY_WINDOW = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1))


def refusal_status(
    address: str,
    requests: Iterable[hark_pb2.StreamRequest | bytes],
    *,
    options: Sequence[tuple[str, Any]] = (),
    metadata: Sequence[tuple[str, str]] = (),
    read_after_s: float = 0.0,
    timeout: float = 10.0,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """Code, details and trailing metadata of a stream the server is expected to end; blocking.

    The blocking client, because a grpc.aio client that is still writing when the server ends a call can
    report INTERNAL instead of the server's status (grpc/grpc#36066): this reports what the server said.
    ``bytes`` requests go out as they are (not protobuf); ``read_after_s`` waits before reading anything.
    The channel is connected first, so ``timeout`` is the call's alone.
    """
    with grpc.insecure_channel(address, options=list(options)) as channel:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        call = channel.stream_stream(
            "/hark.v1.Classifier/StreamClassify",
            request_serializer=lambda r: r if isinstance(r, bytes) else r.SerializeToString(),
            response_deserializer=hark_pb2.StreamResponse.FromString,
        )(iter(requests), metadata=list(metadata), timeout=timeout)
        time.sleep(read_after_s)
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass
        return call.code(), call.details() or "", tuple(call.trailing_metadata() or ())


async def scenario_bad(address: str, rng: random.Random) -> Outcome:
    name = rng.choice([*BAD_STREAMS, "malformed protobuf"])
    malformed: tuple[list[hark_pb2.StreamRequest | bytes], grpc.StatusCode] = ([MALFORMED], INVALID)
    requests, want = BAD_STREAMS.get(name, malformed)
    code, details, _ = await asyncio.to_thread(refusal_status, address, requests)
    return Outcome(f"bad: {name}", code == want, code.name, details)


def endless_audio() -> Iterator[hark_pb2.StreamRequest]:
    """A config asking for every hop's scores, then 100 ms chunks of noise for ever."""
    yield config(emit_scores=True)
    pcm = encode_pcm(noise(0.1))
    while True:
        yield audio(pcm)


async def scenario_stalled(address: str, rng: random.Random) -> Outcome:
    """Sends audio with every hop's scores asked for and does not read for 2 s, longer than the server's
    ``idle_timeout_s``: the server must end it by itself (its tiny window makes the first write wait)."""
    code, details, _ = await asyncio.to_thread(
        refusal_status, address, endless_audio(), options=TINY_WINDOW, read_after_s=2.0
    )
    return Outcome("stalled", code == grpc.StatusCode.DEADLINE_EXCEEDED, code.name, details)


# Hostile clients (loadtest/hostile.py; README "Reliability and security") ---------------------------------


async def scenario_unfinished(address: str, rng: random.Random) -> Outcome:
    """20 Classify calls declaring 1 MB each, never finished: each is refused at its headers or admitted
    and then ended (its request never arrives whole); none may end OK, INTERNAL or UNKNOWN."""
    report = await _attack("unfinished", address, rng.uniform(0.2, 0.6))
    statuses: dict[str, int] = report.get("statuses", {})
    bad = {k: v for k, v in statuses.items() if k not in ("4", "8")}  # DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
    ok = bool(report) and not bad
    return Outcome("unfinished", ok, "bounded" if ok else "unexpected", str(statuses))


async def scenario_empty_chunks(address: str, rng: random.Random) -> Outcome:
    """Empty chunks every 100 ms and no audio: ended as idle after ``idle_timeout_s``."""

    def keepalive() -> Iterator[hark_pb2.StreamRequest]:
        yield config()
        for _ in range(30):
            time.sleep(0.1)
            yield audio(b"")

    code, details, _ = await asyncio.to_thread(refusal_status, address, keepalive())
    return Outcome("empty chunks", code == grpc.StatusCode.DEADLINE_EXCEEDED, code.name, details)


async def scenario_fast(stub: hark_pb2_grpc.ClassifierStub, rng: random.Random) -> Outcome:
    """40 s of audio in 6 s chunks as fast as possible: past its 30 s burst the stream is held to 4x real
    time, and still gets every window."""
    samples = noise(40.0, seed=rng.randrange(1 << 30))
    call = stub.StreamClassify(_requests([config(emit_scores=True), *chunks(samples, 6.0)], 0.0), timeout=60)
    scores = 0
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for response in call:
            scores += response.WhichOneof("response") == "scores"
    code = await call.code()
    want = expected_windows(samples.size)
    return Outcome("fast", code == OK and scores == want, code.name, f"{scores} scores for {want} windows")


async def scenario_fast_file(stub: hark_pb2_grpc.ClassifierStub, rng: random.Random) -> Outcome:
    """40 s of audio declared ``fast``, in 6 s chunks as fast as possible: served from the bulk budget, never
    paced (OK, every window), or refused at once when ``max_fast_streams`` are running."""
    samples = noise(40.0, seed=rng.randrange(1 << 30))
    started = asyncio.Event()

    async def requests() -> AsyncIterator[hark_pb2.StreamRequest]:
        """Audio only once the server has started the stream: a refusal then never meets a write in flight,
        which grpc.aio can report as INTERNAL instead of the server's status (grpc/grpc#36066)."""
        yield config(emit_scores=True, fast=True)
        await started.wait()
        for chunk in chunks(samples, 6.0):
            yield chunk

    call = stub.StreamClassify(requests(), timeout=60)
    scores = 0
    try:
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for response in call:
                kind = response.WhichOneof("response")
                if kind == "started":
                    started.set()
                scores += kind == "scores"
    finally:
        started.set()  # a refused call's request iterator finds the call over and stops
    code, details = await call.code(), await call.details() or ""
    want = expected_windows(samples.size)
    full = code == grpc.StatusCode.RESOURCE_EXHAUSTED and "concurrent fast streams" in details
    return Outcome("fast file", (code == OK and scores == want) or full, code.name, f"{scores} of {want}; {details}")


async def scenario_unfinished_oip(address: str, rng: random.Random) -> Outcome:
    """20 OIP ModelInfer calls declaring 1 MB each, never finished: refused at their headers or ended."""
    report = await _attack("unfinished-oip", address, rng.uniform(0.2, 0.6))
    statuses: dict[str, int] = report.get("statuses", {})
    bad = {k: v for k, v in statuses.items() if k not in ("4", "8")}  # DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
    ok = bool(report) and not bad
    return Outcome("unfinished oip", ok, "bounded" if ok else "unexpected", str(statuses))


async def scenario_slow_body(rest_port: int, rng: random.Random) -> Outcome:
    """4 OIP REST infer requests declaring 1 MB, sending 10 kB and stalling: 429 at their headers past the
    clip slots, 408 after ``request_timeout_s`` once admitted; never read whole, never 5xx."""
    statuses = await slow_bodies("127.0.0.1", rest_port, requests=4, declared=1_000_000, sent=10_000, wait_s=6.0)
    ok = set(statuses) <= {408, 429}
    return Outcome("slow body", ok, "bounded" if ok else "unexpected", str(dict(statuses)))


async def scenario_reset(address: str, rng: random.Random) -> Outcome:
    """A short HTTP/2 rapid-reset burst (calls opened and reset at once)."""
    calls = int((await _attack("rapid-reset", address, 0.3)).get("calls", 0))
    return Outcome("rapid reset", calls > 0, "bounded", f"{calls} resets")


async def _attack(kind: str, address: str, seconds: float) -> dict[str, Any]:
    """Run one raw HTTP/2 attack of ``loadtest/hostile.py`` in a process of its own; its JSON report.

    Its own process: these attacks keep a Python process busy, and the grpc.aio calls of the other workers
    misreport their status (INTERNAL, CANCELLED) when their event loop is starved."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.hostile",
        kind,
        address,
        f"{seconds:.3f}",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return {}
    report: dict[str, Any] = json.loads(out)
    return report


async def scenario_long_name(stub: hark_pb2_grpc.ClassifierStub, rng: random.Random) -> Outcome:
    """A 1 MB model name: INVALID_ARGUMENT with a short, escaped message."""
    name = "\x1b" + "n" * 1_000_000
    request = hark_pb2.ClassifyRequest(model=name, sample_rate_hz=RATE, encoding=hark_pb2.PCM_S16LE, pcm=b"\0\0")
    try:
        await stub.Classify(request, timeout=30)
    except grpc.aio.AioRpcError as e:
        details = e.details() or ""
        short = len(details) < 300 and "\x1b" not in details
        return Outcome("long name", (e.code() == INVALID and short) or clip_slots_busy(e), e.code().name, details[:100])
    return Outcome("long name", False, "OK")


SCENARIOS: list[tuple[str, float]] = [
    ("stream", 0.45),
    ("classify", 0.12),
    ("cancel", 0.10),
    ("drop", 0.06),
    ("deadline", 0.06),
    ("bad", 0.12),
    ("stalled", 0.02),
    ("unfinished", 0.02),
    ("empty chunks", 0.02),
    ("fast", 0.01),
    ("rapid reset", 0.01),
    ("long name", 0.01),
    ("fast file", 0.01),
    ("unfinished oip", 0.01),
    ("slow body", 0.01),
]


# The soak ---------------------------------------------------------------------------------------------------


@dataclass
class Report:
    duration_s: float
    outcomes: Counter[tuple[str, str, bool]] = field(default_factory=Counter)
    unexpected: list[Outcome] = field(default_factory=list)
    versions_published: int = 0
    broken_published: int = 0
    versions_seen: set[int] = field(default_factory=set)
    rss_start: int = 0
    rss_end: int = 0
    rss_max: int = 0
    fds_start: int = 0
    fds_end: int = 0
    fds_max: int = 0
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    server_levels: dict[str, int] = field(default_factory=dict)
    refused_logged: int = 0
    exit_code: int | None = None

    @property
    def served(self) -> int:
        return sum(n for (scenario, code, ok), n in self.outcomes.items() if scenario in ("stream", "classify") and ok)

    @property
    def faults(self) -> dict[str, int]:
        by: Counter[str] = Counter()
        for (scenario, _, _), n in self.outcomes.items():
            if scenario not in ("stream", "classify"):
                by[scenario.split(":")[0]] += n
        return {**by, "reloads": self.versions_published, "broken versions": self.broken_published}

    def errors_by_code(self) -> dict[str, int]:
        codes: Counter[str] = Counter()
        for (_, code, _), n in self.outcomes.items():
            codes[code] += n
        return dict(sorted(codes.items()))

    @property
    def passed(self) -> bool:
        return not self.unexpected and not self.server_errors and self.exit_code == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration_s": round(self.duration_s, 1),
            "passed": self.passed,
            "streams_and_calls_served": self.served,
            "faults_injected": self.faults,
            "outcomes_by_code": self.errors_by_code(),
            "unexpected": [vars(o) for o in self.unexpected[:20]],
            "unexpected_count": len(self.unexpected),
            "versions_seen": sorted(self.versions_seen),
            "refused_versions_logged": self.refused_logged,
            "server_error_lines": self.server_errors[:10],
            "server_log_levels": self.server_levels,
            "rss_mib": {"start": _mib(self.rss_start), "end": _mib(self.rss_end), "max": _mib(self.rss_max)},
            "open_fds": {"start": self.fds_start, "end": self.fds_end, "max": self.fds_max},
            "exit_code": self.exit_code,
        }

    def table(self) -> str:
        d = self.as_dict()
        rows = [
            ("duration", f"{d['duration_s']} s"),
            ("served (OK streams and clips)", str(d["streams_and_calls_served"])),
            ("faults injected", ", ".join(f"{k} {v}" for k, v in d["faults_injected"].items())),
            ("outcomes by code", ", ".join(f"{k} {v}" for k, v in d["outcomes_by_code"].items())),
            ("unexpected outcomes", str(d["unexpected_count"])),
            ("server error log lines", str(len(self.server_errors))),
            ("model versions served", ", ".join(map(str, d["versions_seen"]))),
            ("RSS start / end / max", "{start} / {end} / {max} MiB".format(**d["rss_mib"])),
            ("open fds start / end / max", "{start} / {end} / {max}".format(**d["open_fds"])),
            ("exit code after SIGTERM", str(d["exit_code"])),
            ("result", "PASS" if self.passed else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


async def _publisher(store: Path, stop: asyncio.Event, every_s: float, rng: random.Random, report: Report) -> None:
    """New versions every ``every_s`` (the word alternates), now and then a broken one; keeps the newest 3."""
    words = ["yes", "no"]
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        await asyncio.to_thread(publish_tiny, store, "tiny", word=words[report.versions_published % 2])
        report.versions_published += 1
        if rng.random() < 0.3:  # a broken one on top: must be refused, the previous keeps serving
            broken = await asyncio.to_thread(publish_tiny, store, "tiny")
            data = (broken / MODEL_FILE).read_bytes()
            # Replaced in one rename: written in place, the store could see it empty, then half, and
            # (rightly) refuse and log it twice.
            (broken / "truncated.tmp").write_bytes(data[: len(data) // 2])
            os.replace(broken / "truncated.tmp", broken / MODEL_FILE)
            report.broken_published += 1
        versions = sorted((int(p.name) for p in (store / "tiny").iterdir() if p.name.isdigit()), reverse=True)
        for old in versions[4:]:  # streams on a pruned version finish on it: they hold it in memory
            await asyncio.to_thread(shutil.rmtree, store / "tiny" / str(old), True)


async def _sampler(server: ServerProcess, stop: asyncio.Event, report: Report, warmup_s: float) -> None:
    started = time.monotonic()
    while not stop.is_set():
        rss, fds = server.rss_bytes(), server.open_fds()
        report.rss_max, report.fds_max = max(report.rss_max, rss), max(report.fds_max, fds)
        if not report.rss_start and time.monotonic() - started >= warmup_s:
            report.rss_start, report.fds_start = rss, fds
        report.rss_end, report.fds_end = rss, fds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _worker(
    address: str,
    rest_port: int,
    stop: asyncio.Event,
    rng: random.Random,
    report: Report,
    on_outcome: Callable[[Outcome], None],
) -> None:
    names = [n for n, _ in SCENARIOS]
    weights = [w for _, w in SCENARIOS]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = hark_pb2_grpc.ClassifierStub(channel)  # type: ignore[no-untyped-call]
        while not stop.is_set():
            name = rng.choices(names, weights)[0]
            if name == "stream":
                outcome = await scenario_stream(stub, rng)
            elif name == "classify":
                outcome = await scenario_classify(stub, rng)
            elif name == "cancel":
                outcome = await scenario_cancel(stub, rng)
            elif name == "drop":
                outcome = await scenario_drop(address, rng)
            elif name == "deadline":
                outcome = await scenario_deadline(address, rng)
            elif name == "bad":
                outcome = await scenario_bad(address, rng)
            elif name == "unfinished":
                outcome = await scenario_unfinished(address, rng)
            elif name == "empty chunks":
                outcome = await scenario_empty_chunks(address, rng)
            elif name == "fast":
                outcome = await scenario_fast(stub, rng)
            elif name == "rapid reset":
                outcome = await scenario_reset(address, rng)
            elif name == "long name":
                outcome = await scenario_long_name(stub, rng)
            elif name == "fast file":
                outcome = await scenario_fast_file(stub, rng)
            elif name == "unfinished oip":
                outcome = await scenario_unfinished_oip(address, rng)
            elif name == "slow body":
                outcome = await scenario_slow_body(rest_port, rng)
            else:
                outcome = await scenario_stalled(address, rng)
            on_outcome(outcome)


async def soak(
    duration_s: float,
    *,
    workers: int = 12,
    publish_every_s: float = 5.0,
    seed: int = 0,
    store: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the soak for ``duration_s`` seconds and return its report."""
    rng = random.Random(seed)
    report = Report(duration_s)
    with tempfile.TemporaryDirectory(prefix="hark-soak-") as tmp:
        root = store or Path(tmp) / "store"
        if not (root / "tiny").exists():
            publish_tiny(root, "tiny")
        server = await ServerProcess.start(
            root,
            reload_interval_s=0.5,
            idle_timeout_s=1.0,
            max_streams=workers + 8,
            max_chunk_bytes=200_000,
            shutdown_grace_s=10,
            oip_http_port=0,  # the slow-body scenario's REST route
            request_timeout_s=2.0,  # an admitted request that never arrives whole is ended within a scenario
        )
        assert server.oip_http_port
        stop = asyncio.Event()
        started = time.monotonic()

        def record(outcome: Outcome) -> None:
            report.outcomes[(outcome.scenario.split(":")[0], outcome.code, outcome.expected)] += 1
            if outcome.version:
                report.versions_seen.add(outcome.version)
            if not outcome.expected:
                report.unexpected.append(outcome)

        tasks = [
            asyncio.create_task(
                _worker(server.address, server.oip_http_port, stop, random.Random(rng.random()), report, record)
            )
            for _ in range(workers)
        ]
        tasks.append(asyncio.create_task(_publisher(root, stop, publish_every_s, random.Random(seed + 1), report)))
        tasks.append(asyncio.create_task(_sampler(server, stop, report, warmup_s=min(10.0, duration_s / 4))))
        try:
            while (left := duration_s - (time.monotonic() - started)) > 0:
                await asyncio.sleep(min(10.0, left))
                elapsed = time.monotonic() - started
                if progress:
                    progress(
                        f"{elapsed:6.0f} s  served {report.served}  unexpected {len(report.unexpected)}  "
                        f"rss {_mib(report.rss_end)} MiB  fds {report.fds_end}"
                    )
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(1.0)  # two reload intervals: the server has seen every version published
            report.exit_code = await server.stop()
        for result in results:
            if isinstance(result, BaseException):
                report.unexpected.append(Outcome("harness", False, type(result).__name__, str(result)))
        report.server_errors = server.errors
        report.server_levels = dict(server.levels)
        report.refused_logged = server.events["model version refused"]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=12, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--publish-every", type=float, default=5.0, help="seconds between new model versions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = asyncio.run(
        soak(args.duration, workers=args.workers, publish_every_s=args.publish_every, seed=args.seed, progress=progress)
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
