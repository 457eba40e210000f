"""Per-engine evaluation on streams, and per-class thresholds chosen for a false-alarm budget.

The tiny model of ``tests/fixtures_models.py`` hears loud noise as ``yes`` and near-silence as ``_silence_``,
so a stream of quiet with noise bursts is a stream of known ``yes`` events.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark.core.model_store import load_version, read_manifest
from hark_training import curve, engine_eval
from hark_training.data import TrainingSelection
from hark_training.voices import STREAM_COLUMNS, STREAMS_FILE
from tests.fixtures_models import noise, publish_tiny, quiet


def _stream(folder: Path, name: str, bursts: list[float], seconds: float = 20.0, level: float = 0.3) -> Path:
    audio = quiet(seconds)
    for t in bursts:
        start = int(t * 16_000)
        audio[start : start + 14_400] = noise(0.9, level=level, seed=int(t * 10))
    path = folder / f"{name}.wav"
    sf.write(path, audio, 16_000, subtype="PCM_16")
    return path


def _streams_csv(folder: Path, rows: list[dict[str, str]]) -> None:
    with (folder / STREAMS_FILE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(STREAM_COLUMNS), restval="")
        writer.writeheader()
        writer.writerows(rows)


def _row(name: str, split: str, kind: str, events: str = "", engine: str = "pico", voice: str = "v") -> dict[str, str]:
    return {"path": f"{name}.wav", "split": split, "engine": engine, "voice": voice, "licence": "x", "kind": kind,
            "duration_s": "20.0", "events": events}  # fmt: skip


def test_events_match_keywords_said_just_before_them_once_each() -> None:
    truth = [("yes", 1.0, 1.5), ("yes", 5.0, 5.4)]
    tp, fp, fn, false = engine_eval.match([("yes", 1.9), ("yes", 2.0), ("no", 5.5), ("yes", 9.0)], truth)
    assert (tp, fp, fn) == (1, 3, 1)
    assert ("no", 5.5) in false


def test_stream_report_counts_hits_misses_and_false_alarms_per_hour(tmp_path: Path) -> None:
    loaded = load_version(publish_tiny(tmp_path / "store"))
    data = tmp_path / "data"
    data.mkdir()
    _stream(data, "kw", [3.0, 9.0, 15.0])
    _stream(data, "free", [6.0])
    _stream(data, "quiet", [])
    _streams_csv(
        data,
        [
            _row("kw", "test", "keywords", "yes@3.000-3.900;yes@9.000-9.900;no@15.000-15.900"),
            _row("free", "test", "keyword-free", voice="loud"),
            _row("quiet", "test", "keyword-free", voice="calm"),
            _row("free", "val", "keyword-free", engine="other"),
        ],
    )
    assert set(engine_eval.stream_report(loaded, data, ["test", "val"], engines=["other"])) == {"other"}
    report = engine_eval.stream_report(loaded, data, ["test"])
    assert set(report) == {"pico"}
    pico = report["pico"]
    assert pico["keywords"] == 3
    assert pico["event_recall"] == 2 / 3
    assert pico["event_precision"] == 2 / 3  # the burst said as "no" is heard as "yes": a false event
    assert pico["false_alarms_per_hour"] == 1 / (40 / 3600)
    assert pico["false_alarms_by_label"] == {"yes": 1}  # which keyword the keyword-free speech set off
    assert pico["false_alarms_by_voice"] == {  # and which voice: most first
        "loud": {"false_alarms": 1, "per_hour": 1 / (20 / 3600), "keyword_free_minutes": 0.3},
        "calm": {"false_alarms": 0, "per_hour": 0.0, "keyword_free_minutes": 0.3},
    }


def test_the_printed_table_names_the_keywords_that_unheard_speech_set_off() -> None:
    figures = {"clips": 10, "clip_accuracy": 0.7, "event_f1": 0.5, "false_alarms_per_hour": 12.0}
    table = engine_eval.format_engine_table(
        {"pico": {**figures, "false_alarms_by_label": {}}, "rhvoice": {**figures, "false_alarms_by_label": {"no": 2}}}
    )
    assert table.splitlines()[1].split()[:3] == ["pico", "10", "0.700"]
    assert table.splitlines()[-1] == "false alarms on rhvoice's keyword-free speech: no 2"
    voices = {"a": {"false_alarms": 2, "per_hour": 12.0, "keyword_free_minutes": 10.0},
              "b": {"false_alarms": 0, "per_hour": 0.0, "keyword_free_minutes": 10.0}}  # fmt: skip
    table = engine_eval.format_engine_table(
        {"rhvoice": {**figures, "false_alarms_by_label": {"no": 2}, "false_alarms_by_voice": voices}}
    )
    assert table.splitlines()[-1] == "  by voice: a 2 (12.0/h), b 0 (0.0/h)"


def test_thresholds_are_raised_until_the_budget_holds_and_land_in_the_manifest(tmp_path: Path) -> None:
    version = publish_tiny(tmp_path / "store")
    loaded = load_version(version)
    data = tmp_path / "data"
    data.mkdir()
    _stream(data, "free", [4.0, 10.0, 16.0], level=0.08)  # faint bursts: the tiny model is unsure of them
    _streams_csv(data, [_row("free", "val", "keyword-free")])
    times, probs = engine_eval.stream_probabilities(loaded, np.asarray(sf.read(data / "free.wav")[0]))
    assert engine_eval.detect(loaded.manifest, times, probs, {"yes": 0.4}), "the faint bursts fire at 0.4"
    chosen = engine_eval.tune_thresholds(loaded, data, budget_per_hour=0.0)
    assert chosen["yes"] > 0.4
    assert all(chosen[k] == engine_eval.THRESHOLD_GRID[0] for k in chosen if k != "yes"), "quiet classes stay low"
    assert not engine_eval.detect(loaded.manifest, times, probs, chosen)
    engine_eval.write_thresholds(version, chosen, {"budget_per_hour": 0.0})
    manifest = read_manifest(version)
    assert manifest.thresholds == chosen
    assert json.loads((version / "manifest.json").read_text())["metrics"]["thresholds"]["budget_per_hour"] == 0.0
    load_version(version)  # still verifies


def test_a_recall_allocation_spends_the_budget_where_it_keeps_keywords(tmp_path: Path) -> None:
    manifest = load_version(publish_tiny(tmp_path / "store")).manifest
    # below 0.8 `yes` keeps 4 more keywords for 3 false alarms; below 0.9 `no` keeps 1 more for 3
    alarms = {"yes": lambda t: 3 if t < 0.8 else 0, "no": lambda t: 3 if t < 0.9 else 0}
    kept = {"yes": lambda t: 5 if t < 0.8 else 1, "no": lambda t: 2 if t < 0.9 else 1}

    def count(label: str, t: float) -> int:
        return alarms[label](t) if label in alarms else 0

    def keep(label: str, t: float) -> int:
        return kept[label](t) if label in kept else 0

    chosen = engine_eval.thresholds_for_recall(manifest, count, keep, hours=1.0, budget_per_hour=3.0, floor=0.6)
    assert (chosen["yes"], chosen["no"]) == (0.6, 0.9), "the budget buys yes's keywords, not no's"
    assert chosen["up"] == 0.6, "a keyword that costs nothing and keeps nothing stays at the floor"
    assert engine_eval.thresholds_for_recall(manifest, count, keep, 1.0, 6.0, 0.6)["no"] == 0.6, "room for both"
    assert engine_eval.thresholds_for_recall(manifest, count, keep, 1.0, 2.9, 0.6)["yes"] == 0.8, "whole alarms"
    equal = engine_eval.thresholds_for_budget(manifest, count, 1.0, 3.0, 0.6)
    assert equal["yes"] == 0.8, "an equal share (0.3 an hour each) buys neither"


def test_a_threshold_keeps_its_keywords_less_the_events_that_match_none(tmp_path: Path) -> None:
    loaded = load_version(publish_tiny(tmp_path / "store"))
    data = tmp_path / "data"
    data.mkdir()
    _stream(data, "kw", [3.0, 9.0, 15.0], level=0.08)  # three faint bursts, two of them said keywords
    _streams_csv(data, [_row("kw", "val", "keywords", "yes@3.000-3.900;no@9.000-9.900;yes@15.000-15.900")])
    scored = engine_eval.tuning_keywords(loaded, data, ["val"])

    assert engine_eval.events_kept(loaded.manifest, scored, "yes", 0.4) == 2 - 1
    assert engine_eval.events_kept(loaded.manifest, scored, "yes", 0.98) == 0
    with pytest.raises(ValueError, match="no keyword streams"):
        engine_eval.tuning_keywords(loaded, data, ["test"])


def test_the_command_allocates_the_budget_by_recall_and_says_so(tmp_path: Path) -> None:
    version = publish_tiny(tmp_path / "store")
    data = tmp_path / "data"
    data.mkdir()
    _stream(data, "free", [4.0, 10.0, 16.0], level=0.08)
    _stream(data, "kw", [3.0, 9.0, 15.0], level=0.08)
    said = "yes@3.000-3.900;yes@9.000-9.900;yes@15.000-15.900"
    _streams_csv(data, [_row("free", "val", "keyword-free"), _row("kw", "val", "keywords", said)])
    args = [str(version), "--data", str(data), "--budget", "540", "--floor", "0.4"]  # 3 alarms in its 20 s

    assert engine_eval.main(["thresholds", *args]) == 0
    equal = read_manifest(version).thresholds
    assert engine_eval.main(["thresholds", *args, "--allocate", "recall"]) == 0
    recall = read_manifest(version).thresholds

    assert equal and recall and recall["yes"] < equal["yes"], "the whole budget buys the keyword a lower threshold"
    note = json.loads((version / "manifest.json").read_text())["metrics"]["thresholds"]
    assert note["allocate"] == "recall"


def test_the_command_sets_the_versions_smoothing_and_never_goes_below_the_floor(tmp_path: Path) -> None:
    version = publish_tiny(tmp_path / "store")
    data = tmp_path / "data"
    data.mkdir()
    _stream(data, "free", [4.0, 10.0, 16.0], level=0.08)
    _streams_csv(data, [_row("free", "val", "keyword-free")])

    args = [str(version), "--data", str(data), "--budget", "0", "--floor", "0.7", "--smoothing-windows", "5"]
    assert engine_eval.main(["thresholds", *args]) == 0

    manifest = read_manifest(version)
    assert manifest.smoothing_windows == 5
    assert manifest.thresholds and min(manifest.thresholds.values()) >= 0.7
    note = json.loads((version / "manifest.json").read_text())["metrics"]["thresholds"]
    assert (note["floor"], note["smoothing_windows"]) == (0.7, 5)
    assert (note["data"], note["engines"], note["keyword_free_minutes"]) == (str(data), ["pico"], 0.3)
    load_version(version)  # still verifies


def test_the_model_card_lists_training_engines_licences_and_held_out_engines(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    rows = [
        ("a.wav", "yes", "train", "espeak-ng:x", "espeak-ng", "espeak-ng", "GPL-3.0"),
        ("b.wav", "no", "train", "mbrola:de4", "mbrola", "mbrola", "MBROLA voice licence (non-commercial)"),
        ("c.wav", "no", "val", "pico:en-US", "pico", "pico", "Apache-2.0"),
        ("d.wav", "go", "test", "rhvoice:bdl", "rhvoice", "rhvoice", "LGPL-2.1"),
    ]
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "voice", "source", "engine", "licence"])
        writer.writerows(rows)
    card = engine_eval.model_card(manifest)
    assert set(card["training_engines"]) == {"espeak-ng", "mbrola"}
    assert card["held_out_engines"] == {"pico": ["val"], "rhvoice": ["test"]}
    assert card["non_commercial_training_material"] is True
    version = publish_tiny(tmp_path / "store")
    engine_eval.write_model_card(version, card)
    assert read_manifest(version).training["model_card"]["training_licences"] == card["training_licences"]

    # A run that left MBROLA out (or kept commercial material only) is described by what it trained on.
    for card in (
        engine_eval.model_card(manifest, TrainingSelection(("mbrola",))),
        engine_eval.model_card(manifest, TrainingSelection(commercial_only=True)),
    ):
        assert set(card["training_engines"]) == {"espeak-ng"}
        assert card["left_out_of_training"] == ["mbrola"]
        assert card["non_commercial_training_material"] is False


def test_a_run_without_running_speech_keeps_its_engines_and_names_the_kinds_it_left_out(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label,split,voice,source,engine,licence,kind\n"
        "a.wav,yes,train,x,espeak-ng,espeak-ng,GPL-3.0,word\n"
        "b.wav,_unknown_,train,x,espeak-ng,espeak-ng,GPL-3.0,free\n"
        "c.wav,no,train,joe,piper,piper,CC0,sentence\n"
        "d.wav,go,test,bdl,rhvoice,rhvoice,LGPL-2.1,word\n"
    )
    card = engine_eval.model_card(manifest, TrainingSelection(exclude_kinds=("sentence", "free")))
    # piper said only running speech, so it is left out; espeak-ng keeps its words
    assert card["training_engines"]["espeak-ng"]["clips"] == 1
    assert card["left_out_of_training"] == ["piper"]
    assert card["left_out_kinds"] == ["free", "sentence"]
    assert "left_out_kinds" not in engine_eval.model_card(manifest)


def test_the_operating_curve_trades_recall_for_false_alarms_budget_by_budget(tmp_path: Path) -> None:
    version = publish_tiny(tmp_path / "store")
    loaded = load_version(version)
    before = (version / "manifest.json").read_text()
    tune, data = tmp_path / "tune", tmp_path / "data"
    for folder in (tune, data):
        folder.mkdir()
    _stream(tune, "free", [4.0, 10.0, 16.0], level=0.08)  # faint bursts: the tiny model is unsure of them
    _streams_csv(tune, [_row("free", "val", "keyword-free")])
    _stream(data, "kw", [3.0, 9.0, 15.0], level=0.08)
    _stream(data, "free", [6.0], level=0.08)
    _streams_csv(data, [_row("kw", "test", "keywords", "yes@3.000-3.900;yes@9.000-9.900;yes@15.000-15.900"),
                        _row("free", "test", "keyword-free")])  # fmt: skip

    strict, loose = curve.operating_curve(loaded, data, tune, budgets=[1e5, 0.001], floor=0.4)

    assert [strict["budget_per_hour"], loose["budget_per_hour"]] == [0.001, 1e5]
    assert strict["thresholds"] == engine_eval.tune_thresholds(loaded, tune, 0.001, floor=0.4)
    assert strict["thresholds"]["yes"] > loose["thresholds"]["yes"] == 0.4
    tight, lax = strict["engines"]["pico"], loose["engines"]["pico"]
    assert lax["event_recall"] == 1.0 and lax["false_alarms_per_hour"] > 0
    assert tight["false_alarms_per_hour"] == 0 and tight["event_recall"] < 1.0
    assert tight == engine_eval.stream_report(loaded, data, ["val", "test"], strict["thresholds"])["pico"]
    assert (version / "manifest.json").read_text() == before, "a curve changes no manifest"
    twice = curve.operating_curve(loaded, [data, data], tune, budgets=[1e5], floor=0.4)[0]["engines"]["pico"]
    assert twice["keywords"] == 2 * lax["keywords"], "two data sets are pooled"
    assert twice["false_alarms_per_hour"] == lax["false_alarms_per_hour"] and twice["event_f1"] == lax["event_f1"]


def test_the_curve_command_writes_json_and_a_plot_and_refuses_bad_budgets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = publish_tiny(tmp_path / "store")
    data = tmp_path / "data"
    data.mkdir()
    _stream(data, "free", [6.0], level=0.08)
    _streams_csv(data, [_row("free", "val", "keyword-free")])
    out, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    args = [str(version), "--data", str(data), "--tune-data", str(data), "--budgets", "2,20"]

    assert engine_eval.main(["curve", *args, "--out", str(out), "--plot", str(plot)]) == 0

    assert json.loads(out.read_text())["data"] == [str(data)]
    written = json.loads(out.read_text())["curves"][str(version)]
    assert [p["budget_per_hour"] for p in written] == [2.0, 20.0]
    assert set(json.loads(out.read_text())["f1_at"][str(version)]["pico"]) == {"5", "10", "20"}
    assert plot.read_bytes().startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert "budget 2: pico" in printed and "best event F1 within each rate" in printed
    with pytest.raises(SystemExit):
        engine_eval.main(["curve", *args[:-1], "2,-1"])
    assert "budgets must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        engine_eval.main(["curve", *args, "--at", "ten"])
    assert "rates must be numbers" in capsys.readouterr().err
    assert engine_eval.main(["curve", str(version), "--data", str(data), "--tune-data", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("cannot draw the operating curve: ")
    assert engine_eval.main(["curve", *args, "--allocate", "recall"]) == 1, "nothing to allocate by"
    assert "has no keyword streams" in capsys.readouterr().err


def _point(budget: float, **engines: tuple[float | None, float]) -> dict[str, object]:
    return {
        "budget_per_hour": budget,
        "engines": {e: {"event_f1": f1, "false_alarms_per_hour": fa} for e, (f1, fa) in engines.items()},
    }


def test_f1_at_a_rate_is_the_best_the_curve_gives_within_that_rate() -> None:
    points = [_point(1, pico=(0.2, 4.0)), _point(5, pico=(0.4, 8.0)), _point(20, pico=(0.6, 24.0))]

    assert curve.f1_at_rate(points, "pico", 6.0) == pytest.approx(0.3), "between two points: on the line"
    assert curve.f1_at_rate(points, "pico", 16.0) == pytest.approx(0.5)
    assert curve.f1_at_rate(points, "pico", 8.0) == pytest.approx(0.4)
    assert curve.f1_at_rate(points, "pico", 99.0) == pytest.approx(0.6), "beyond its reach: it spends less"
    assert curve.f1_at_rate(points, "pico", 3.0) is None, "below its reach: no budget operates there"
    assert curve.f1_at_rate(points, "rhvoice", 10.0) is None


def test_f1_at_a_rate_follows_the_measured_rates_not_the_budgets() -> None:
    # tuned on other speech, a looser budget may measure fewer false alarms: order by what was measured
    points = [_point(1, pico=(0.3, 10.0)), _point(2, pico=(0.1, 2.0)), _point(5, pico=(0.5, 10.0))]

    assert curve.f1_at_rate(points, "pico", 6.0) == pytest.approx(0.3), "the best F1 where two points share a rate"
    assert curve.f1_at_rate(points, "pico", 2.0) == pytest.approx(0.1)
    assert curve.f1_at_rate([_point(5, pico=(None, 3.0))], "pico", 3.0) is None


def test_f1_within_a_rate_never_falls_where_the_curve_dips() -> None:
    points = [_point(1, pico=(0.5, 4.0)), _point(5, pico=(0.3, 8.0)), _point(20, pico=(0.6, 12.0))]

    assert curve.f1_at_rate(points, "pico", 8.0) == pytest.approx(0.5), "the budget that fired less did better"


def test_versions_are_compared_at_the_same_rates_on_every_engine() -> None:
    curves = {
        "a": [_point(5, pico=(0.2, 5.0), gnuspeech=(0.1, 5.0)), _point(10, pico=(0.4, 15.0), gnuspeech=(0.3, 25.0))],
        "b": [_point(5, pico=(0.3, 5.0))],
    }

    table = curve.f1_at_rates(curves, [5.0, 10.0])

    assert table["a"]["pico"] == {"5": pytest.approx(0.2), "10": pytest.approx(0.3)}
    assert table["a"]["gnuspeech"] == {"5": pytest.approx(0.1), "10": pytest.approx(0.15)}
    assert table["b"]["gnuspeech"] == {"5": None, "10": None}
    assert "pico a: 5/h 0.200, 10/h 0.300" in curve.format_f1_at(table)
    assert "gnuspeech b: 5/h -, 10/h -" in curve.format_f1_at(table)


def test_hark_evals_per_engine_table_counts_the_clips_of_the_manifest_it_was_given(tmp_path: Path) -> None:
    """Not the data set's own manifest beside it: the table must describe the clips the headline measured."""
    version = publish_tiny(tmp_path / "store")
    data = tmp_path / "data"
    data.mkdir()
    for name, audio in (("loud", noise(1.0)), ("still", quiet(1.0))):
        sf.write(data / f"{name}.wav", audio, 16_000, subtype="PCM_16")
    columns = ["path", "label", "split", "voice", "source", "engine", "kind"]
    for manifest, rows in (
        ("manifest.csv", [["loud.wav", "yes", "test", "a", "pico", "pico", "word"],
                          ["still.wav", "_silence_", "test", "b", "pico", "pico", "word"]]),
        ("subset.csv", [["loud.wav", "yes", "test", "c", "dectalk", "dectalk", "word"]]),
    ):  # fmt: skip
        with (data / manifest).open("w", newline="") as f:
            csv.writer(f).writerows([columns, *rows])
    table = engine_eval.per_engine_table(version, data / "subset.csv", "test")
    assert table is not None
    assert "dectalk" in table and "pico" not in table
    assert table.splitlines()[1].split() == ["dectalk", "1", "1.000"]
