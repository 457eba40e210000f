"""A real Prometheus (Debian's ``prometheus``) scraping the real Hark every second, and promtool.

* promtool checks ``deploy/prometheus`` and runs the alert unit tests;
* every query of every Grafana panel in ``deploy/grafana/dashboards/hark.json`` returns data through
  Prometheus's HTTP API while Hark serves a small streamed load, and every alert rule loads and
  evaluates without error against the real series;
* audio 60 dB louder than the drift reference drives ``hark_feature_drift_overall`` over the
  threshold, and the real ``HarkFeatureDrift`` rule, loaded by Prometheus from ``alerts.yml``, goes
  pending.

The binaries come from ``make system-deps``; the suite fails, rather than skips, without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.fixtures_metrics import (
    failing_call,
    http,
    http_json,
    normal_audio,
    publish_observed_tiny,
    shifted_audio,
    stream_audio,
)
from tests.fixtures_models import publish_tiny
from tests.integration.conftest import Hark, StartHark

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "hark.json"
# What Grafana would put in a query: every model and version, and a rate window of four 1 s scrapes.
SUBSTITUTIONS = {"$__rate_interval": "5s", "$model": ".*", "$version": ".*"}


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make system-deps` (Debian's prometheus package)"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Prometheus:
    url: str
    log: Path

    async def query(self, expr: str) -> list[dict[str, Any]]:
        status, body = await http_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert status == 200 and body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def get(self, path: str) -> Any:
        status, body = await http_json(self.url + path)
        assert status == 200 and body["status"] == "success", body
        return body["data"]

    async def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = await check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; prometheus log:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[Prometheus]:
    """Prometheus on a free loopback port, scraping ``target`` as job "hark" every second, with the
    real alert rules evaluated every second. Its TSDB lives in ``tmp_path``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "alerts.yml")],
        "scrape_configs": [{"job_name": "hark", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log)
    try:

        async def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
            try:
                return (await http(server.url + "/-/ready", timeout=1))[0] == 200
            except OSError:
                return False

        await server.wait_for("prometheus to be ready", ready)
        yield server
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


@contextlib.asynccontextmanager
async def load(
    hark: Hark, audio: Callable[[], np.ndarray], streams: int = 2, pause_s: float = 0.002
) -> AsyncIterator[None]:
    """Streams of ``audio()`` and a failing call, over and over, until the block ends."""
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            await stream_audio(hark.stub, audio(), pause_s=pause_s)
            await failing_call(hark.stub)

    tasks = [asyncio.create_task(client()) for _ in range(streams)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def metrics_target(hark: Hark) -> str:
    assert hark.running.metrics_server is not None
    return f"127.0.0.1:{hark.running.metrics_server.port}"


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in SUBSTITUTIONS.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
            queries.append((panel["title"], expr))
    return queries


def rule(name: str) -> dict[str, Any]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    (found,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == name]
    return found


# promtool --------------------------------------------------------------------------------------------


def test_promtool_checks_config_and_rules_and_runs_the_alert_tests() -> None:
    promtool = binary("promtool")
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


# The dashboard ----------------------------------------------------------------------------------------


async def test_every_dashboard_panel_returns_data(start_hark: StartHark, tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_observed_tiny(store)
    hark = await start_hark(store, drift_window_s=30)
    # A refused version (for the refusals panel) and a control check (for the control panels).
    (publish_tiny(store, version=2) / "model.onnx").write_bytes(b"broken")
    await hark.running.reload()
    status, _ = await http_json(f"http://{metrics_target(hark)}/control-check", "POST")
    assert status == 200

    async with prometheus(tmp_path / "prometheus", metrics_target(hark)) as prom, load(hark, normal_audio):
        # Enough scrapes for a 5 s rate window, with load running all along.
        await prom.wait_for(
            "6 scrapes of hark", lambda: prom.query('count_over_time(up{job="hark"}[10s]) >= 6 and up == 1')
        )
        target = (await prom.get("/api/v1/targets"))["activeTargets"][0]
        assert target["health"] == "up", target
        empty = []
        for title, expr in panel_queries():
            result = await prom.query(expr)
            values = [float(v) for r in result for v in ([r["value"][1]] if "value" in r else [])]
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{title}: {expr} -> {result}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
        # The dashboard's template variables (label_values) find the model and version.
        assert "tiny" in await prom.get("/api/v1/label/model/values?match[]=hark_model_info")
        assert "1" in await prom.get('/api/v1/label/version/values?match[]=hark_model_info{model=~".*"}')
        # Every alert rule loaded and evaluates cleanly against the real series.
        groups = (await prom.get("/api/v1/rules"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules} == {
            r["alert"]
            for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
            for r in g["rules"]
        }
        await prom.wait_for(
            "every rule evaluated",
            lambda: _all_evaluated(prom),
        )
        # The refusal we caused fires through the real rule; healthy traffic raises nothing else that is
        # determined here (latency depends on how busy the machine is, so it is left out).
        alerts = {a["labels"]["alertname"]: a for a in (await prom.get("/api/v1/alerts"))["alerts"]}
        assert alerts["HarkModelVersionRefused"]["state"] == "firing"
        quiet = {"HarkDown", "HarkNoModelLoaded", "HarkErrorRateHigh", "HarkFeatureDrift", "HarkControlAccuracyDrop"}
        assert not quiet & set(alerts), alerts


async def _all_evaluated(prom: Prometheus) -> bool:
    rules = [r for g in (await prom.get("/api/v1/rules"))["groups"] for r in g["rules"]]
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
    assert not bad, bad
    return all(r["health"] == "ok" for r in rules)


# Drift --------------------------------------------------------------------------------------------------


async def test_shifted_audio_drives_the_drift_alert(start_hark: StartHark, tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_observed_tiny(store, control=False)
    # A 2 s window: full-speed streams put ~10^4 frames in it, over the rule's 3000, and a phase
    # change replaces the window's contents within seconds.
    hark = await start_hark(store, drift_window_s=2.0)
    alert = rule("HarkFeatureDrift")["expr"]
    overall = 'hark_feature_drift_overall{job="hark", model="tiny", version="1"}'

    async with prometheus(tmp_path / "prometheus", metrics_target(hark)) as prom:
        async with load(hark, normal_audio, streams=1, pause_s=0):

            async def settled_normal() -> bool:
                frames = await prom.query('hark_feature_drift_frames{job="hark"} > 3000')
                return bool(frames) and bool(await prom.query(f"{overall} < 0.3"))

            await prom.wait_for("normal traffic in the drift window", settled_normal)
            assert await prom.query(alert) == [], "the drift alert must stay quiet on normal traffic"

        async with load(hark, shifted_audio, streams=1, pause_s=0):
            (series,) = await prom.wait_for("the HarkFeatureDrift expression", lambda: prom.query(alert))
            assert series["metric"]["model"] == "tiny" and float(series["value"][1]) > 1.0
            per_band = await prom.query('max(hark_feature_drift{job="hark"})')
            assert float(per_band[0]["value"][1]) > 1.0
            assert float((await prom.query('hark_input_clipping_ratio{job="hark"}'))[0]["value"][1]) > 0.05

            # And Prometheus itself, evaluating the rule it loaded from alerts.yml, has it pending (for: 15m).
            async def pending() -> list[dict[str, Any]]:
                alerts = (await prom.get("/api/v1/alerts"))["alerts"]
                return [a for a in alerts if a["labels"]["alertname"] == "HarkFeatureDrift"]

            (drift_alert,) = await prom.wait_for("HarkFeatureDrift pending", pending)
            assert drift_alert["state"] == "pending"
            description = drift_alert["annotations"]["description"]
            assert re.match(r"tiny v1 on 127\.0\.0\.1:\d+: the live log-Mel means are", description), description
