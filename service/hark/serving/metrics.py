"""Every Prometheus metric of Hark, defined in this one module, and the HTTP server that exposes them.

Naming follows Prometheus conventions: the ``hark_`` prefix, base units (``_seconds``, ``_bytes``),
``_total`` on counters. Labels are bounded: ``model``, ``version``, ``stage``, ``class``, ``band``,
``code``, ``rpc`` — never a stream id, whose values would grow without limit.

Each server owns a :class:`HarkMetrics` with its own ``CollectorRegistry``, so several servers in one
process (the tests) never share or double-register a metric.

The hot path touches pre-bound children only: :class:`ModelInstruments` binds one model version's
label values once, so a hop costs a few lock-protected additions, not label lookups. Whatever can be
computed when Prometheus asks is computed then, by collectors: model info comes straight from the
store (so it can never disagree with what serves) and the drift scores from each version's
:class:`~hark.serving.drift.DriftMonitor`.

:class:`MetricsServer` serves ``GET /metrics`` from a thread (a scrape never waits for the event loop)
and ``POST /control-check`` (loopback clients only), which runs the control sets on the server's loop.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from hark.core.model_store import LoadedModel, ModelStore, RefreshReport
from hark.logging import get_logger
from hark.serving.drift import DriftMonitor

FloatArray = npt.NDArray[np.float32]

log = get_logger("hark.metrics")

# The timed stages of a window's way through the server, as ``observe(stage, seconds)`` reports them.
STAGES = ("decode", "frontend", "queue", "inference", "postprocess")
# From tens of microseconds (decode, postprocess) to seconds (a queue under overload).
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LEVEL_BUCKETS = (-90.0, -80.0, -70.0, -60.0, -50.0, -40.0, -30.0, -20.0, -10.0, -3.0, 0.0)

ModelKey = tuple[str, int]

# No ``*_created`` series: Prometheus does not use them, and they would double the series of every counter
# and histogram. (A process-wide switch of prometheus_client; Hark owns every metric in its process.)
disable_created_metrics()  # type: ignore[no-untyped-call]


class HarkMetrics:
    """The metrics of one server. ``store`` feeds the model collector; ``None`` exports no model info."""

    def __init__(
        self,
        store: ModelStore | None = None,
        *,
        drift_window_s: float = 300.0,
        threshold: float = 0.5,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``threshold``: the server's threshold, which makes a multi-label class active for prediction drift
        when the version's manifest gives the class none."""
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.store = store
        self.drift_window_s = drift_window_s
        self.threshold = threshold
        mv = ["model", "version"]
        # Latency
        self.stage_seconds = Histogram(
            "hark_stage_duration_seconds",
            "Time spent per stage: decode, frontend (per chunk), queue (per window), inference (per batch), "
            "postprocess (per window).",
            [*mv, "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency_seconds = Histogram(
            "hark_end_to_end_latency_seconds",
            "From the arrival of the chunk that completed a window to that window's responses being written.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "hark_batch_size", "Windows per inference batch.", mv, buckets=BATCH_BUCKETS, registry=r
        )
        # Traffic
        self.active_streams = Gauge(
            "hark_active_streams",
            "Streams in progress: StreamClassify calls, WebSocket streams, OIP sequences.",
            registry=r,
        )
        self.requests = Counter(
            "hark_requests_total",
            "Classification calls started, by RPC or transport "
            "(StreamClassify, Classify, WebSocketStream, ModelInfer, ModelStreamInfer).",
            ["rpc"],
            registry=r,
        )
        self.errors = Counter(
            "hark_errors_total",
            "Calls Hark ended with a non-OK gRPC status, by status code: the servicer's and its interceptors' "
            "refusals (not client cancellations or deadlines, nor what the transport refuses before Hark sees it).",
            ["code"],
            registry=r,
        )
        self.chunks = Counter(
            "hark_audio_chunks_total", "Audio messages received (stream chunks and Classify clips).", mv, registry=r
        )
        self.bytes = Counter("hark_audio_bytes_total", "PCM bytes received.", mv, registry=r)
        self.audio_seconds = Counter("hark_audio_seconds_total", "Seconds of audio received.", mv, registry=r)
        self.windows = Counter("hark_windows_total", "Windows scored by the model.", mv, registry=r)
        self.events = Counter("hark_events_total", "Events (detections) sent, by class.", [*mv, "class"], registry=r)
        # Input level (the drift gauges come from the collector below)
        self.input_level = Histogram(
            "hark_input_level_dbfs",
            "RMS level of each audio message in dB relative to full scale.",
            mv,
            buckets=LEVEL_BUCKETS,
            registry=r,
        )
        # Models
        self.refused = Counter(
            "hark_model_refused_total", "Model version folders refused by verification.", ["model"], registry=r
        )
        # Control set
        self.control_accuracy = Gauge(
            "hark_control_accuracy",
            "Accuracy on the version's labelled control set, run through the live path.",
            mv,
            registry=r,
        )
        self.control_clips = Gauge("hark_control_clips", "Clips in the last control-set check.", mv, registry=r)
        self.control_timestamp = Gauge(
            "hark_control_last_run_timestamp_seconds", "Unix time of the last control-set check.", mv, registry=r
        )
        self.control_duration = Gauge(
            "hark_control_duration_seconds", "Wall time of the last control-set check.", mv, registry=r
        )
        # Process metrics: CPU, memory, file descriptors, Python GC and version.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        r.register(_ModelCollector(self))
        r.register(_DriftCollector(self))
        self._instruments: dict[ModelKey, ModelInstruments] = {}
        self._lock = threading.Lock()

    # Per model version ------------------------------------------------------------------------------

    def instruments(self, model: LoadedModel) -> ModelInstruments:
        """The bound children and drift monitor of ``model``'s version, made on first use."""
        key = (model.name, model.version)
        found = self._instruments.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._instruments.get(key)
            if found is None:
                found = self._instruments[key] = ModelInstruments(self, model)
            return found

    def batch_observers(self, model: LoadedModel) -> tuple[Callable[[str, float], None], Callable[[int], None]]:
        """The ``(observe, observe_batch)`` hooks the batcher pool gives a model's batcher."""
        inst = self.instruments(model)
        return inst.observe, inst.observe_batch

    def tracked(self) -> list[ModelInstruments]:
        """The versions with instruments now (a snapshot, safe from the scrape thread)."""
        with self._lock:
            return list(self._instruments.values())

    def on_refresh(self, report: RefreshReport) -> None:
        """Count refusals; forget versions that left (their series go) or were rewritten (drift restarts)."""
        for path in report.refused:
            self.refused.labels(_model_of(path)).inc()
        with self._lock:
            for key in report.loaded:
                self._instruments.pop(key, None)  # same counters, a fresh drift window on the new reference
            for key in report.removed:
                self._instruments.pop(key, None)
        for name, version in report.removed:
            labels = {"model": name, "version": str(version)}
            for metric in (
                self.stage_seconds,
                self.latency_seconds,
                self.batch_size,
                self.chunks,
                self.bytes,
                self.audio_seconds,
                self.windows,
                self.events,
                self.input_level,
                self.control_accuracy,
                self.control_clips,
                self.control_timestamp,
                self.control_duration,
            ):
                metric.remove_by_labels(labels)

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def request(self, rpc: str) -> None:
        self.requests.labels(rpc).inc()

    def control_result(self, name: str, version: int, *, accuracy: float, clips: int, duration_s: float) -> None:
        labels = (name, str(version))
        self.control_accuracy.labels(*labels).set(accuracy)
        self.control_clips.labels(*labels).set(clips)
        self.control_duration.labels(*labels).set(duration_s)
        self.control_timestamp.labels(*labels).set(time.time())

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format the scraper asked for: OpenMetrics or the Prometheus text format."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _model_of(path: str) -> str:
    """The model name of a refused ``<root>/<model>/<version>`` folder (the store only yields valid names)."""
    parts = path.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else "unknown"


class ModelInstruments:
    """One version's metric children, bound once, and its drift monitor: what the hot path calls."""

    def __init__(self, metrics: HarkMetrics, model: LoadedModel) -> None:
        m = model.manifest
        labels = (m.name, str(m.version))
        self._stages = {stage: metrics.stage_seconds.labels(*labels, stage) for stage in STAGES}
        self._latency = metrics.latency_seconds.labels(*labels)
        self._batch = metrics.batch_size.labels(*labels)
        self._chunks = metrics.chunks.labels(*labels)
        self._bytes = metrics.bytes.labels(*labels)
        self._audio_seconds = metrics.audio_seconds.labels(*labels)
        self._windows = metrics.windows.labels(*labels)
        self._level = metrics.input_level.labels(*labels)
        # Every class that can fire is bound now, so its series exists (at 0) before its first event.
        background = set(m.background_labels)
        self._events = {c: metrics.events.labels(*labels, c) for c in m.labels if c not in background}
        self.drift = DriftMonitor(m, window_s=metrics.drift_window_s, default_threshold=metrics.threshold)
        self.model = model

    def observe(self, stage: str, seconds: float) -> None:
        """The ``observe(stage, seconds)`` hook of sessions and batchers; unknown stages are ignored."""
        child = self._stages.get(stage)
        if child is not None:
            child.observe(seconds)

    def observe_batch(self, size: int) -> None:
        self._batch.observe(size)

    def chunk(self, nbytes: int) -> None:
        self._chunks.inc()
        self._bytes.inc(nbytes)

    def audio(self, samples: FloatArray, rate: int) -> None:
        """Decoded samples of one message (the session's ``on_audio`` hook): level, clipping, silence."""
        if samples.size:
            self._level.observe(self.drift.observe_audio(samples, rate))
            self._audio_seconds.inc(samples.size / rate)

    def window(self, features: FloatArray, probabilities: FloatArray, events: Iterable[str], arrived: float) -> None:
        """One stream window answered: count it and its events, update drift, time it from ``arrived``."""
        self._windows.inc()
        self.drift.observe_window(features, probabilities)
        for label in events:
            child = self._events.get(label)
            if child is not None:
                child.inc()
        self._latency.observe(time.perf_counter() - arrived)

    def clip(self, nbytes: int, windows: Sequence[FloatArray], probabilities: FloatArray) -> None:
        """One ``Classify`` clip: counted as one message, its windows feed the drift window."""
        self.chunk(nbytes)
        self._windows.inc(len(windows))
        self.drift.observe_windows(windows, probabilities)


# Scrape-time collectors -----------------------------------------------------------------------------


class _ModelCollector(Collector):
    """What the store serves, read at scrape time."""

    def __init__(self, metrics: HarkMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        store = self._metrics.store
        models = store.models() if store is not None else {}
        mv = ["model", "version"]
        info = GaugeMetricFamily(
            "hark_model_info", "A model version being served (value 1), with its sha256.", labels=[*mv, "sha256"]
        )
        loaded = GaugeMetricFamily(
            "hark_model_loaded_timestamp_seconds", "Unix time a served model version was loaded.", labels=mv
        )
        accuracy = GaugeMetricFamily(
            "hark_model_test_accuracy", "Test accuracy recorded by training in the manifest.", labels=mv
        )
        default = GaugeMetricFamily(
            "hark_model_default_version", "The version a request that pins none gets.", labels=["model"]
        )
        count = 0
        for name, versions in sorted(models.items()):
            for number, model in sorted(versions.items()):
                v = str(number)
                count += 1
                info.add_metric([name, v, model.manifest.sha256], 1.0)
                loaded.add_metric([name, v], model.loaded_at)
                test_accuracy = _number(model.manifest.metrics.get("test_accuracy"))
                if test_accuracy is not None:
                    accuracy.add_metric([name, v], test_accuracy)
            if versions:
                default.add_metric([name], float(max(versions)))
        yield info
        yield loaded
        yield accuracy
        yield default
        yield GaugeMetricFamily("hark_models_loaded", "Model versions being served.", value=float(count))


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


class _DriftCollector(Collector):
    """Drift, level and prediction gauges of every version with traffic, computed at scrape time."""

    def __init__(self, metrics: HarkMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        band = GaugeMetricFamily(
            "hark_feature_drift",
            "Standardised mean shift |mu_live - mu_ref| / sigma_ref of one log-Mel band.",
            labels=[*mv, "band"],
        )
        overall = GaugeMetricFamily(
            "hark_feature_drift_overall", "Root mean square over bands of hark_feature_drift.", labels=mv
        )
        frames = GaugeMetricFamily(
            "hark_feature_drift_frames", "Frames in the live drift window (time-decayed weight).", labels=mv
        )
        clipping = GaugeMetricFamily("hark_input_clipping_ratio", "Share of recent samples at full scale.", labels=mv)
        silence = GaugeMetricFamily(
            "hark_input_silence_ratio", "Share of recent 20 ms blocks below -60 dBFS.", labels=mv
        )
        prediction = GaugeMetricFamily(
            "hark_prediction_drift",
            "Total variation distance between the live argmax class shares and the training prior "
            "(multi-label versions: mean over classes of |active share - training share|).",
            labels=mv,
        )
        share = GaugeMetricFamily(
            "hark_prediction_share",
            "Recent share of windows whose most likely class is this one (multi-label versions: in which this "
            "class is active, at or above its threshold).",
            labels=[*mv, "class"],
        )
        prior = GaugeMetricFamily("hark_prediction_prior", "Training prior of the class.", labels=[*mv, "class"])
        for inst in self._metrics.tracked():
            m = inst.model.manifest
            labels = [m.name, str(m.version)]
            s = inst.drift.snapshot()
            frames.add_metric(labels, s.feature_frames)
            if s.band_drift is not None and s.overall_drift is not None:
                overall.add_metric(labels, s.overall_drift)
                for i, d in enumerate(s.band_drift):
                    band.add_metric([*labels, f"{i:02d}"], float(d))
            if s.clipping_ratio is not None:
                clipping.add_metric(labels, s.clipping_ratio)
            if s.silence_ratio is not None:
                silence.add_metric(labels, s.silence_ratio)
            for c, p in zip(m.labels, s.prior, strict=True):
                prior.add_metric([*labels, c], float(p))
            if s.prediction_share is not None and s.prediction_drift is not None:
                prediction.add_metric(labels, s.prediction_drift)
                for c, p in zip(m.labels, s.prediction_share, strict=True):
                    share.add_metric([*labels, c], float(p))
        yield from (band, overall, frames, clipping, silence, prediction, share, prior)


# HTTP -----------------------------------------------------------------------------------------------

# ``handler(query) -> (HTTP status, JSON body)``: what ``POST /control-check`` runs.
ControlHandler = Callable[[dict[str, str]], tuple[int, dict[str, Any]]]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback: the clients allowed to trigger admin actions."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


# Hostile clients: 1,050 half-open requests once held a thread and a descriptor each, for ever. Now a
# request has REQUEST_TIMEOUT_S to arrive (and each read or write as long), and at most MAX_CONNECTIONS are
# served at once; more are closed on accept.
REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32
# ``verify(token) -> bool``: accepts a bearer token for ``/control-check`` from another origin.
TokenCheck = Callable[[str], bool]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = MAX_CONNECTIONS

    def __init__(
        self,
        address: tuple[str, int],
        metrics: HarkMetrics,
        control: ControlHandler | None,
        verify: TokenCheck | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.metrics = metrics
        self.control = control
        self.verify = verify
        self.active = 0
        self.refused = 0
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = self.active >= MAX_CONNECTIONS
            if not full:
                self.active += 1
        if full:
            self.refused += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self.active -= 1

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip nobody needs here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S  # the socket's timeout: a request that stalls is dropped

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            body, content_type = self.server.metrics.exposition(self.headers.get("Accept", ""))
            self._send(200, body, content_type)
        elif path == "/":
            self._send(200, b"Hark metrics: GET /metrics; POST /control-check (loopback only)\n", "text/plain")
        elif path == "/control-check":
            self._json(405, {"error": "use POST /control-check"}, allow="POST")
        else:
            self._json(404, {"error": f"no such path {path}; try /metrics"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/control-check":
            self._json(404, {"error": f"no such path {url.path}"})
            return
        if not is_loopback(self.client_address[0]):
            self._json(403, {"error": "control checks may only be requested from the server's own host"})
            return
        if not self._same_origin_or_token():
            self._json(
                403,
                {"error": "control checks from a web page need the same origin or 'Authorization: Bearer <token>'"},
            )
            return
        if self.server.control is None:
            self._json(503, {"error": "control checks are not available on this server"})
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status, body = self.server.control(query)
        self._json(status, body)

    def _same_origin_or_token(self) -> bool:
        """True for a request no browser page on another origin sent, or one with a valid bearer token.

        Hostile clients: any page open in a browser on the host could POST here (loopback is the browser's
        own host). Browsers mark such requests with ``Origin`` and ``Sec-Fetch-Site``; curl and the CLI send
        neither."""
        token = self.headers.get("Authorization", "")
        if self.server.verify is not None and token.lower().startswith("bearer "):
            return self.server.verify(token[7:].strip())
        origin = self.headers.get("Origin")
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        if origin is None:
            return True
        host = self.headers.get("Host", "")
        name = urlsplit(f"http://{host}").hostname or ""
        if not (name == "localhost" or is_loopback(name)):  # DNS rebinding: a page's own name, pointed here
            return False
        return origin in (f"http://{host}", f"https://{host}")

    def _json(self, status: int, body: dict[str, Any], allow: str = "") -> None:
        self._send(status, (json.dumps(body) + "\n").encode(), "application/json", allow)

    def _send(self, status: int, body: bytes, content_type: str, allow: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # one line per scrape would drown the server's own log


class MetricsServer:
    """``/metrics`` and ``/control-check`` over HTTP, on a thread of their own."""

    def __init__(
        self,
        metrics: HarkMetrics,
        host: str,
        port: int,
        control: ControlHandler | None = None,
        verify: TokenCheck | None = None,
    ) -> None:
        self._httpd = _HTTPServer((host, port), metrics, control, verify)  # binds now: a taken port fails here
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="hark-metrics", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; blocking (up to the 0.1 s poll interval)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
