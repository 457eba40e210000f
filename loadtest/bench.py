"""Benchmark: how many real-time streams one server core holds, against its limit and baselines, in one run.

    python loadtest/bench.py            # make bench: the full run (several minutes)
    python loadtest/bench.py --quick    # under 2 minutes, for development

Server and load generator get one core each: the server runs under ``taskset -c 0``, this process pins
itself to core 1 and drives N concurrent streams from one asyncio grpc.aio client. Every stream sends
100 ms chunks of real speech (espeak-ng keyword sentences with pauses, cached in ``loadtest/.cache``) at
real-time pace, with ``emit_scores`` on. Latency is the time from sending the chunk that completes a hop to
receiving that hop's WindowScores. A level N passes when p99 latency ≤ 50 ms with no errors; N ramps by
doubling, then bisects. Reported, in one table (printed and written to ``loadtest/results/``, markdown and
JSON with date and machine):

* Hark's max streams; p50/p95/p99 latency at 50 % and 90 % of it; server CPU seconds per stream-second;
  RSS per active stream and per idle stream;
* the limit: raw onnxruntime throughput of the same model on one thread (batch 1 and best batch), as
  streams at the model's hop, and Hark's efficiency against it;
* the naive baseline (``loadtest/naive_server.py``) measured the same way, and the ratio;
* the transport floor (``loadtest/floor_server.py``: the same gRPC API answering each chunk with a constant,
  no work at all): its CPU per stream-second plus raw onnxruntime's is the most streams any Python gRPC
  server could hold with this model, and Hark's share of that;
* energy gating on vs off, on speech with 50 % silence (when the server has ``gate_dbfs``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hark.v1 import hark_pb2, hark_pb2_grpc  # noqa: E402
from loadtest.server_process import SERVER_ARGV, cpu_seconds, hark_env, rss_bytes  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
RESULTS = Path(__file__).resolve().parent / "results"
RATE = 16_000
CHUNK_S = 0.1
CHUNK = int(RATE * CHUNK_S)
P99_LIMIT_MS = 50.0
CLIENT_LAG_RETRY_MS = 10.0
SERVER_CORE, CLIENT_CORE = 0, 1
SENTENCES = [
    "yes, turn it on",
    "no. stop",
    "go left, then go right",
    "up. down. off",
    "the weather is nice today",
    "stop the music and go",
]


# Audio -----------------------------------------------------------------------------------------------------


def _espeak(text: str, out: Path) -> np.ndarray:
    import soundfile as sf
    import soxr

    subprocess.run(["espeak-ng", "-s", "150", "-w", str(out), text], check=True, capture_output=True)
    data, rate = sf.read(out, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return np.asarray(soxr.resample(mono, rate, RATE), dtype=np.float32)


def speech(silence_share: float) -> np.ndarray:
    """Keyword sentences from espeak-ng at -20 dBFS-ish, joined by pauses of room noise (-70 dBFS) so that
    ``silence_share`` of the clip is pause; cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"speech_{round(silence_share * 100)}.npy"
    if path.exists():
        return np.load(path)
    rng = np.random.default_rng(7)
    parts: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(SENTENCES):
            voiced = _espeak(text, Path(tmp) / f"{i}.wav")
            voiced = voiced / max(1e-6, float(np.abs(voiced).max())) * 0.5
            pause = round(voiced.size * silence_share / max(1e-6, 1 - silence_share))
            parts += [voiced, (rng.standard_normal(pause) * 10 ** (-70 / 20)).astype(np.float32)]
    clip = np.concatenate(parts).astype(np.float32)
    np.save(path, clip)
    return clip


def pcm_chunks(clip: np.ndarray) -> list[bytes]:
    pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2")
    n = pcm.size // CHUNK
    return [pcm[i * CHUNK : (i + 1) * CHUNK].tobytes() for i in range(n)]


# Processes -------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess pinned to one core; its address from its "listening on" line."""

    proc: subprocess.Popen[bytes]
    address: str

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str], cores: str = str(SERVER_CORE)) -> Server:
        proc = subprocess.Popen(
            ["taskset", "-c", cores, *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode(errors="replace")
            if not line:
                raise RuntimeError(f"server exited before listening: {argv}")
            if "listening on " in line:
                try:
                    address = str(json.loads(line)["address"])
                except (ValueError, KeyError):
                    address = line.split("listening on ", 1)[1].split()[0].strip('",')
                server = cls(proc, address)
                # Drain its output so a full pipe never stalls it.
                asyncio.get_running_loop().run_in_executor(None, _drain, proc)
                return server
        raise RuntimeError("server did not start in 60 s")

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _drain(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass


def hark_server(store: Path, **settings: object) -> Server:
    env = hark_env(store, log_level="info", control_interval_s=0, max_streams=100000, **settings)
    return Server.start(SERVER_ARGV, env)


class ProcessTree(Server):
    """A supervisor and its workers (``hark serve --workers``): CPU over every process of the tree."""

    def cpu_s(self) -> float:
        return _tree_cpu_s(self.proc.pid)


def hark_workers(store: Path, workers: int, cores: str, **settings: object) -> Server:
    env = hark_env(store, log_level="info", control_interval_s=0, max_streams=100000, workers=workers, **settings)
    return ProcessTree.start([sys.executable, "-m", "hark.cli", "serve"], env, cores)


def naive_server(version_dir: Path) -> Server:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return Server.start([sys.executable, str(REPO / "loadtest" / "naive_server.py"), "--model", str(version_dir)], env)


def floor_server(version_dir: Path) -> Server:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return Server.start([sys.executable, str(REPO / "loadtest" / "floor_server.py"), "--model", str(version_dir)], env)


# Load ------------------------------------------------------------------------------------------------------


@dataclass
class Level:
    """One load level's outcome."""

    streams: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: int = 0
    windows: int = 0
    cpu_s: float = 0.0
    rss_bytes: int = 0
    send_lag_p99_ms: float = 0.0
    reported: dict[float, float] | None = None  # percentiles computed by an external client

    def pct(self, q: float) -> float:
        if self.reported is not None:
            return self.reported.get(q, math.inf)
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.inf

    @property
    def ok(self) -> bool:
        measured = bool(self.latencies_ms) or (self.reported is not None and self.windows > 0)
        return self.errors == 0 and measured and self.pct(99) <= P99_LIMIT_MS

    @property
    def cpu_per_stream_s(self) -> float:
        return self.cpu_s / (self.streams * self.seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "ok": self.ok,
            "p50_ms": round(self.pct(50), 2),
            "p95_ms": round(self.pct(95), 2),
            "p99_ms": round(self.pct(99), 2),
            "errors": self.errors,
            "windows": self.windows,
            "cpu_s_per_stream_s": round(self.cpu_per_stream_s, 5),
            "rss_mib": round(self.rss_bytes / 2**20, 1),
            "client_send_lag_p99_ms": round(self.send_lag_p99_ms, 2),
        }


async def _stream(
    stub: hark_pb2_grpc.ClassifierStub,
    chunks: list[bytes],
    offset: int,
    t0: float,
    measure: tuple[float, float],
    stop_at: float,
    level: Level,
    lags: list[float],
) -> None:
    """One real-time stream: chunk i leaves at t0 + i * 100 ms; each WindowScores is matched to the chunk
    that completed its window (by its end time) and timed from that chunk's send."""
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    call = stub.StreamClassify()

    async def read() -> None:
        async for response in call:
            if response.WhichOneof("response") != "scores":
                continue
            now = loop.time()
            end_sample = round(response.scores.end_s * RATE)
            i = max(0, math.ceil(end_sample / CHUNK) - 1)
            if i < len(sent) and measure[0] <= sent[i] < measure[1]:
                level.latencies_ms.append((now - sent[i]) * 1000)
                level.windows += 1

    reader = loop.create_task(read())
    try:
        await call.write(
            hark_pb2.StreamRequest(
                config=hark_pb2.StreamConfig(sample_rate_hz=RATE, encoding=hark_pb2.PCM_S16LE, emit_scores=True)
            )
        )
        i = 0
        while True:
            due = t0 + i * CHUNK_S
            if due >= stop_at:
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if measure[0] <= now < measure[1]:
                lags.append(now - due)
            sent.append(now)
            await call.write(hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=chunks[(offset + i) % len(chunks)])))
            i += 1
        await call.done_writing()
        await reader
    except grpc.aio.AioRpcError:
        level.errors += 1
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


async def run_level(server: Server, streams: int, chunks: list[bytes], warmup_s: float, seconds: float) -> Level:
    """N streams for warm-up + ``seconds``; latency, errors, CPU and RSS over the measured span."""
    level = Level(streams, seconds)
    lags: list[float] = []
    loop = asyncio.get_running_loop()
    # A few channels (HTTP/2 connections) share the streams, as many clients behind a proxy would.
    channels = [grpc.aio.insecure_channel(server.address) for _ in range(max(1, min(8, streams // 64)))]
    stubs = [hark_pb2_grpc.ClassifierStub(ch) for ch in channels]
    try:
        start = loop.time() + 0.2
        measure = (start + warmup_s, start + warmup_s + seconds)
        tasks = [
            loop.create_task(
                _stream(
                    stubs[k % len(stubs)],
                    chunks,
                    (k * 37) % len(chunks),
                    start + (k / streams) * CHUNK_S,  # spread the streams' sends over one hop
                    measure,
                    measure[1] + 0.3,
                    level,
                    lags,
                )
            )
            for k in range(streams)
        ]
        await asyncio.sleep(max(0.0, measure[0] - loop.time()))
        cpu0 = server.cpu_s()
        await asyncio.sleep(max(0.0, measure[1] - loop.time()))
        level.cpu_s = server.cpu_s() - cpu0
        level.rss_bytes = server.rss()
        await asyncio.gather(*tasks)
    finally:
        for ch in channels:
            await ch.close()
    level.send_lag_p99_ms = float(np.percentile(lags, 99) * 1000) if lags else 0.0
    return level


async def max_streams(
    server: Server,
    chunks: list[bytes],
    *,
    start: int,
    cap: int,
    warmup_s: float,
    seconds: float,
    steps: int,
    log: Callable[[str], None],
    measure: Callable[[int], Awaitable[Level]] | None = None,
) -> tuple[int, list[Level]]:
    """Double from ``start`` until a level fails, then bisect ``steps`` times. Returns the best passing N.
    ``measure(n)`` replaces the gRPC streaming load (the MLServer peer has its own client)."""
    levels: list[Level] = []

    async def trial(n: int) -> bool:
        for attempt in range(2):
            if measure is not None:
                level = await measure(n)
            else:
                level = await run_level(server, n, chunks, warmup_s, seconds)
            levels.append(level)
            log(f"    {n:5d} streams: {'pass' if level.ok else 'FAIL'} {level.summary()}")
            await asyncio.sleep(0.5)  # let the server finish ending the streams
            # A failure while the load generator itself fell behind measured the client (or a neighbour
            # on the shared machine), not the server: try that level once more.
            if level.ok or level.send_lag_p99_ms <= CLIENT_LAG_RETRY_MS or attempt:
                return level.ok
        return False

    good, bad = 0, 0
    n = start
    while n <= cap:
        if await trial(n):
            good, n = n, n * 2
        else:
            bad = n
            break
    if bad == 0:
        return good, levels
    for _ in range(steps):
        if bad - good <= max(2, good // 16):
            break
        mid = (good + bad) // 2
        if await trial(mid):
            good = mid
        else:
            bad = mid
    return good, levels


async def idle_rss_per_stream(server: Server, streams: int) -> float:
    """RSS growth per open stream that has sent its config and nothing else, in bytes."""
    channel = grpc.aio.insecure_channel(server.address)
    stub = hark_pb2_grpc.ClassifierStub(channel)
    config = hark_pb2.StreamRequest(config=hark_pb2.StreamConfig(sample_rate_hz=RATE, encoding=hark_pb2.PCM_S16LE))
    calls = []
    try:
        await asyncio.sleep(0.5)
        before = server.rss()
        for _ in range(streams):
            call = stub.StreamClassify()
            await call.write(config)
            calls.append(call)
        for call in calls:
            await call.read()  # StreamStarted: the session exists
        await asyncio.sleep(0.5)
        after = server.rss()
    finally:
        for call in calls:
            call.cancel()
        await channel.close()
    return (after - before) / streams


# The limit: raw onnxruntime ---------------------------------------------------------------------------------

RAW_ORT = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, frames, mels, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
out = {}
for batch in (1, 2, 4, 8, 16, 32, 64):
    x = np.random.default_rng(0).standard_normal((batch, frames, mels)).astype(np.float32)
    for _ in range(3): s.run(None, {name: x})
    rates = []
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            s.run(None, {name: x}); n += batch
        rates.append(n / (time.perf_counter() - t0))
    out[batch] = float(np.median(rates))
print(json.dumps(out))
"""


def raw_ort(version_dir: Path, frames: int, mels: int, seconds: float) -> dict[int, float]:
    """Windows per second of ``session.run`` on one thread on the server's core, per batch size."""
    out = subprocess.run(
        ["taskset", "-c", str(SERVER_CORE), sys.executable, "-c", RAW_ORT, str(version_dir / "model.onnx"),
         str(frames), str(mels), str(seconds)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return {int(k): v for k, v in json.loads(out.stdout).items()}


# The MLServer peer -----------------------------------------------------------------------------------------

MLSERVER_VENV = Path(__file__).resolve().parent / ".venv-mlserver"
MLSERVER_PY = MLSERVER_VENV / "bin" / "python"
OWW_PY = Path(__file__).resolve().parent / ".venv-oww" / "bin" / "python"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants (MLServer may fork helpers)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                f = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(entry.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
    total, frontier = 0.0, {pid}
    while frontier:
        total += sum(stats[p][1] for p in frontier if p in stats)
        frontier = {c for c, (ppid, _) in stats.items() if ppid in frontier}
    return total


async def mlserver_peer(
    version_dir: Path,
    manifest: dict[str, Any],
    warmup: float,
    seconds: float,
    steps: int,
    cap: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """MLServer 1.x (its own venv) on core 0 serving the same ONNX model with adaptive batching; a client on
    core 1 sends each stream's latest window of features as one ModelInfer per hop. Same pass criterion."""
    from hark.core.frontend import FrontendConfig, LogMel

    frames = LogMel(FrontendConfig(**manifest["frontend"])).frames(speech(0.25))
    w, hop = manifest["window_frames"], manifest["hop_frames"]
    windows = np.stack([frames[i : i + w] for i in range(0, frames.shape[0] - w + 1, hop)])
    npy = CACHE / f"windows_{manifest['name']}.npy"
    np.save(npy, windows)
    with tempfile.TemporaryDirectory(prefix="hark-mlserver-") as tmp:
        root = Path(tmp)
        grpc_port = _free_port()
        settings = {"http_port": _free_port(), "grpc_port": grpc_port, "metrics_port": _free_port(),
                    "parallel_workers": 0, "debug": False}  # fmt: skip
        (root / "settings.json").write_text(json.dumps(settings))
        model = root / "keywords"
        model.mkdir()
        shutil.copy(Path(__file__).resolve().parent / "mlserver" / "runtime.py", model / "runtime.py")
        (model / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": "keywords",
                    "implementation": "runtime.OnnxClassifier",
                    "parameters": {"uri": str(version_dir / "model.onnx")},
                    "max_batch_size": 32,
                    "max_batch_time": 0.002,
                }
            )
        )
        proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CORE), str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = Server(proc, f"127.0.0.1:{grpc_port}")
        address = server.address

        async def measure(n: int, w_s: float = warmup, s_s: float = seconds) -> Level:
            cpu0, t0 = _tree_cpu_s(proc.pid), time.monotonic()
            client = Path(__file__).resolve().parent / "mlserver_client.py"
            argv = ["taskset", "-c", str(CLIENT_CORE), str(MLSERVER_PY), str(client), address, str(npy)]
            out = await asyncio.create_subprocess_exec(
                *argv, str(n), str(w_s), str(s_s), stdout=asyncio.subprocess.PIPE
            )
            stdout, _ = await out.communicate()
            elapsed = time.monotonic() - t0
            level = Level(n, s_s)
            level.cpu_s = (_tree_cpu_s(proc.pid) - cpu0) * s_s / max(elapsed, 1e-9)  # scaled to the measured span
            level.rss_bytes = server.rss()
            try:
                r = json.loads(stdout.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                level.errors = n
                return level
            level.errors = int(r["errors"])
            level.windows = int(r["requests"])
            level.send_lag_p99_ms = float(r["client_send_lag_p99_ms"])
            level.reported = {50: r["p50_ms"], 95: r["p95_ms"], 99: r["p99_ms"]}
            return level

        try:
            deadline = time.monotonic() + 90
            ready = False
            while time.monotonic() < deadline and not ready:
                await asyncio.sleep(1.0)
                probe = await measure(1, 0.0, 0.3)
                ready = probe.errors == 0 and probe.windows > 0
            if not ready:
                return {"error": "MLServer did not answer within 90 s"}
            best, levels = await max_streams(
                server, [], start=8, cap=cap, warmup_s=warmup, seconds=seconds, steps=steps, log=log, measure=measure
            )
            out: dict[str, Any] = {"max_streams": best, "levels": [lv.summary() for lv in levels]}
            top = next((lv for lv in reversed(levels) if lv.streams == best and lv.ok), None)
            if top is not None:
                out["cpu_s_per_stream_s"] = top.cpu_per_stream_s
            return out
        finally:
            server.stop()


# Main ------------------------------------------------------------------------------------------------------


def save_result(folder: Path, kind: str, result: dict[str, Any]) -> Path:
    """Write ``result`` as ``<folder>/<kind>-<UTC date>.json`` (the results folder's naming) and return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def find_version(store: Path) -> Path:
    """The store's first model, newest version."""
    for model in sorted(p for p in store.iterdir() if p.is_dir()):
        versions = sorted((p for p in model.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        if versions:
            return versions[-1]
    raise FileNotFoundError(f"no model version in {store}")


def streaming_version(store: Path) -> Path | None:
    """The newest version of the store's first model whose newest version is a streaming one, if any."""
    for model in sorted(p for p in store.iterdir() if p.is_dir()):
        versions = sorted((p for p in model.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        if versions and json.loads((versions[-1] / "manifest.json").read_text()).get("model_kind") == "streaming":
            return versions[-1]
    return None


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "note": "2 cores shared with other workloads: figures are noisy; ratios are measured side by side",
    }


def _fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    log = print
    quick = args.quick
    warmup, seconds = (1.3, 2.5) if quick else (1.5, 10.0)
    steps = 2 if quick else 4
    seconds = args.seconds or seconds
    steps = args.steps or steps
    store: Path = args.store
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if store is None:
        bundled = REPO / "model_store"
        if bundled.is_dir() and any(bundled.glob("*/*/model.onnx")):
            store = bundled
        else:
            from tests.fixtures_models import publish_tiny

            tmp = tempfile.TemporaryDirectory(prefix="hark-bench-")
            store = Path(tmp.name) / "store"
            publish_tiny(store, "tiny")
            log("bundled model absent: using the tiny test model (tests/fixtures_models.py)")
    version_dir = find_version(store)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    frames, mels, hop_frames = manifest["window_frames"], manifest["frontend"]["n_mels"], manifest["hop_frames"]
    hop_s = hop_frames * manifest["frontend"]["hop_length"] / manifest["frontend"]["sample_rate"]
    windows_per_stream_s = 1 / hop_s
    os.sched_setaffinity(0, {CLIENT_CORE})
    log(f"model {version_dir.relative_to(store.parent)}; server on core {SERVER_CORE}, load on core {CLIENT_CORE}")

    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "mode": "quick" if quick else "full",
        "model": f"{manifest['name']}/{version_dir.name}",
        "criterion": f"p99 chunk-to-WindowScores latency <= {P99_LIMIT_MS:g} ms, no errors, real-time 100 ms chunks",
        "measured_s_per_level": seconds,
        "bisection_steps": steps,
    }

    log("raw onnxruntime, one thread, core 0 ...")
    rates = raw_ort(version_dir, frames, mels, 1.0 if quick else 3.0)
    best_batch = max(rates, key=lambda b: rates[b])
    result["raw_ort"] = {
        "windows_per_s": {str(b): round(r, 1) for b, r in rates.items()},
        "batch1_streams": rates[1] / windows_per_stream_s,
        "best_batch": best_batch,
        "best_streams": rates[best_batch] / windows_per_stream_s,
    }
    log(f"    {result['raw_ort']}")

    speech_chunks = pcm_chunks(speech(0.25))
    realistic_chunks = pcm_chunks(speech(0.5))

    def ramp(server: Server, chunks: list[bytes], start: int) -> Any:
        return max_streams(
            server, chunks, start=start, cap=args.cap, warmup_s=warmup, seconds=seconds, steps=steps, log=log
        )

    log("Hark ...")
    server = hark_server(store, gate_dbfs="-inf") if args.gate_setting else hark_server(store)
    try:
        await run_level(server, 4, speech_chunks, 0.5, 1.0)  # warm up
        best, levels = await ramp(server, speech_chunks, args.start)
        result["hark"] = {"max_streams": best, "levels": [lv.summary() for lv in levels]}
        if best:
            for share in (50, 90):
                n = max(1, round(best * share / 100))
                lv = await run_level(server, n, speech_chunks, warmup, seconds)
                result["hark"][f"at_{share}pct"] = lv.summary()
                log(f"    at {share}% ({n}): {lv.summary()}")
            top = next((lv for lv in reversed(levels) if lv.streams == best and lv.ok), None)
            if top is not None:
                result["hark"]["cpu_s_per_stream_s"] = top.cpu_per_stream_s
                result["hark"]["rss_mib_at_max"] = top.rss_bytes / 2**20
        idle_n = 200 if quick else 1000
        result["hark"]["idle_rss_per_stream_bytes"] = await idle_rss_per_stream(server, idle_n)
        result["hark"]["idle_streams_measured"] = idle_n
        log(f"    idle stream RSS: {result['hark']['idle_rss_per_stream_bytes'] / 1024:.1f} KiB")
    finally:
        server.stop()

    streaming = streaming_version(args.streaming_store or store)
    if streaming is not None:
        log(f"Hark with the streaming model {streaming.parent.name}/{streaming.name} ...")
        server = hark_server(streaming.parents[1], gate_dbfs="-inf", default_model=streaming.parent.name)
        try:
            await run_level(server, 4, speech_chunks, 0.5, 1.0)
            best_streaming, levels = await ramp(server, speech_chunks, args.start)
            result["streaming"] = {
                "model": f"{streaming.parent.name}/{streaming.name}",
                "max_streams": best_streaming,
                "levels": [lv.summary() for lv in levels],
            }
            top = next((lv for lv in reversed(levels) if lv.streams == best_streaming and lv.ok), None)
            if top is not None:
                result["streaming"]["cpu_s_per_stream_s"] = top.cpu_per_stream_s
            result["streaming"]["idle_rss_per_stream_bytes"] = await idle_rss_per_stream(server, 200)
        finally:
            server.stop()

    if args.workers_scaling:
        # 1 worker on one core, then 2 workers on two, the load generator on a core of its own.
        if (os.cpu_count() or 1) < 3:
            result["workers"] = {"skipped": "needs 3 cores (2 for the server, 1 for the load); this machine has "
                                 f"{os.cpu_count()}"}  # fmt: skip
            log(f"    workers: {result['workers']['skipped']}")
        else:
            os.sched_setaffinity(0, {2})
            result["workers"] = {}
            for n, cores in ((1, "0"), (2, "0,1")):
                log(f"Hark with {n} worker(s) on cores {cores} ...")
                server = hark_workers(store, n, cores, gate_dbfs="-inf")
                try:
                    await run_level(server, 8, speech_chunks, 1.0, 1.0)
                    best_n, levels = await ramp(server, speech_chunks, args.start)
                    result["workers"][str(n)] = {"max_streams": best_n, "levels": [lv.summary() for lv in levels]}
                finally:
                    server.stop()
            one, two = result["workers"]["1"]["max_streams"], result["workers"]["2"]["max_streams"]
            result["workers"]["scaling"] = two / one if one else None
            os.sched_setaffinity(0, {CLIENT_CORE})

    if args.gate_setting:
        # Max-streams ramps are too noisy on a shared machine to show a difference of tens of percent, so
        # gating is compared by server CPU per stream-second at one fixed load, alternating on and off.
        n = max(8, best // 2)
        log(f"Hark on speech with 50% silence, gating off vs on, {n} streams, CPU per stream-second ...")
        servers = {"off": hark_server(store, gate_dbfs="-inf"), "on": hark_server(store)}
        gating: dict[str, Any] = {"streams": n, "off": [], "on": []}
        try:
            for s in servers.values():
                await run_level(s, 4, realistic_chunks, 0.5, 1.0)
            for _ in range(2 if quick else 3):
                for label, s in servers.items():
                    lv = await run_level(s, n, realistic_chunks, warmup, seconds)
                    gating[label].append(lv.summary())
                    log(f"    gating {label}: {lv.summary()}")
                    await asyncio.sleep(0.5)
        finally:
            for s in servers.values():
                s.stop()
        for label in ("off", "on"):
            gating[f"{label}_cpu_s_per_stream_s"] = float(np.median([x["cpu_s_per_stream_s"] for x in gating[label]]))
        result["gating"] = gating

    if MLSERVER_PY.exists() and not args.no_mlserver:
        log("MLServer peer (adaptive batching, one OIP request per stream per hop) ...")
        result["mlserver"] = await mlserver_peer(version_dir, manifest, warmup, seconds, steps, args.cap, log)

    if OWW_PY.exists() and not args.no_mlserver:
        log("openWakeWord CPU per stream-second (hey_jarvis, onnx, 80 ms chunks) ...")
        out = await asyncio.create_subprocess_exec(
            "taskset", "-c", str(SERVER_CORE), str(OWW_PY), str(Path(__file__).resolve().parent / "oww_cost.py"),
            str(CACHE / "speech_25.npy"), "8", "5" if quick else "15", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, _ = await out.communicate()
        with contextlib.suppress(ValueError, IndexError):
            result["openwakeword"] = json.loads(stdout.decode().strip().splitlines()[-1])
            log(f"    {result['openwakeword']}")

    for name, start_server, first in (("naive", naive_server, 4), ("floor", floor_server, args.start)):
        log(f"{name} server ...")
        server = start_server(version_dir)
        try:
            await run_level(server, 2, speech_chunks, 0.5, 1.0)
            best_other, levels = await ramp(server, speech_chunks, first)
            result[name] = {"max_streams": best_other, "levels": [lv.summary() for lv in levels]}
            top = next((lv for lv in reversed(levels) if lv.streams == best_other and lv.ok), None)
            if top is not None:
                result[name]["cpu_s_per_stream_s"] = top.cpu_per_stream_s
        finally:
            server.stop()
    if floor_cpu := result["floor"].get("cpu_s_per_stream_s"):
        # The most streams a Python gRPC server could hold: transport cost plus the model's, nothing else.
        result["floor"]["ceiling_streams"] = 1 / (floor_cpu + windows_per_stream_s / rates[1])
    if tmp is not None:
        tmp.cleanup()
    return result


def table(r: dict[str, Any]) -> str:
    """The README table: each figure, its baseline from the same run, the ratio."""
    h = r["hark"]
    best = h["max_streams"]
    raw = r["raw_ort"]
    naive = r["naive"]["max_streams"]
    rows = [
        ("Max real-time streams, one server core (p99 ≤ 50 ms)", f"{best}", "", ""),
        (
            "Limit: raw onnxruntime, 1 thread, batch 1 → streams",
            f"{raw['batch1_streams']:.0f}",
            "Hark / limit",
            f"{best / raw['batch1_streams']:.2f}" if raw["batch1_streams"] else "n/a",
        ),
        (
            f"Limit: raw onnxruntime, 1 thread, batch {raw['best_batch']} → streams",
            f"{raw['best_streams']:.0f}",
            "Hark / limit",
            f"{best / raw['best_streams']:.3f}" if raw["best_streams"] else "n/a",
        ),
        (
            "Naive server (librosa per hop, ORT per window)",
            f"{naive}",
            "Hark / naive",
            f"{best / naive:.1f}x" if naive else "n/a",
        ),
    ]
    if (st := r.get("streaming")) and st.get("max_streams"):
        rows.append(
            (
                f"Streaming model ({st['model']}): max streams, one server core",
                f"{st['max_streams']}",
                "streaming / windowed",
                f"{st['max_streams'] / best:.2f}x" if best else "n/a",
            )
        )
        if "cpu_s_per_stream_s" in st and "cpu_s_per_stream_s" in h:
            rows.append(
                (
                    "Streaming model: server CPU ms per stream-second",
                    f"{1000 * st['cpu_s_per_stream_s']:.2f}",
                    "windowed's",
                    f"{1000 * h['cpu_s_per_stream_s']:.2f}",
                )
            )
            if floor_cpu := r.get("floor", {}).get("cpu_s_per_stream_s"):
                rows.append(
                    (
                        "Streaming model: server CPU per stream-second against the transport floor's",
                        f"{1000 * st['cpu_s_per_stream_s']:.2f} ms",
                        "streaming / floor, CPU",
                        f"{st['cpu_s_per_stream_s'] / floor_cpu:.1f}x",
                    )
                )
        if "idle_rss_per_stream_bytes" in st:
            rows.append(
                (
                    "Streaming model: RSS per idle stream (200 open), its state included",
                    f"{st['idle_rss_per_stream_bytes'] / 1024:.1f} KiB",
                    "",
                    "",
                )
            )
    if (wk := r.get("workers")) and "scaling" in wk:
        rows.append(
            (
                "Streams held by 1 worker on 1 core / 2 workers on 2 cores (load on a third)",
                f"{wk['1']['max_streams']} / {wk['2']['max_streams']}",
                "2 workers / 1 worker",
                f"{wk['scaling']:.2f}x" if wk["scaling"] else "n/a",
            )
        )
    for share in (50, 90):
        if lv := h.get(f"at_{share}pct"):
            rows.append(
                (
                    f"Latency at {share}% load ({lv['streams']} streams) p50 / p95 / p99 ms",
                    f"{lv['p50_ms']:.1f} / {lv['p95_ms']:.1f} / {lv['p99_ms']:.1f}",
                    "errors",
                    str(lv["errors"]),
                )
            )
    if (ml := r.get("mlserver")) and "max_streams" in ml:
        n = ml["max_streams"]
        rows.append(
            (
                "MLServer, adaptive batching, OIP request per hop",
                f"{n}",
                "Hark / MLServer",
                f"{best / n:.1f}x" if n else "n/a",
            )
        )
        if ml.get("cpu_s_per_stream_s") and h.get("cpu_s_per_stream_s"):
            rows.append(
                (
                    "MLServer CPU per stream-second (at its max)",
                    f"{ml['cpu_s_per_stream_s'] * 1000:.2f} ms",
                    "MLServer / Hark",
                    f"{ml['cpu_s_per_stream_s'] / h['cpu_s_per_stream_s']:.1f}x",
                )
            )
    if (oww := r.get("openwakeword")) and h.get("cpu_s_per_stream_s"):
        rows.append(
            (
                "openWakeWord 0.5.1 CPU per stream-second (80 ms chunks, one wake word)",
                f"{oww['cpu_s_per_stream_s'] * 1000:.2f} ms",
                "openWakeWord / Hark",
                f"{oww['cpu_s_per_stream_s'] / h['cpu_s_per_stream_s']:.1f}x",
            )
        )
    naive_cpu = r["naive"].get("cpu_s_per_stream_s")
    if "cpu_s_per_stream_s" in h:
        rows.append(
            (
                "Server CPU per stream-second (at max load)",
                f"{h['cpu_s_per_stream_s'] * 1000:.2f} ms",
                f"naive: {naive_cpu * 1000:.2f} ms" if naive_cpu else "",
                f"{naive_cpu / h['cpu_s_per_stream_s']:.1f}x less" if naive_cpu else "",
            )
        )
        cpu_streams = 1 / h["cpu_s_per_stream_s"]
        rows.append(
            (
                "Streams one core's CPU would carry (1 / CPU per stream-second)",
                f"{cpu_streams:.0f}",
                "Hark / raw ORT batch 1",
                f"{cpu_streams / raw['batch1_streams']:.3f}" if raw["batch1_streams"] else "n/a",
            )
        )
    if (fl := r.get("floor")) and fl.get("cpu_s_per_stream_s") and "cpu_s_per_stream_s" in h:
        rows.append(
            (
                "Transport floor: gRPC server doing no work, CPU per stream-second (max streams)",
                f"{fl['cpu_s_per_stream_s'] * 1000:.2f} ms ({fl['max_streams']})",
                "Hark / floor, CPU",
                f"{h['cpu_s_per_stream_s'] / fl['cpu_s_per_stream_s']:.1f}x",
            )
        )
        rows.append(
            (
                "Ceiling for a Python gRPC server: 1 / (floor + raw ORT batch 1 CPU per stream-second)",
                f"{fl['ceiling_streams']:.0f}",
                "Hark (by CPU) / ceiling",
                f"{1 / h['cpu_s_per_stream_s'] / fl['ceiling_streams']:.2f}",
            )
        )
    if "rss_mib_at_max" in h:
        rows.append(("Server RSS at max load", f"{h['rss_mib_at_max']:.0f} MiB", "", ""))
    rows.append(
        (
            f"RSS per idle stream ({h['idle_streams_measured']} open)",
            f"{h['idle_rss_per_stream_bytes'] / 1024:.1f} KiB",
            "",
            "",
        )
    )
    if g := r.get("gating"):
        on, off = g["on_cpu_s_per_stream_s"], g["off_cpu_s_per_stream_s"]
        rows.append(
            (
                f"CPU per stream-second, speech with 50% silence ({g['streams']} streams): gating on / off",
                f"{on * 1000:.2f} / {off * 1000:.2f} ms",
                "streams per core, on / off",
                f"{off / on:.2f}x" if on else "n/a",
            )
        )
    lines = [
        f"Date {r['date']}, {r['mode']} run, model `{r['model']}`, machine: {r['machine']['cpu']}, "
        f"{r['machine']['cores']} cores (shared; load average at start {r['machine']['loadavg_at_start']}).",
        "",
        "| Figure | Value | Compared with | Ratio |",
        "| --- | --- | --- | --- |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Hark streaming benchmark (see the module docstring).")
    parser.add_argument("--quick", action="store_true", help="short levels, fewer steps: under 2 minutes")
    parser.add_argument("--store", type=Path, default=None, help="model store (default: model_store/, else tiny)")
    parser.add_argument("--start", type=int, default=32, help="first load level (streams)")
    parser.add_argument("--cap", type=int, default=4096, help="highest load level tried")
    parser.add_argument("--no-gating", dest="gate_setting", action="store_false", help="skip gating on/off")
    parser.add_argument("--no-mlserver", action="store_true", help="skip the MLServer peer (loadtest/.venv-mlserver)")
    parser.add_argument(
        "--streaming-store",
        type=Path,
        default=None,
        help="ramp the streaming model of this store (default: the --store's own streaming model, if it has one)",
    )
    parser.add_argument(
        "--workers-scaling", action="store_true", help="also ramp 1 and 2 workers (needs 3 cores: 2 server, 1 load)"
    )
    parser.add_argument("--seconds", type=float, default=None, help="seconds measured per load level (10; quick 2.5)")
    parser.add_argument("--steps", type=int, default=None, help="bisection steps after the doubling (4; quick 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    speech_cached = all((CACHE / f"speech_{share}.npy").exists() for share in (25, 50))
    if shutil.which("taskset") is None or (shutil.which("espeak-ng") is None and not speech_cached):
        print(f"needs taskset (util-linux), and espeak-ng unless {CACHE} holds the speech", file=sys.stderr)
        return 2
    if args.gate_setting:
        from hark.config import Settings

        args.gate_setting = "gate_dbfs" in Settings.model_fields
    # SIGTERM unwinds like Ctrl-C, so the servers this run started are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = asyncio.run(bench(args))
    text = table(result)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = result["date"].replace(":", "").replace("-", "")[:15]
    (args.out / f"bench-{stamp}-{result['mode']}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"bench-{stamp}-{result['mode']}.md").write_text(text + "\n")
    (args.out / "latest.md").write_text(text + "\n")
    print(f"\nwritten to {args.out}/bench-{stamp}-{result['mode']}.{{md,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
