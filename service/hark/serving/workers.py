"""``hark serve --workers N``: N server processes on one port, one metrics endpoint, one drain.

One Python process serves on one core (the GIL); a machine's other cores need other processes. This
follows gRPC's own multiprocessing pattern: the supervisor reserves the port with ``SO_REUSEPORT`` and
never creates any gRPC object; each worker is a fresh interpreter (``spawn``, so no gRPC or onnxruntime
state crosses a fork) that runs the ordinary server with ``grpc.so_reuseport`` on that port, with its own
model store, batchers and sessions. The kernel spreads new connections over the workers; a connection
(and every stream on it) stays with one worker.

* Metrics: each worker serves its own ``/metrics`` on an ephemeral port of 127.0.0.1 and tells the
  supervisor which; the supervisor's ``/metrics`` (``metrics_host:metrics_port``) scrapes them all and
  serves them as one exposition, every sample labelled ``worker="0".."N-1"`` (bounded: N values), plus
  ``hark_workers`` and ``hark_worker_restarts_total``. ``sum without (worker) (...)`` gives the server.
* Drain: SIGTERM or SIGINT to the supervisor sends SIGTERM to every worker, each drains its streams as a
  single server does (``shutdown_grace_s``), and the supervisor exits 0 once all have exited 0. Workers
  run in their own process group, so a terminal's Ctrl-C reaches the supervisor alone and each worker
  gets exactly one signal.
* Restart: a worker that exits while the supervisor is not stopping (a crash, a kill) is logged,
  counted and started again on the same port, after a pause that grows while it keeps failing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.process import BaseProcess
from typing import Any

from hark.config import Settings
from hark.logging import configure_logging, get_logger

log = get_logger("hark.workers")

READY_TIMEOUT_S = 120.0  # a worker loads and warms every model version before it says it is ready
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
SCRAPE_TIMEOUT_S = 2.0


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity), which is what ``--workers 0`` means."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind ``host:port`` with ``SO_REUSEPORT`` (port 0: a free one) and hold it while workers bind it too.

    The socket never listens, so it takes no connections; holding it keeps the port from being given to
    anyone else while workers come and go.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _worker_main(settings_json: str, index: int, conn: multiprocessing.connection.Connection) -> None:
    """A worker process: the ordinary server on the shared port; tells the supervisor its metrics port."""
    os.setpgrp()  # a terminal's Ctrl-C goes to the supervisor, which forwards one SIGTERM
    _die_with_parent()
    from hark.server import serve  # imported here: grpc is first loaded in the worker, never before a fork

    settings = Settings.model_validate_json(settings_json)

    def on_started(port: int, metrics_port: int) -> None:
        conn.send({"worker": index, "pid": os.getpid(), "port": port, "metrics_port": metrics_port})
        conn.close()

    raise SystemExit(serve(settings, reuse_port=True, on_started=on_started, worker=index))


def _die_with_parent() -> None:
    """SIGTERM this worker once the supervisor is gone (killed with SIGKILL, it cannot drain anyone), so a
    worker is never left serving alone: a daemon thread watches the parent process id."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="hark-parent-watch", daemon=True).start()


@dataclass
class Worker:
    index: int
    process: BaseProcess
    conn: multiprocessing.connection.Connection
    metrics_port: int = -1
    pid: int = 0
    ready: bool = False
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts, watches, restarts and stops the worker processes; serves their metrics as one."""

    def __init__(self, settings: Settings, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.settings = settings
        self.n = workers
        self.port = 0
        self.workers: dict[int, Worker] = {}
        self.restarts = 0
        self.metrics_url = ""
        self._failures: dict[int, int] = {}
        self._stopping = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")
        self._http: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    # Workers ------------------------------------------------------------------------------------------

    def _worker_settings(self) -> str:
        # Workers serve metrics on 127.0.0.1 only; the supervisor's endpoint is the public one.
        metrics_port = 0 if self.settings.metrics_port >= 0 else -1  # none at all when metrics are off
        worker = self.settings.model_copy(
            update={"port": self.port, "metrics_host": "127.0.0.1", "metrics_port": metrics_port}
        )
        return worker.model_dump_json()

    def _start(self, index: int) -> Worker:
        parent, child = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main, args=(self._worker_settings(), index, child), name=f"hark-worker-{index}"
        )
        process.start()
        child.close()
        worker = Worker(index, process, parent)
        self.workers[index] = worker
        return worker

    def _await_ready(self, worker: Worker, timeout: float = READY_TIMEOUT_S) -> bool:
        """Wait for the worker's hello (its metrics port); False if it died or stayed silent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            if worker.conn.poll(0.1):
                try:
                    hello: dict[str, Any] = worker.conn.recv()
                except EOFError:
                    return False
                worker.metrics_port, worker.pid = int(hello["metrics_port"]), int(hello["pid"])
                worker.ready = True
                return True
            if not worker.process.is_alive():
                return False
        return False

    def start(self) -> None:
        """Start every worker and wait until each serves; raise ``RuntimeError`` if one cannot."""
        for index in range(self.n):
            self._start(index)
        for worker in list(self.workers.values()):
            if not self._await_ready(worker):
                self.stop(0.0)
                raise RuntimeError(f"worker {worker.index} did not start (exit code {worker.process.exitcode})")
        if self.settings.metrics_port >= 0:
            self._serve_metrics()

    def watch(self) -> None:
        """Until :meth:`request_stop`: restart any worker that exits."""
        while not self._stopping.is_set():
            sentinels = {w.process.sentinel: w for w in self.workers.values()}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=0.5)
            for sentinel in ready:
                worker = sentinels[sentinel]  # type: ignore[index]
                if self._stopping.is_set():
                    break
                self._restart(worker)

    def _restart(self, worker: Worker) -> None:
        worker.process.join()
        code = worker.process.exitcode
        failures = self._failures.get(worker.index, 0)
        if time.monotonic() - worker.started_at > 60:
            failures = 0  # it served a while: a fresh failure, not a crash loop
        pause = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
        self._failures[worker.index] = failures + 1
        with self._lock:
            self.restarts += 1
        log.error("worker exited; restarting it", worker=worker.index, pid=worker.pid, exit_code=code, pause_s=pause)
        if self._stopping.wait(pause):
            return
        replacement = self._start(worker.index)
        if self._await_ready(replacement):
            log.info("worker restarted", worker=worker.index, pid=replacement.pid)

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self, grace: float | None = None) -> int:
        """SIGTERM every worker, wait for each to drain; 0 when every one exited 0."""
        self._stopping.set()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        for worker in self.workers.values():
            if worker.process.is_alive() and worker.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + 10.0  # each worker's own grace, then its stop and exit
        code = 0
        for worker in self.workers.values():
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("worker did not drain in time; killing it", worker=worker.index)
                worker.process.kill()
                worker.process.join()
            # A worker still starting (no hello yet) held no streams; a signal that ends it drained nothing.
            if worker.process.exitcode != 0 and worker.ready:
                code = 1
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        return code

    # Metrics ------------------------------------------------------------------------------------------

    def scrape(self) -> str:
        """Every worker's exposition as one, each sample labelled with its worker; and the supervisor's own."""
        texts = {}
        for worker in list(self.workers.values()):
            if worker.metrics_port <= 0:
                continue
            url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                    texts[str(worker.index)] = response.read().decode()
            except OSError as e:
                log.warning("worker metrics unavailable", worker=worker.index, error=str(e))
        with self._lock:
            restarts = self.restarts
        own = (
            "# HELP hark_workers Worker processes serving.\n# TYPE hark_workers gauge\n"
            f"hark_workers {sum(w.process.is_alive() for w in self.workers.values())}\n"
            "# HELP hark_worker_restarts_total Worker processes restarted after they exited.\n"
            f"# TYPE hark_worker_restarts_total counter\nhark_worker_restarts_total {restarts}\n"
        )
        return merge_expositions(texts) + own

    def _serve_metrics(self) -> None:
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served by the supervisor")
                    return
                body = supervisor.scrape().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._http = ThreadingHTTPServer((self.settings.metrics_host, self.settings.metrics_port), Handler)
        host, port = self._http.server_address[:2]
        self.metrics_url = f"http://{host!s}:{port}"
        threading.Thread(target=self._http.serve_forever, name="hark-metrics", daemon=True).start()


def merge_expositions(texts: dict[str, str]) -> str:
    """Prometheus text expositions (worker -> text) as one: one HELP and TYPE per family, every sample
    with a ``worker`` label."""
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.utils import floatToGoString

    families: dict[str, tuple[str, str, list[str]]] = {}
    for worker, text in texts.items():
        for family in text_string_to_metric_families(text):
            help_text, kind, lines = families.setdefault(family.name, (family.documentation, family.type, []))
            for sample in family.samples:
                labels = {**sample.labels, "worker": worker}
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{sample.name}{{{rendered}}} {floatToGoString(sample.value)}")  # type: ignore[no-untyped-call]
    out = []
    for name, (help_text, kind, lines) in families.items():
        out += [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}", *lines]
    return "\n".join(out) + ("\n" if out else "")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def serve_workers(settings: Settings, workers: int) -> int:
    """Run ``workers`` server processes on one port until SIGTERM/SIGINT; 0 after every worker drained."""
    configure_logging(settings.log_format, settings.log_level)
    with reserve_port(settings.host, settings.port) as port:
        supervisor = Supervisor(settings, workers)
        supervisor.port = port

        def on_signal(signum: int, frame: object) -> None:
            log.info("signal received; draining every worker", signal=signal.Signals(signum).name)
            supervisor.request_stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            supervisor.start()
        except RuntimeError as e:
            log.error("cannot start", error=str(e))
            return 1
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        log.info(
            f"listening on {host}:{port} with {workers} workers",
            address=f"{host}:{port}",
            workers=workers,
            pids=[w.pid for w in supervisor.workers.values()],
            metrics=supervisor.metrics_url + "/metrics" if supervisor.metrics_url else None,
        )
        try:
            supervisor.watch()
        finally:
            code = supervisor.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("stopped", exit_code=code)
        return code
