"""Metric naming and labels, per-server registries, series lifecycle, the docs and the hot-path cost.

The naming tests exercise every metric first, so each family has samples to inspect, then hold every
family to the conventions: the ``hark_`` prefix, base units, ``_total`` on counters only, bounded label
names and never a stream id. The dashboard and alert rules may only name metrics that exist.
"""

from __future__ import annotations

import json
import re
import time
import timeit
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.core import Metric

from hark.core.model_store import LoadedModel, ModelStore, RefreshReport
from hark.serving.metrics import STAGES, HarkMetrics, is_loopback
from tests.fixtures_metrics import publish_observed_tiny
from tests.fixtures_models import LABELS, noise

REPO = Path(__file__).resolve().parents[2]
ALLOWED_LABELS = {"model", "version", "stage", "class", "band", "code", "rpc", "sha256"}
# Families of prometheus_client's default collectors (process, platform, GC), not ours to name.
FOREIGN_PREFIXES = ("process_", "python_")


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    publish_observed_tiny(tmp_path / "store")
    store = ModelStore(tmp_path / "store")
    store.refresh()
    return store


@pytest.fixture
def model(store: ModelStore) -> LoadedModel:
    return store.resolve()


def exercised(store: ModelStore, model: LoadedModel) -> HarkMetrics:
    """Every metric touched at least once, so every family has samples."""
    metrics = HarkMetrics(store)
    inst = metrics.instruments(model)
    for stage in STAGES:
        inst.observe(stage, 0.001)
    inst.observe_batch(3)
    inst.chunk(3200)
    inst.audio(noise(0.1), 16_000)
    features = np.zeros((98, 40), dtype=np.float32)
    for _ in range(20):
        inst.window(features, np.eye(len(LABELS), dtype=np.float32)[0], ["yes"], time.perf_counter())
    inst.clip(3200, np.zeros((2, 98, 40), dtype=np.float32), np.eye(len(LABELS), dtype=np.float32)[:2])
    metrics.request("StreamClassify")
    metrics.error("INTERNAL")
    metrics.control_result(model.name, model.version, accuracy=1.0, clips=8, duration_s=0.1)
    metrics.on_refresh(RefreshReport(refused={str(store.root / "tiny" / "2"): "sha mismatch"}))
    return metrics


def families(metrics: HarkMetrics) -> list[Metric]:
    return list(metrics.registry.collect())


def ours(metrics: HarkMetrics) -> list[Metric]:
    return [f for f in families(metrics) if not f.name.startswith(FOREIGN_PREFIXES)]


# Naming -----------------------------------------------------------------------------------------------


def test_every_metric_follows_the_conventions(store: ModelStore, model: LoadedModel) -> None:
    metrics = exercised(store, model)
    found = ours(metrics)
    assert len(found) >= 30
    for family in found:
        name = family.name
        assert name.startswith("hark_"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert family.documentation.strip(), f"{name} has no help text"
        assert family.samples, f"{name} was not exercised"
        if family.type == "counter":
            assert all(s.name == f"{name}_total" for s in family.samples), name
        else:
            assert not name.endswith("_total"), f"{name} is a {family.type} named like a counter"
        if family.type == "histogram" and name != "hark_batch_size":
            assert name.endswith(("_seconds", "_dbfs")), f"{name}: a histogram is in base units"
        assert not re.search(r"_(milli|micro)?seconds?_|_ms$|_us$|_millis", name), f"{name}: not a base unit"
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}
            assert labels <= ALLOWED_LABELS, f"{name} has unbounded or unknown labels {labels - ALLOWED_LABELS}"
            assert "stream_id" not in sample.labels and "stream" not in sample.labels


def test_process_metrics_are_exported(store: ModelStore) -> None:
    names = {f.name for f in families(HarkMetrics(store))}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names


def test_latency_is_per_stage_and_model_version(store: ModelStore, model: LoadedModel) -> None:
    metrics = exercised(store, model)
    stages = {
        s.labels["stage"]
        for f in families(metrics)
        if f.name == "hark_stage_duration_seconds"
        for s in f.samples
        if s.name.endswith("_count")
    }
    assert stages == set(STAGES)
    inst = metrics.instruments(model)
    inst.observe("no-such-stage", 1.0)  # ignored, not a new series
    again = {s.labels["stage"] for f in families(metrics) for s in f.samples if "stage" in s.labels}
    assert again == set(STAGES)


def test_bands_are_zero_padded_so_dashboards_sort_them(store: ModelStore, model: LoadedModel) -> None:
    metrics = exercised(store, model)
    (drift,) = [f for f in families(metrics) if f.name == "hark_feature_drift"]
    bands = [s.labels["band"] for s in drift.samples]
    assert bands == [f"{i:02d}" for i in range(40)]


def test_events_are_bound_for_every_class_that_can_fire(store: ModelStore, model: LoadedModel) -> None:
    metrics = exercised(store, model)
    (events,) = [f for f in families(metrics) if f.name == "hark_events"]
    counts = {s.labels["class"]: s.value for s in events.samples}
    assert set(counts) == set(LABELS) - {"_silence_", "_unknown_"}
    assert counts["yes"] == 20 and counts["no"] == 0


# Registries and lifecycle ---------------------------------------------------------------------------


def test_each_server_has_its_own_registry(store: ModelStore, model: LoadedModel) -> None:
    a, b = HarkMetrics(store), HarkMetrics(store)  # no "Duplicated timeseries" error
    a.instruments(model).chunk(100)
    assert a.registry.get_sample_value("hark_audio_bytes_total", {"model": "tiny", "version": "1"}) == 100
    assert b.registry.get_sample_value("hark_audio_bytes_total", {"model": "tiny", "version": "1"}) is None


def test_model_info_comes_from_the_store(store: ModelStore, model: LoadedModel) -> None:
    metrics = HarkMetrics(store)
    r = metrics.registry
    labels = {"model": "tiny", "version": "1"}
    assert r.get_sample_value("hark_model_info", {**labels, "sha256": model.manifest.sha256}) == 1
    assert r.get_sample_value("hark_model_loaded_timestamp_seconds", labels) == pytest.approx(model.loaded_at)
    assert r.get_sample_value("hark_model_test_accuracy", labels) == pytest.approx(0.875)
    assert r.get_sample_value("hark_model_default_version", {"model": "tiny"}) == 1
    assert r.get_sample_value("hark_models_loaded") == 1
    assert HarkMetrics().registry.get_sample_value("hark_models_loaded") == 0


def test_removed_versions_lose_their_series_and_rewritten_ones_restart_drift(
    store: ModelStore, model: LoadedModel
) -> None:
    metrics = exercised(store, model)
    r = metrics.registry
    labels = {"model": "tiny", "version": "1"}
    first = metrics.instruments(model)
    metrics.on_refresh(RefreshReport(loaded=[("tiny", 1)]))
    assert metrics.instruments(model) is not first  # a fresh drift window for the new reference
    assert r.get_sample_value("hark_windows_total", labels) == 22  # counters carry on
    metrics.on_refresh(RefreshReport(removed=[("tiny", 1)]))
    for family in ours(metrics):
        for sample in family.samples:
            assert sample.labels.get("version") != "1" or family.name.startswith("hark_model"), sample
    assert r.get_sample_value("hark_model_refused_total", {"model": "tiny"}) == 1


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "0.0.0.0", "::", "192.168.1.5", "::ffff:10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host


# Dashboards, alerts and docs name only real metrics ---------------------------------------------------


def known_series(store: ModelStore, model: LoadedModel) -> set[str]:
    names = set()
    for family in families(exercised(store, model)):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:hark|process|python)_[a-z0-9_]+)", expr))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/hark.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_and_alerts_name_only_exported_metrics(store: ModelStore, model: LoadedModel) -> None:
    known = known_series(store, model)
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    exprs = dashboard_exprs() + [r["expr"] for g in rules["groups"] for r in g["rules"]]
    for expr in exprs:
        unknown = named_metrics(expr) - known
        assert not unknown, f"{expr!r} names {unknown}, which Hark does not export"


def test_dashboard_layout_is_sound() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/hark.json").read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["description"], p["title"]
    titles = [p["title"] for p in panels if p["type"] != "row"]
    assert len(titles) == len(set(titles))
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model", "version"}
    assert any(p["type"] == "heatmap" and "hark_feature_drift{" in p["targets"][0]["expr"] for p in panels)


def test_readme_documents_every_metric(store: ModelStore, model: LoadedModel) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Metrics and alerts") :]
    for family in ours(exercised(store, model)):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in section, f"{name} is missing from the README's metrics table"
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert f"`{rule['alert']}`" in section, f"alert {rule['alert']} is not described in the README"


def test_readme_lists_the_dashboard_rows_in_order() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/hark.json").read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    readme = (REPO / "README.md").read_text()
    start = readme.index("### Dashboard")
    section = readme[start : readme.index("\n## ", start)]
    assert re.findall(r"^- ([\w ]+):", section, re.MULTILINE) == rows


def test_every_alert_has_a_promtool_test() -> None:
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    tests = yaml.safe_load((REPO / "deploy/prometheus/alerts_test.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tested = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")  # a firing case, not only a quiet one
    }
    assert alerts == tested


# The hot path -----------------------------------------------------------------------------------------


def test_metrics_and_drift_cost_per_hop_is_small(store: ModelStore, model: LoadedModel) -> None:
    """What one 100 ms hop of one stream adds: a chunk, its audio level, five stage timings, a batch of
    one, and the window (counters, drift, latency). Printed for the README; bounded loosely so a busy CI
    machine does not fail it."""
    inst = HarkMetrics(store).instruments(model)
    audio = noise(0.1)
    features = np.random.default_rng(0).standard_normal((98, 40)).astype(np.float32)
    p = np.full(len(LABELS), 1 / len(LABELS), dtype=np.float32)

    def hop() -> None:
        inst.chunk(3200)
        inst.audio(audio, 16_000)
        for stage in STAGES:
            inst.observe(stage, 0.001)
        inst.observe_batch(1)
        inst.window(features, p, (), time.perf_counter())

    per_hop_us = min(timeit.repeat(hop, number=500, repeat=5)) / 500 * 1e6
    print(f"\nmetrics + drift per hop: {per_hop_us:.1f} us")
    assert per_hop_us < 500
