"""The ``hark`` command without a real server: parsing, plugin placeholders, output formats, exit codes.

The last section runs ``main()`` and :class:`HarkClient` against a stub servicer in this process (no
model, no onnxruntime) to pin the client's protocol handling: config first, half-close, final events
after the half-close, real-time pacing, and status codes mapped to exit codes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hark import cli, client
from hark.client import (
    Classification,
    Detection,
    HarkClient,
    HarkError,
    HopScores,
    ModelInfo,
    ModelVersionInfo,
    Pacer,
    StreamStarted,
    read_clip,
    split_chunks,
)
from hark.core import audio
from hark.core.audio import AudioError
from hark.v1 import hark_pb2, hark_pb2_grpc

NO_PLUGINS: list[importlib.metadata.EntryPoint] = []


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser(plugins=NO_PLUGINS).parse_args(list(argv))


# ------------------------------------------------------------------------------------------- parsing


def test_stream_defaults() -> None:
    args = parse("stream", "a.wav")
    assert args.func is cli.cmd_stream
    assert (args.path, args.server, args.json, args.fast, args.chunk_ms, args.scores) == (
        "a.wav",
        "127.0.0.1:50051",
        False,
        False,
        100,
        False,
    )
    assert (args.model, args.model_version, args.rate) == ("", 0, 16_000)


def test_stream_options() -> None:
    args = parse(
        "stream", "-", "--fast", "--json", "--chunk-ms", "20", "--scores", "--model", "kws", "--model-version", "3"
    )
    assert (args.path, args.fast, args.json, args.chunk_ms, args.scores, args.model, args.model_version) == (
        "-",
        True,
        True,
        20,
        True,
        "kws",
        3,
    )


def test_classify_takes_many_files() -> None:
    args = parse("classify", "a.wav", "b.flac", "--server", "[::1]:6000", "--rate", "8000")
    assert (args.paths, args.server, args.rate, args.func) == (
        ["a.wav", "b.flac"],
        "[::1]:6000",
        8000,
        cli.cmd_classify,
    )


def test_server_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARK_SERVER", "10.0.0.7:7000")
    assert parse("models").server == "10.0.0.7:7000"
    assert parse("health").server == "10.0.0.7:7000"
    assert parse("models", "--server", "h:1").server == "h:1"  # the flag wins


@pytest.mark.parametrize("good", ["localhost:50051", "10.1.2.3:1", "[::1]:443", "unix:/tmp/hark.sock", "dns:///h:9"])
def test_server_address_accepts(good: str) -> None:
    assert cli.server_address(good) == good


@pytest.mark.parametrize("bad", ["localhost", "localhost:", ":50051", "host:port", "host:0", "host:70000"])
def test_server_address_rejects(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("stream", "a.wav", "--server", bad)
    assert exc.value.code == 2
    assert "is not HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["stream"],  # no file
        ["stream", "a.wav", "--chunk-ms", "0"],
        ["stream", "a.wav", "--chunk-ms", "ten"],
        ["stream", "a.wav", "--rate", "12345"],
        ["stream", "a.wav", "--model-version", "-1"],
        ["classify"],  # no files
        ["serve", "--port", "65536"],
        ["serve", "--log-format", "xml"],
        ["health", "--timeout", "0"],
        [],  # no command
    ],
)
def test_usage_errors_exit_2(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_plugin_entry_points", list)  # `hark` alone would load (slow) plugins
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_unknown_option_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["models", "--frobnicate"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("hark ")


@pytest.mark.parametrize("command", ["serve", "stream", "classify", "listen", "models", "health", "control-check"])
def test_version_is_the_program_s_everywhere_and_a_model_version_is_model_version(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("hark ")
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--version", "3", "a.wav"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--version is the program's version; to pin model version 3 use --model-version 3" in err


def test_every_command_and_option_has_help() -> None:
    parser = cli.build_parser(plugins=NO_PLUGINS)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == cli.BUILTIN_COMMANDS
    helps = {a.dest: a.help for a in commands._choices_actions}
    for name, sub in commands.choices.items():
        assert helps[name], name
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_constants_match_the_modules_the_cli_avoids_importing() -> None:
    assert cli.SAMPLE_RATES == audio.SUPPORTED_SAMPLE_RATES
    assert cli.DEFAULT_SERVER == client.DEFAULT_SERVER


def test_serve_builds_settings_and_prints_a_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys
    import types

    seen: dict[str, Any] = {}

    def fake_serve(settings: Any) -> int:
        seen["settings"] = settings
        return 0

    monkeypatch.setitem(sys.modules, "hark.server", types.SimpleNamespace(serve=fake_serve))
    monkeypatch.setenv("HARK_PORT", "6000")
    monkeypatch.setenv("HARK_LOG_LEVEL", "debug")
    monkeypatch.setenv("HARK_METRICS_PORT", "0")  # whatever else on this machine holds the default port
    code = cli.main(["serve", "--host", "0.0.0.0", "--port", "7000", "--model-store", str(tmp_path)])
    assert code == 0
    s = seen["settings"]
    assert (s.host, s.port, s.model_store, s.log_level) == ("0.0.0.0", 7000, tmp_path, "debug")
    err = capsys.readouterr().err
    assert "0.0.0.0:7000" in err
    assert "stream some.wav --server 127.0.0.1:7000" in err


def test_serve_reports_bad_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARK_MAX_BATCH", "0")
    assert cli.main(["serve"]) == 2
    assert "invalid settings" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- plugins


def add_fake_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """A well-behaved plugin, loaded through a real EntryPoint below."""
    p = subparsers.add_parser("fake", help="a fake plugin command")
    p.add_argument("--n", type=int, default=1, help="a number")
    p.set_defaults(func=lambda args: 40 + args.n)


def _entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=cli.PLUGIN_GROUP)


def test_plugin_command_is_added() -> None:
    parser = cli.build_parser(plugins=[_entry_point("fake", f"{__name__}:add_fake_command")])
    args = parser.parse_args(["fake", "--n", "2"])
    assert args.func(args) == 42


def test_plugin_that_cannot_import_becomes_a_placeholder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _entry_point("train", "no_such_module_for_hark_tests:add_command")
    monkeypatch.setattr(cli, "_plugin_entry_points", lambda: [broken])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = capsys.readouterr().out
    # One line for all the missing commands, with the way to install them here (a checkout: make dev).
    assert "training commands (train) are not installed: run `make dev`" in help_text
    assert "unavailable" not in help_text
    # Any arguments the real command would take, -h included, still get the explanation.
    assert cli.main(["train", "--epochs", "3", "-h", "data.csv"]) == 2
    err = capsys.readouterr().err
    assert "make dev" in err
    assert "no_such_module_for_hark_tests" in err
    # The built-in commands still work.
    assert parse("models").func is cli.cmd_models


def test_plugin_that_raises_becomes_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _entry_point("oops", "json:loads")  # loads fine, then fails when called with the subparsers
    parser = cli.build_parser(plugins=[broken])
    args, _ = parser.parse_known_args(["oops"])
    assert args.func(args) == 2


def test_builtin_commands_do_not_load_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode() -> list[importlib.metadata.EntryPoint]:
        raise AssertionError("plugins loaded for a built-in command")

    monkeypatch.setattr(cli, "_plugin_entry_points", explode)
    monkeypatch.setattr(cli, "cmd_models", lambda args: 0)
    assert cli.main(["models", "--json"]) == 0


def test_ctrl_c_exits_130_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_models", interrupted)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err == "hark: interrupted\n"


# ------------------------------------------------------------------------------------------ formatting


def test_detection_formats() -> None:
    d = Detection(label="yes", score=0.9712345, time_s=1.2300000000000002)
    assert cli.format_detection(d) == "  1.23 s  yes          0.97"
    assert cli.detection_json(d) == {"label": "yes", "score": 0.971235, "time_s": 1.23}


def test_scores_formats() -> None:
    h = HopScores(start_s=0.5, end_s=1.5, scores={"yes": 0.1, "no": 0.7, "up": 0.15, "down": 0.05}, gated=False)
    assert cli.format_scores(h) == "  0.50-1.50 s   · no 0.70  up 0.15  yes 0.10"
    assert cli.scores_json(h) == {"start_s": 0.5, "end_s": 1.5, "scores": h.scores, "gated": False}
    assert cli.format_scores(HopScores(0.0, 1.0, {"_silence_": 1.0}, True)).endswith("(quiet)")


def test_classification_formats() -> None:
    c = Classification(model="kws", version=2, label="no", score=0.875, scores={"yes": 0.125, "no": 0.875})
    assert cli.format_classification("a b.wav", c) == "a b.wav  no  0.88"
    assert cli.classification_json("a.wav", c) == {
        "path": "a.wav",
        "label": "no",
        "score": 0.875,
        "scores": {"yes": 0.125, "no": 0.875},
        "model": "kws",
        "version": 2,
    }


def test_json_lines_are_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    cli._emit(cli.detection_json(Detection("ja", float("nan"), 2.0)), True)
    cli._emit(cli.scores_json(HopScores(0.0, 1.0, {"é": 0.5}, False)), True)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"label": "ja", "score": None, "time_s": 2.0},
        {"start_s": 0.0, "end_s": 1.0, "scores": {"é": 0.5}, "gated": False},
    ]


MODELS = [
    ModelInfo(
        name="keywords",
        default_version=2,
        versions=tuple(
            ModelVersionInfo(v, "ab" * 32, ("yes", "no"), 1.0, 0.1, 16_000, acc, f"2026-01-0{v}T00:00:00Z")
            for v, acc in ((1, 0.9), (2, 0.95))
        ),
    )
]


def test_models_formats() -> None:
    table = cli.format_models(MODELS)
    assert table[0].split() == ["MODEL", "VERSION", "WINDOW", "HOP", "ACCURACY", "LABELS"]
    assert table[2].split() == ["keywords", "2*", "1.00", "s", "0.10", "s", "0.950", "yes,", "no"]
    rows = cli.models_json(MODELS)
    assert [(r["model"], r["version"], r["default"]) for r in rows] == [("keywords", 1, False), ("keywords", 2, True)]
    assert rows[1]["labels"] == ["yes", "no"] and rows[1]["test_accuracy"] == 0.95
    assert cli.format_models([]) == []


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("INVALID_ARGUMENT", 2),
        ("NOT_FOUND", 2),
        ("FAILED_PRECONDITION", 2),
        ("UNAVAILABLE", 3),
        ("RESOURCE_EXHAUSTED", 3),
        ("DEADLINE_EXCEEDED", 3),
        ("INTERNAL", 1),
        ("UNKNOWN", 1),
    ],
)
def test_exit_code_for_status(status: str, code: int) -> None:
    assert cli.exit_code_for_status(status) == code


def test_self_command_for_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["hark"])
    assert cli._self_command() == "hark"
    monkeypatch.setattr("sys.argv", [str(Path.cwd() / ".venv" / "bin" / "hark")])
    assert cli._self_command() == ".venv/bin/hark"
    assert cli._connect_address("0.0.0.0", 5) == "127.0.0.1:5"
    assert cli._connect_address("::1", 5) == "[::1]:5"


# ------------------------------------------------------------------------------------ audio and pacing


def test_split_chunks_covers_the_clip() -> None:
    x = np.arange(1050, dtype=np.float32)
    chunks = list(split_chunks(x, 1000, 100))
    assert [len(c) for c in chunks] == [100] * 10 + [50]
    np.testing.assert_array_equal(np.concatenate(chunks), x)


def test_pacer_schedules_from_the_start_not_from_the_last_send() -> None:
    now = [10.0]
    waits: list[float] = []

    def wait(delay: float) -> None:
        waits.append(round(delay, 6))
        now[0] += delay + 0.004  # oversleeps a little each time, like a real scheduler

    pacer = Pacer(clock=lambda: now[0], wait=wait)
    sent_at = []
    for _ in range(5):
        pacer.wait_turn()
        sent_at.append(now[0])
        now[0] += 0.01  # time to serialise and send
        pacer.sent(0.1)
    assert sent_at[0] == 10.0
    # chunk k leaves at t0 + k*0.1 (plus one oversleep), so the error does not grow with k
    assert all(abs(t - (10.0 + k * 0.1)) <= 0.0041 for k, t in enumerate(sent_at))
    assert waits == [0.09, 0.086, 0.086, 0.086]


def _write(path: Path, seconds: float, rate: int, subtype: str, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(str(path), np.stack([tone] * channels, axis=1), rate, subtype=subtype)
    return path


def test_read_clip_resamples_and_mixes(tmp_path: Path) -> None:
    x = read_clip(_write(tmp_path / "s.wav", 0.5, 8_000, "PCM_24", channels=2))
    assert x.dtype == np.float32 and abs(len(x) - 8_000) <= 1


def test_read_clip_refuses_truncated_wavs(tmp_path: Path) -> None:
    whole = _write(tmp_path / "whole.wav", 1.0, 16_000, "PCM_16").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AudioError, match="truncated"):
        read_clip(tmp_path / "cut.wav")
    (tmp_path / "header.wav").write_bytes(whole[:30])
    with pytest.raises(AudioError, match="cannot read"):
        read_clip(tmp_path / "header.wav")
    # A WAV written to a pipe carries a placeholder length; that is not truncation.
    streamed = bytearray(whole)
    streamed[40:44] = (0xFFFFFFFF).to_bytes(4, "little")
    (tmp_path / "piped.wav").write_bytes(bytes(streamed))
    assert len(read_clip(tmp_path / "piped.wav")) == 16_000


def test_read_clip_explains_missing_and_non_audio(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such file"):
        read_clip(tmp_path / "missing.wav")
    (tmp_path / "notes.wav").write_text("not audio\n" * 20)
    with pytest.raises(AudioError, match="cannot read"):
        read_clip(tmp_path / "notes.wav")
    with pytest.raises(AudioError, match="directory"):
        read_clip(tmp_path)


# ------------------------------------------------------------------------ against a stub servicer

LABELS = ("yes", "no")


class StubClassifier(hark_pb2_grpc.ClassifierServicer):
    """Answers like the real server, without a model: enough to exercise the client's side of the API."""

    def __init__(self) -> None:
        self.configs: list[hark_pb2.StreamConfig] = []
        self.chunk_times: list[float] = []
        self.samples = 0

    def StreamClassify(self, request_iterator: Iterator[hark_pb2.StreamRequest], context: Any) -> Iterator[Any]:
        first = next(request_iterator)
        if first.WhichOneof("request") != "config":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a StreamConfig")
        config = first.config
        if config.model not in ("", "stub"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {config.model!r}")
        self.configs.append(config)
        yield hark_pb2.StreamResponse(
            started=hark_pb2.StreamStarted(model="stub", version=7, labels=LABELS, window_s=1.0, hop_s=0.5)
        )
        self.chunk_times = []
        self.samples = 0
        rate = config.sample_rate_hz
        for request in request_iterator:
            self.chunk_times.append(time.monotonic())
            before = self.samples
            self.samples += len(request.audio.pcm) // 2
            if config.emit_scores and before // (rate // 2) != self.samples // (rate // 2):
                end = self.samples // (rate // 2) * 0.5
                yield hark_pb2.StreamResponse(
                    scores=hark_pb2.WindowScores(start_s=end - 1, end_s=end, scores=[0.8, 0.2])
                )
        # Only after the client half-closed: the final event must still reach it.
        yield hark_pb2.StreamResponse(event=hark_pb2.Event(label="yes", score=0.9, time_s=self.samples / rate / 2))

    def Classify(self, request: hark_pb2.ClassifyRequest, context: Any) -> hark_pb2.ClassifyResponse:
        if request.model not in ("", "stub"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model!r}")
        if len(request.pcm) < 2 * request.sample_rate_hz // 10:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "clip shorter than 0.1 s")
        label = "yes" if request.sample_rate_hz == 16_000 else "no"
        return hark_pb2.ClassifyResponse(
            model="stub",
            version=7,
            label=label,
            score=0.75,
            scores=[hark_pb2.ClassScore(label=x, score=0.75 if x == label else 0.25) for x in LABELS],
        )

    def ListModels(self, request: hark_pb2.ListModelsRequest, context: Any) -> hark_pb2.ListModelsResponse:
        version = hark_pb2.ModelVersion(version=7, labels=LABELS, window_s=1.0, hop_s=0.5, test_accuracy=0.5)
        return hark_pb2.ListModelsResponse(
            models=[hark_pb2.ModelInfo(name="stub", default_version=7, versions=[version])]
        )


@pytest.fixture(scope="module")
def stub_server() -> Iterator[tuple[str, StubClassifier]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = StubClassifier()
    hark_pb2_grpc.add_ClassifierServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("down", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def _json_lines(out: str) -> list[dict[str, Any]]:
    objects = [json.loads(line) for line in out.splitlines()]
    assert all(isinstance(o, dict) for o in objects)
    return objects


def test_client_stream_reads_the_events_sent_after_half_close(stub_server: tuple[str, StubClassifier]) -> None:
    target, servicer = stub_server
    samples = np.zeros(16_000 * 2, dtype=np.float32)
    with HarkClient(target) as c:
        items = list(c.stream(samples, realtime=False, emit_scores=True, chunk_ms=250))
    assert items[0] == StreamStarted("stub", 7, LABELS, 1.0, 0.5)
    assert next(i for i in items if isinstance(i, HopScores)).scores == pytest.approx({"yes": 0.8, "no": 0.2})
    assert items[-1] == Detection("yes", np.float32(0.9).item(), 1.0)
    assert servicer.samples == 32_000 and len(servicer.chunk_times) == 8
    assert servicer.configs[-1].encoding == hark_pb2.PCM_S16LE and servicer.configs[-1].emit_scores


def test_client_stream_paces_in_real_time(stub_server: tuple[str, StubClassifier]) -> None:
    target, servicer = stub_server
    started = time.monotonic()
    with HarkClient(target) as c:
        list(c.stream(np.zeros(1_600, dtype=np.float32), chunk_ms=20))  # 5 chunks of 20 ms
    elapsed = time.monotonic() - started
    assert 0.08 <= elapsed < 1.0
    # Paced: the five chunks span the 80 ms between the first and the last send (a loaded machine may deliver
    # two of them together, so single gaps prove nothing; an unpaced client sends all five within a millisecond).
    arrivals = servicer.chunk_times
    assert len(arrivals) == 5 and arrivals[-1] - arrivals[0] > 0.06


def test_client_stream_accepts_pcm_chunks_and_early_close(stub_server: tuple[str, StubClassifier]) -> None:
    target, _ = stub_server
    pulled = [0]

    def microphone() -> Iterator[bytes]:
        while True:
            pulled[0] += 1
            yield bytes(320)

    with HarkClient(target) as c:
        items = c.stream(microphone(), realtime=True)
        assert isinstance(next(items), StreamStarted)
        items.close()  # cancels the call; the endless request side must stop too
    time.sleep(0.05)
    after_close = pulled[0]
    time.sleep(0.2)
    assert pulled[0] == after_close


def test_client_errors_carry_the_status(stub_server: tuple[str, StubClassifier]) -> None:
    target, _ = stub_server
    with HarkClient(target) as c:
        with pytest.raises(HarkError) as exc:
            list(c.stream(np.zeros(160, dtype=np.float32), model="nope", realtime=False))
        assert exc.value.code is grpc.StatusCode.NOT_FOUND and "nope" in exc.value.details
        with pytest.raises(HarkError) as exc:
            c.classify(np.zeros(10, dtype=np.float32))
        assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(AudioError, match="too long for one Classify call"):
            c.classify(np.zeros(16_000 * 200, dtype=np.float32))
        assert c.health() == "SERVING"
        assert c.health("down") == "NOT_SERVING"
        assert c.health("nothing-here") == "SERVICE_UNKNOWN"


def test_cli_classify_json(
    stub_server: tuple[str, StubClassifier], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = stub_server
    good = _write(tmp_path / "good.wav", 0.5, 44_100, "FLOAT", channels=2)
    short = _write(tmp_path / "short.wav", 0.01, 16_000, "PCM_16")
    text = tmp_path / "text.wav"
    text.write_text("hello\n" * 50)
    code = cli.main(["classify", "--json", "--server", target, str(good), str(text), str(short), str(good)])
    captured = capsys.readouterr()
    rows = _json_lines(captured.out)
    assert [r["path"] for r in rows] == [str(good), str(text), str(short), str(good)]
    assert rows[0] == {
        "path": str(good),
        "label": "yes",
        "score": 0.75,
        "scores": {"yes": 0.75, "no": 0.25},
        "model": "stub",
        "version": 7,
    }
    assert "cannot read" in rows[1]["error"]
    assert rows[2]["error"].startswith("INVALID_ARGUMENT: ")
    assert code == 2
    assert f"hark: error: cannot read {text} as audio" in captured.err


def test_cli_classify_human_and_rate(
    stub_server: tuple[str, StubClassifier], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = stub_server
    clip = _write(tmp_path / "c.wav", 0.5, 16_000, "PCM_16")
    assert cli.main(["classify", "--server", target, "--rate", "8000", str(clip)]) == 0
    assert capsys.readouterr().out == f"{clip}  no  0.75\n"


def test_cli_classify_stops_on_unknown_model(
    stub_server: tuple[str, StubClassifier], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = stub_server
    clip = _write(tmp_path / "c.wav", 0.5, 16_000, "PCM_16")
    assert cli.main(["classify", "--server", target, "--model", "nope", str(clip), str(clip)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "hark: error: NOT_FOUND: no model 'nope'\n"


def test_cli_stream_json(
    stub_server: tuple[str, StubClassifier], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = stub_server
    clip = _write(tmp_path / "c.wav", 2.0, 8_000, "PCM_24", channels=2)
    assert cli.main(["stream", "--fast", "--json", "--scores", "--server", target, str(clip)]) == 0
    captured = capsys.readouterr()
    rows = _json_lines(captured.out)
    assert rows[-1] == {"label": "yes", "score": 0.9, "time_s": 1.0}
    assert all(set(r) == {"start_s", "end_s", "scores", "gated"} for r in rows[:-1]) and len(rows) == 5
    assert "stub v7" in captured.err and "1 event in 2.00 s" in captured.err


def test_cli_stream_human(
    stub_server: tuple[str, StubClassifier], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = stub_server
    clip = _write(tmp_path / "c.wav", 1.0, 16_000, "PCM_16")
    assert cli.main(["stream", "--fast", "--server", target, str(clip)]) == 0
    assert capsys.readouterr().out == "  0.50 s  yes          0.90\n"


def test_cli_stream_errors(
    stub_server: tuple[str, StubClassifier], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = stub_server
    assert cli.main(["stream", "--server", target, str(tmp_path / "missing.wav")]) == 2
    assert capsys.readouterr().err == f"hark: error: {tmp_path / 'missing.wav'}: no such file\n"
    clip = _write(tmp_path / "c.wav", 0.2, 16_000, "PCM_16")
    assert cli.main(["stream", "--fast", "--json", "--server", target, "--model", "nope", str(clip)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "NOT_FOUND: no model 'nope'" in captured.err


def test_cli_models(stub_server: tuple[str, StubClassifier], capsys: pytest.CaptureFixture[str]) -> None:
    target, _ = stub_server
    assert cli.main(["models", "--json", "--server", target]) == 0
    [row] = _json_lines(capsys.readouterr().out)
    assert (row["model"], row["version"], row["default"], row["labels"]) == ("stub", 7, True, ["yes", "no"])
    assert cli.main(["models", "--server", target]) == 0
    assert "stub   7*" in capsys.readouterr().out


def test_cli_health(stub_server: tuple[str, StubClassifier], capsys: pytest.CaptureFixture[str]) -> None:
    target, _ = stub_server
    assert cli.main(["health", "--server", target]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert cli.main(["health", "--server", target, "--service", "down"]) == 1
    assert cli.main(["health", "--server", target, "--service", "unknown"]) == 1
    assert capsys.readouterr().out == "NOT_SERVING\nSERVICE_UNKNOWN\n"


def test_cli_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = _write(tmp_path / "c.wav", 0.2, 16_000, "PCM_16")
    assert cli.main(["models", "--server", "127.0.0.1:1"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("hark: error: UNAVAILABLE: ") and "is a Hark server running at 127.0.0.1:1?" in err
    assert cli.main(["stream", "--fast", "--server", "127.0.0.1:1", str(clip)]) == 3
    assert cli.main(["classify", "--json", "--server", "127.0.0.1:1", str(clip), str(clip)]) == 3
    [row] = _json_lines(capsys.readouterr().out)  # the run stops at the first file
    assert row["path"] == str(clip) and row["error"].startswith("UNAVAILABLE")
    assert cli.main(["health", "--server", "127.0.0.1:1"]) == 1


def test_stdin_is_streamed(
    stub_server: tuple[str, StubClassifier],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io
    import sys

    target, servicer = stub_server
    data = _write(tmp_path / "c.wav", 0.5, 22_050, "PCM_16").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert cli.main(["stream", "--fast", "--json", "--server", target, "-"]) == 0
    assert abs(servicer.samples - 8_000) <= 1
    assert _json_lines(capsys.readouterr().out) == [{"label": "yes", "score": 0.9, "time_s": 0.25}]


def test_outside_a_checkout_the_training_hint_is_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "CHECKOUT_ROOT", tmp_path)  # an installed package: no Makefile beside it
    assert cli.train_extra_hint() == "install the training extra: pip install 'hark[train]'"
