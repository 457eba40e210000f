"""The server process: load the store, start the transports over one data plane, reload, drain, stop.

Every transport is a thin adapter over :class:`~hark.serving.pipeline.DataPlane`; this module only wires
them together and owns the lifecycle: health, reflection, the model-reload and control-check timers,
graceful shutdown on SIGTERM/SIGINT, a store reload on SIGHUP and a status line on SIGUSR1.

Run it with ``python -m hark.server`` (settings from ``HARK_*``) or through the CLI's ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hark.config import Settings
from hark.core.model_store import ModelStore, RefreshReport
from hark.logging import configure_logging, get_logger
from hark.process import connection_limit, open_fds, raise_fd_limit, rss_bytes
from hark.security import SecurityError, TokenVerifier, load_tokens, tls_mode
from hark.serving.admission import Admission
from hark.serving.batcher import BatcherPool
from hark.serving.capture import AudioCapture
from hark.serving.control import Controller
from hark.serving.metrics import HarkMetrics, MetricsServer
from hark.serving.pipeline import DataPlane
from hark.transports.grpc.logs import quiet_metadata_errors
from hark.transports.grpc.options import server_options
from hark.transports.grpc.security import (
    CallLimitInterceptor,
    TokenAuthInterceptor,
    server_credentials,
    server_interceptors,
)
from hark.transports.grpc.servicer import SERVICE_NAME, ClassifierService, add_to_server
from hark.transports.http_security import server_ssl_context, token_verifier
from hark.transports.oip.grpc_service import SERVICE_NAME as OIP_SERVICE_NAME
from hark.transports.oip.grpc_service import InferenceService
from hark.transports.oip.grpc_service import add_to_server as add_oip_to_server
from hark.transports.oip.plane import OipPlane
from hark.transports.oip.rest import OipRest
from hark.transports.websocket.server import WebSocketTransport

__all__ = ["SERVICE_NAME", "RunningServer", "StartupError", "serve", "start_server"]

log = get_logger("hark.server")


class StartupError(RuntimeError):
    """The server cannot start (no valid model, port taken); the message says what to fix."""


@dataclass
class RunningServer:
    """A started server. ``stop`` drains it; ``reload`` rescans the store now (the timer does it too)."""

    settings: Settings
    server: grpc.aio.Server
    store: ModelStore
    pool: BatcherPool
    plane: DataPlane
    admission: Admission
    servicer: ClassifierService
    health: health.aio.HealthServicer
    host: str
    port: int
    metrics: HarkMetrics
    controller: Controller
    metrics_server: MetricsServer | None = None
    websocket: WebSocketTransport | None = None  # HARK_WEBSOCKET_PORT
    oip_rest: OipRest | None = None  # HARK_OIP_HTTP_PORT
    _reload_task: asyncio.Task[None] | None = None
    _control_task: asyncio.Task[None] | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    async def reload(self) -> RefreshReport:
        """Rescan the store in a worker thread, log what changed, retire batchers of vanished versions."""
        report = await asyncio.to_thread(self.store.refresh)
        _log_report(report)
        self.metrics.on_refresh(report)
        models = self.store.models()
        self.pool.sweep(m for versions in models.values() for m in versions.values())
        if not self._stopping:
            status = health_pb2.HealthCheckResponse.SERVING if models else health_pb2.HealthCheckResponse.NOT_SERVING
            if not models:
                log.error("no valid model left in the store", store=str(self.store.root))
            for service in ("", SERVICE_NAME):
                await self.health.set(service, status)
        return report

    async def _reload_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except Exception:
                log.exception("model store refresh failed")

    async def stop(self, grace: float | None = None) -> None:
        """Health to NOT_SERVING, refuse new classification calls with UNAVAILABLE, give running ones
        ``grace`` seconds (``settings.shutdown_grace_s`` when None), then close the server."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down", grace_s=grace, streams=self.admission.active_streams)
        # Health first, so load balancers stop sending; the server keeps answering health checks and
        # model queries while the classification calls already running finish.
        await self.health.enter_graceful_shutdown()
        for task in (self._reload_task, self._control_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not await self.admission.drain(grace):
            log.warning("grace period over; cancelling running calls", calls=self.admission.active_calls)
        for transport in (self.websocket, self.oip_rest):  # after the drain: their streams have ended
            if transport is not None:
                await transport.close()
        # A short tail for calls that are not classification (health watches, reflection); 0 when the
        # grace period is already spent.
        await self.server.stop(min(1.0, grace) if self.admission.active_calls == 0 else 0)
        await self.pool.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
        log.info("stopped")
        self._stopped.set()

    def status(self) -> dict[str, object]:
        """What SIGUSR1 logs: the load and the resources the process holds now."""
        return {
            "streams": self.admission.active_streams,
            "clips": self.admission.active_clips,
            "fast_streams": self.admission.active_fast,
            "calls": self.admission.active_calls,
            "audio_in_flight_bytes": self.plane.budget.used,
            "clips_in_flight_bytes": self.plane.clip_budget.used,
            "rss_bytes": rss_bytes(),
            "open_fds": open_fds(),
            "models": {name: sorted(v) for name, v in self.store.models().items()},
            "draining": self._stopping,
        }

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def _log_report(report: RefreshReport) -> None:
    for name, version in report.loaded:
        log.info("model version loaded", model=name, version=version)
    for path, reason in report.refused.items():
        log.warning("model version refused", path=path, reason=reason)
    for name, version in report.removed:
        log.info("model version removed", model=name, version=version)


async def start_server(settings: Settings, *, reuse_port: bool = False) -> RunningServer:
    """Load the store, bind, start serving; raise :class:`StartupError` when that is impossible.

    ``reuse_port`` is for the workers of ``hark serve --workers N`` (hark.serving.workers), which share one
    port; a server on its own must fail on a taken port."""
    configure_logging(settings.log_format, settings.log_level)
    quiet_metadata_errors()
    store = ModelStore(
        settings.model_store,
        default_model=settings.default_model,
        intra_op_threads=settings.intra_op_threads,
        warmup_batch=settings.max_batch,
    )
    metrics = HarkMetrics(store, drift_window_s=settings.drift_window_s, threshold=settings.threshold)
    try:  # before any model loads: a security setting that cannot work stops the start at once
        interceptors = server_interceptors(settings, on_refusal=metrics.error)
        credentials = server_credentials(settings)
        http_ssl = server_ssl_context(settings)
        http_verifier = token_verifier(settings)
    except SecurityError as e:
        raise StartupError(str(e)) from e
    report = await asyncio.to_thread(store.refresh)
    _log_report(report)
    metrics.on_refresh(report)
    models = store.models()
    if not models:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in report.refused.items())
        raise StartupError(
            f"no valid model version in {settings.model_store}"
            + (f" (refused: {reasons})" if reasons else " (the store is empty or missing)")
        )
    if settings.default_model and settings.default_model not in models:
        raise StartupError(
            f"default model {settings.default_model!r} has no valid version in {settings.model_store} "
            f"(available: {', '.join(sorted(models))})"
        )

    classification = (f"/{SERVICE_NAME}/", f"/{OIP_SERVICE_NAME}/")  # bounded by Admission instead
    interceptors.append(CallLimitInterceptor(settings.max_other_calls, classification, on_refusal=metrics.error))
    fd_limit = raise_fd_limit()
    connections = connection_limit(settings.max_connections, fd_limit)
    if connections < settings.max_connections:
        log.warning(
            "fewer connections than max_connections: the descriptor limit is low",
            fd_limit=fd_limit,
            max_connections=connections,
        )
    server = grpc.aio.server(
        options=server_options(settings, connections, reuse_port=reuse_port), interceptors=interceptors
    )
    pool = BatcherPool(settings, observers=metrics.batch_observers)
    plane = DataPlane(settings, store, pool, metrics, AudioCapture.from_settings(settings))
    admission = Admission(
        settings.max_streams,
        max_clips=settings.max_clip_calls,
        max_fast=settings.max_fast_streams,
        max_per_client=settings.max_streams_per_client,
    )
    servicer = ClassifierService(plane, admission)
    metrics.active_streams.set_function(lambda: admission.active_streams)
    controller = Controller(plane)
    add_to_server(servicer, server)
    oip = OipPlane(plane, admission)
    add_oip_to_server(InferenceService(oip, metrics, settings.idle_timeout_s, settings.request_timeout_s), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, OIP_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    target = f"{settings.host}:{settings.port}"
    try:
        port = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    except RuntimeError as e:
        raise StartupError(f"cannot listen on {target}: {e}") from e
    if port == 0:
        raise StartupError(f"cannot listen on {target}")
    log.info(
        "transport security",
        tls=tls_mode(settings),
        token_auth=any(isinstance(i, TokenAuthInterceptor) for i in interceptors),
        debug_capture=str(settings.debug_capture_dir) if settings.debug_capture_dir else None,
    )
    metrics_server = None
    if settings.metrics_port >= 0:
        try:
            metrics_server = MetricsServer(
                metrics,
                settings.metrics_host,
                settings.metrics_port,
                controller.http_handler(asyncio.get_running_loop()),
                verify=TokenVerifier(tokens).verify if (tokens := load_tokens(settings)) else None,
            )
        except OSError as e:
            await server.stop(0)
            await pool.close()
            raise StartupError(
                f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {e} "
                "(set HARK_METRICS_PORT to a free port, 0 for any, -1 to disable)"
            ) from e
        metrics_server.start()
    await server.start()
    websocket, oip_rest = None, None
    try:
        if settings.websocket_port >= 0:
            websocket = WebSocketTransport(plane, admission, http_verifier)
            await websocket.start(settings.host, settings.websocket_port, http_ssl)
        if settings.oip_http_port >= 0:
            oip_rest = OipRest(
                oip,
                metrics,
                http_verifier,
                settings.auth_exempt_health,
                settings.max_message_bytes,
                settings.request_timeout_s,
            )
            await oip_rest.start(settings.host, settings.oip_http_port, http_ssl)
    except OSError as e:
        for transport in (websocket, oip_rest):
            if transport is not None:
                await transport.close()
        await server.stop(0)
        await pool.close()
        if metrics_server is not None:
            metrics_server.stop()
        raise StartupError(
            f"cannot serve the WebSocket or OIP REST port on {settings.host}: {e} "
            "(set HARK_WEBSOCKET_PORT / HARK_OIP_HTTP_PORT to a free port, 0 for any, -1 to disable)"
        ) from e
    running = RunningServer(
        settings=settings,
        server=server,
        store=store,
        pool=pool,
        plane=plane,
        admission=admission,
        servicer=servicer,
        health=health_servicer,
        host=settings.host,
        port=port,
        metrics=metrics,
        controller=controller,
        metrics_server=metrics_server,
        websocket=websocket,
        oip_rest=oip_rest,
    )
    if settings.control_interval_s > 0:
        running._control_task = asyncio.get_running_loop().create_task(
            controller.run_forever(settings.control_interval_s), name="control-check"
        )
    if settings.reload_interval_s > 0:
        running._reload_task = asyncio.get_running_loop().create_task(
            running._reload_forever(settings.reload_interval_s), name="model-reload"
        )
    return running


# ``on_started(port, metrics_port)``: how a worker tells its supervisor it serves (hark.serving.workers).
StartedHook = Callable[[int, int], None]


async def _serve(settings: Settings, reuse_port: bool = False, on_started: StartedHook | None = None) -> int:
    running = await start_server(settings, reuse_port=reuse_port)
    if on_started is not None:
        on_started(running.port, running.metrics_server.port if running.metrics_server else -1)
    log.info(
        f"listening on {running.address}",
        address=running.address,
        models=sorted(running.store.models()),
        metrics=running.metrics_server.url + "/metrics" if running.metrics_server else None,
        websocket=running.websocket.port if running.websocket else None,
        oip_http=running.oip_rest.port if running.oip_rest else None,
    )
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals_seen = 0
    forced: set[asyncio.Task[None]] = set()

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("signal received", signal=sig.name)
            stop_requested.set()
        else:  # a second signal: do not wait for the grace period
            log.warning("second signal: cancelling running streams now", signal=sig.name)
            forced.add(loop.create_task(running.server.stop(0)))

    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        log.info("signal received: reloading the model store", signal="SIGHUP")

        async def reload() -> None:
            try:
                await running.reload()
            except Exception:
                log.exception("model store refresh failed")

        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def on_status() -> None:
        log.info("status", signal="SIGUSR1", **running.status())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    loop.add_signal_handler(signal.SIGUSR1, on_status)
    try:
        await stop_requested.wait()
        await running.stop(settings.shutdown_grace_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
    return 0


def serve(
    settings: Settings, *, reuse_port: bool = False, on_started: StartedHook | None = None, worker: int | None = None
) -> int:
    """Run the server on uvloop until SIGTERM/SIGINT; return the process exit code (0 after a clean drain)."""
    configure_logging(settings.log_format, settings.log_level)
    if worker is not None:
        import structlog

        structlog.contextvars.bind_contextvars(worker=worker)
    try:
        return uvloop.run(_serve(settings, reuse_port, on_started))
    except StartupError as e:
        log.error("cannot start", error=str(e))
        return 1


def main() -> int:
    """``python -m hark.server``: settings from ``HARK_*`` and ``HARK_CONFIG_FILE`` (``HARK_WORKERS`` included)."""
    settings = Settings.load()
    from hark.serving.workers import default_workers, serve_workers

    workers = settings.workers or default_workers()
    return serve_workers(settings, workers) if workers > 1 else serve(settings)


if __name__ == "__main__":
    sys.exit(main())
