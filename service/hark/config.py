"""Every server setting in one place: environment variables with the ``HARK_`` prefix, or a file.

Precedence: explicit arguments (the CLI's ``--host``/``--port``), then ``HARK_*`` environment variables,
then the file named by ``HARK_CONFIG_FILE`` (JSON), then the defaults below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: service/hark/config.py


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HARK_", extra="forbid")

    # Network
    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted.")
    websocket_port: int = Field(
        -1,
        ge=-1,
        le=65535,
        description="Port of the WebSocket stream protocol (/v1/stream) and the browser page (/), on host; "
        "0 picks a free one, -1 = off.",
    )
    oip_http_port: int = Field(
        -1,
        ge=-1,
        le=65535,
        description="Port of the Open Inference Protocol (KServe v2) REST routes (/v2/...), on host; "
        "0 picks a free one, -1 = off. Its gRPC service is always on the gRPC port.",
    )

    # Models
    model_store: Path = Field(REPO_ROOT / "model_store", description="Root of the versioned model store.")
    default_model: str = Field("", description="Model for requests that name none; empty = first by name.")
    reload_interval_s: float = Field(5.0, ge=0.0, description="How often the store is rescanned; 0 = never.")
    intra_op_threads: int = Field(1, ge=1, le=64, description="onnxruntime threads per inference call.")
    inference_workers: int = Field(1, ge=1, le=64, description="Threads that run inference batches.")
    workers: int = Field(
        1, ge=0, le=256, description="Server processes sharing the port (hark serve --workers); 0 = the usable cores."
    )

    # Batching
    # 4: measured best for the bundled DS-CNN on one core (loadtest/README.md): onnxruntime's windows per
    # second peak at batch 2 and fall beyond it, while each batch costs one hand-off to the inference thread.
    max_batch: int = Field(4, ge=1, le=1024, description="Most windows in one inference batch.")
    max_delay_ms: float = Field(2.0, ge=0.0, description="Longest a window waits for a batch to fill.")
    inline_inference: bool = Field(
        True,
        description="Run inference batches on the event loop, one per loop turn, no worker thread "
        "(0.84x the CPU per stream-second: loadtest/ab.py).",
    )

    # Streams
    max_streams: int = Field(1000, ge=1, description="Concurrent streams before RESOURCE_EXHAUSTED.")
    max_chunk_bytes: int = Field(1024 * 1024, ge=2, description="Largest audio chunk accepted.")
    max_stream_s: float = Field(3600.0, gt=0, description="Longest stream, in seconds of audio.")
    idle_timeout_s: float = Field(
        30.0, gt=0, description="A stream silent on the wire, or whose responses go unread, this long is ended."
    )

    # Hostile clients (README "Reliability and security"): what one client, or a flood, can hold
    max_connections: int = Field(
        512, ge=1, description="Open client connections before new ones are refused (bounds file descriptors)."
    )
    # 256: at 1,024 a rapid-reset flood on one connection made gRPC cancel calls starting on other
    # connections (the 30 s soak); at 256 it did not. Envoy opens more upstream connections at the limit.
    max_streams_per_connection: int = Field(
        256, ge=1, description="Concurrent calls on one HTTP/2 connection (its MAX_CONCURRENT_STREAMS)."
    )
    # Behind Envoy every client shares a few upstream connections: wide by default; lower it when clients
    # connect directly.
    max_streams_per_client: int = Field(
        1000, ge=1, description="Concurrent streams and clips per connection and per bearer token."
    )
    stream_window_bytes: int = Field(
        64 * 1024,
        ge=16 * 1024,
        description="HTTP/2 flow-control window of each call: what a client can send that the server has not "
        "asked for yet. Larger chunks still arrive, in several round trips.",
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="Time a Classify request has to arrive whole, once admitted."
    )
    # 2: a 4 MB clip (125 s at 16 kHz) costs about 32 MiB of RSS at peak while it is received, decoded,
    # featurised and scored (48-52 MiB before its windows became views of its frames).
    max_clip_calls: int = Field(
        2, ge=1, description="Concurrent Classify calls (their own budget, apart from the live streams)."
    )
    # 2: each runs as fast as the model allows, with the capacity live streams leave (the batcher's bulk queue).
    max_fast_streams: int = Field(
        2,
        ge=1,
        description="Concurrent fast streams (StreamConfig.fast, hark stream --fast): files sent as fast as "
        "the server reads them, served apart from live streams like Classify.",
    )
    audio_budget_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        description="Memory for stream audio in flight (chunks being decoded and scored); full = RESOURCE_EXHAUSTED.",
    )
    clip_budget_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        description="Memory for Classify clips and fast streams' chunks in flight, apart from the live streams'; "
        "full = RESOURCE_EXHAUSTED.",
    )
    max_realtime_factor: float = Field(
        4.0,
        ge=0.0,
        description="How much faster than real time a live stream may send, after its burst; 0 = unlimited "
        "(fast streams are not paced).",
    )
    realtime_burst_s: float = Field(
        30.0, ge=0.0, description="Seconds of audio a stream may send at any speed before max_realtime_factor applies."
    )
    # gRPC core has no channel argument that answers an RST_STREAM flood with GOAWAY (README "Reliability and
    # security"); a bounded connection age is the one of its limits that ends such a connection with GOAWAY.
    max_connection_age_s: float = Field(
        300.0,
        gt=0,
        description="A client connection older than this (+-10 % jitter) gets GOAWAY: new calls go to a new "
        "connection, running ones finish (for up to max_stream_s). Ends a rapid-reset flood's connection.",
    )
    max_other_calls: int = Field(
        256, ge=1, description="Concurrent calls that are not classification (health watches, reflection)."
    )

    # Security (service/security.py): TLS, mutual TLS, bearer tokens; all off by default
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain; with tls_key_file the port is TLS only."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."
    )
    auth_tokens_file: Path | None = Field(
        None, description="Accepted bearer tokens, one per line ('#' comments); setting it requires a token."
    )
    auth_tokens: SecretStr = Field(
        SecretStr(""), description="Accepted bearer tokens, comma-separated; any token here requires one."
    )
    auth_exempt_health: bool = Field(True, description="Health checks need no token (load balancers, kubelet).")
    auth_exempt_reflection: bool = Field(False, description="Server reflection (grpcurl) needs no token.")
    debug_capture_dir: Path | None = Field(
        None, description="Debugging only: write each stream's first audio here as WAV (100 files at most)."
    )
    debug_capture_max_bytes: int = Field(
        320_000, ge=0, description="PCM bytes captured per stream when debug_capture_dir is set."
    )

    # Postprocessing: one spoken word, one event
    smoothing_windows: int = Field(3, ge=1, le=50, description="Hops averaged before thresholding.")
    threshold: float = Field(
        0.6,
        gt=0.0,
        le=1.0,
        description="Smoothed score that raises an event, for classes without a threshold in the version's manifest.",
    )
    release_threshold: float = Field(0.3, ge=0.0, le=1.0, description="Score below which a class re-arms.")
    refractory_s: float = Field(1.0, ge=0.0, description="Quiet time after an event for the same class.")
    holdoff_s: float = Field(
        0.3,
        ge=0.0,
        description="Once an event's class falls below release_threshold, other classes stay quiet this long "
        "(the tail of a word must not read as another word: 'stop' then 'up').",
    )
    gate_dbfs: float | None = Field(
        -60.0,
        description="Energy gate: a stream window whose loudest 10 ms frame is below this level (dBFS) is scored "
        "as silence without a model call (WindowScores.gated); -inf (or null in the config file) = off.",
    )

    # Metrics, drift and control-set checks
    metrics_host: str = Field("127.0.0.1", description="Address the Prometheus /metrics HTTP server binds.")
    metrics_port: int = Field(
        9464, ge=-1, le=65535, description="Port of /metrics and POST /control-check; 0 picks a free one, -1 = off."
    )
    drift_window_s: float = Field(
        300.0, gt=0.0, description="Time constant of the live drift statistics (exponentially weighted)."
    )
    control_interval_s: float = Field(
        3600.0, ge=0.0, description="How often each version's control set runs through the live path; 0 = never."
    )

    # Lifecycle and logs
    shutdown_grace_s: float = Field(10.0, ge=0.0, description="Time running streams get to finish on SIGTERM.")
    log_format: Literal["auto", "json", "console"] = Field("auto", description="auto: console on a TTY, else JSON.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Settings from the optional ``HARK_CONFIG_FILE``, the environment, then ``overrides``."""
        file_values: dict[str, Any] = {}
        if path := os.environ.get("HARK_CONFIG_FILE"):
            file_values = json.loads(Path(path).read_text())
        env_values = cls().model_dump(exclude_unset=True)
        return cls(**{**file_values, **env_values, **{k: v for k, v in overrides.items() if v is not None}})
