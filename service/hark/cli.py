"""The ``hark`` command: run the server, talk to one, and host the training pipeline's subcommands.

Built-in subcommands: ``serve``, ``stream``, ``listen``, ``classify``, ``models``, ``health``, ``control-check``.
Other packages add theirs through the ``hark.commands`` entry-point group, so ``service`` never imports
``training``; a plugin that cannot be imported (no torch in a serving image) becomes a hidden placeholder
that says what to install, and ``hark --help`` says in one line how to get them all.

``--version`` is the program's version everywhere; a model version is pinned with ``--model-version N``.

With ``--json`` stdout carries one JSON object per line and nothing else; everything meant for a
person (progress, summaries, errors) goes to stderr.

Exit codes (see :data:`EXIT_CODES_HELP`):
    0    success (``health``: the server is SERVING)
    1    any other failure (``health``: not SERVING or unreachable; a server INTERNAL error, ...)
    2    fix the request: bad arguments, unreadable audio, INVALID_ARGUMENT, NOT_FOUND,
         OUT_OF_RANGE, FAILED_PRECONDITION, UNAUTHENTICATED, PERMISSION_DENIED; or a command whose
         optional extra is not installed
    3    try again later: UNAVAILABLE (server not reachable), RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED
    130  interrupted (Ctrl-C)
    141  stdout closed early (``hark stream ... | head``)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, TextIO

if TYPE_CHECKING:  # the client pulls in grpc and numpy; `hark --help` and `hark serve` don't need it here
    from hark.client import Classification, Detection, HarkClient, HopScores, ModelInfo, StreamStarted
    from hark.client.audio import AudioChunk

PROG: Final = "hark"
PLUGIN_GROUP: Final = "hark.commands"
DEFAULT_SERVER: Final = "127.0.0.1:50051"  # == hark.client.DEFAULT_SERVER, kept here to avoid the import
DEFAULT_METRICS_SERVER: Final = "127.0.0.1:9464"  # Settings.metrics_host:metrics_port
SAMPLE_RATES: Final = (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)  # == audio.SUPPORTED_...
CHECKOUT_ROOT: Final = Path(__file__).resolve().parents[2]  # service/hark/cli.py in a checkout
RAW_ENCODINGS: Final = ("s16le", "f32le")  # == hark.client.pipe.RAW_ENCODINGS
CLASSIFY_LEVEL_DBFS: Final = -15.0  # == preprocess.DEFAULT_PEAK_DBFS, kept here to avoid the import

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_BAD_REQUEST: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_INTERRUPTED: Final = 130
EXIT_BROKEN_PIPE: Final = 141

# gRPC status names, so that this table needs no grpc import.
_BAD_REQUEST_CODES: Final = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "OUT_OF_RANGE", "FAILED_PRECONDITION", "UNAUTHENTICATED", "PERMISSION_DENIED"}
)
_RETRY_LATER_CODES: Final = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})

EXIT_CODES_HELP: Final = """\
exit codes:
  0    success
  1    other failure (health: not SERVING); a server error such as INTERNAL
  2    fix the request: bad arguments, unreadable audio, INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED
  3    try again later: server UNAVAILABLE (not reachable), RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED
  130  interrupted (Ctrl-C)
"""

Handler = Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------------------------- argument types


def server_address(value: str) -> str:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6), or a gRPC target with a scheme (``unix:/path``, ``dns:///h:p``)."""
    if value.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:50051)")
    return value


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{n} is not in [{lo}, {hi}]")
        return n

    parse.__name__ = "integer"
    return parse


def _level_dbfs(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not (x <= 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"{value} is not a level in dB full scale (at most 0)")
    return x


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not (x > 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return x


# ---------------------------------------------------------------------------------------------- parser


def build_parser(plugins: Iterable[importlib.metadata.EntryPoint] | None = None) -> argparse.ArgumentParser:
    """The whole ``hark`` parser. ``plugins`` defaults to every installed ``hark.commands`` entry point."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Hark: streaming audio classification over gRPC.",
        epilog=EXIT_CODES_HELP + "\nRun `hark COMMAND -h` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    _add_builtin_commands(commands)
    missing = [
        ep.name for ep in (_plugin_entry_points() if plugins is None else plugins) if not _add_plugin(commands, ep)
    ]
    _note_missing_plugins(parser, missing)
    return parser


def _client_options(*, audio: bool) -> argparse.ArgumentParser:
    """Options shared by the commands that talk to a server."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        type=server_address,
        default=os.environ.get("HARK_SERVER") or DEFAULT_SERVER,
        metavar="HOST:PORT",
        help="server address (default: $HARK_SERVER or %(default)s)",
    )
    _add_security_options(common)
    common.add_argument("--json", action="store_true", help="print one JSON object per line on stdout and nothing else")
    _add_version_option(common)
    if audio:
        common.add_argument("--model", default="", help="model name (default: the server's default model)")
        _add_model_version_option(common, "pin model version N (default: 0, the newest valid version)")
        common.add_argument(
            "--rate",
            type=int,
            choices=SAMPLE_RATES,
            default=16_000,
            metavar="HZ",
            help="sample rate sent to the server: audio files are resampled to it, --raw input is at it "
            f"(default: %(default)s; one of {', '.join(map(str, SAMPLE_RATES))})",
        )
    return common


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    """TLS and bearer-token options, for every command that talks to a server."""
    group = parser.add_argument_group("security (TLS and tokens)")
    group.add_argument(
        "--tls-ca",
        type=Path,
        default=os.environ.get("HARK_TLS_CA") or None,
        metavar="PEM",
        help="connect with TLS, trusting this CA certificate (default: $HARK_TLS_CA; "
        "with only --tls-cert/--tls-key, the system's trusted roots)",
    )
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for mutual TLS")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    group.add_argument(
        "--token",
        default=os.environ.get("HARK_TOKEN") or None,
        help="bearer token sent as 'authorization: Bearer <token>' (default: $HARK_TOKEN, which is "
        "better: command lines are visible to other users)",
    )


class _ProgramVersion(argparse.Action):
    """``--version`` in a subcommand: the program's version, as at the top; with a number, a pointer to the
    option that pins a model version (``--version N`` once meant that, and two meanings are one too many)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if values is not None:
            parser.error(
                f"--version is the program's version; to pin model version {values} use --model-version {values}"
            )
        print(f"{PROG} {_package_version()}")
        parser.exit()


def _add_version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_ProgramVersion, help=argparse.SUPPRESS)


def _add_model_version_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--model-version", type=_int_in(0, 2**32 - 1), default=0, metavar="N", help=help_text)


class _CliFailure(Exception):
    """Ends a command with one error line and an exit code (raised where returning is awkward)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _connect(args: argparse.Namespace, timeout: float | None = 30.0) -> HarkClient:
    """A :class:`~hark.client.HarkClient` for ``args.server`` with the command's TLS and token options."""
    from hark.client import HarkClient
    from hark.security import SecurityError

    try:
        return HarkClient(
            args.server,
            timeout=timeout,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            token=args.token,
        )
    except SecurityError as e:
        raise _CliFailure(str(e), EXIT_BAD_REQUEST) from None


def _add_builtin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the Hark gRPC server in the foreground until SIGINT/SIGTERM. Options override "
        "HARK_* environment variables and the HARK_CONFIG_FILE, which override the defaults.",
    )
    serve.add_argument("--host", help="address to bind (default: $HARK_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=_int_in(0, 65535), help="port to bind; 0 picks a free one (default: 50051)")
    serve.add_argument("--model-store", type=Path, metavar="DIR", help="root of the versioned model store")
    serve.add_argument(
        "--metrics-port",
        type=_int_in(-1, 65535),
        metavar="PORT",
        help="port of /metrics; 0 picks a free one, -1 turns metrics off (default: $HARK_METRICS_PORT or 9464)",
    )
    serve.add_argument(
        "--log-format", choices=("auto", "json", "console"), help="log format; auto: console on a TTY, else JSON"
    )
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="least severe level logged")
    serve.add_argument(
        "--workers",
        type=_int_in(0, 256),
        help="server processes sharing the port, each on its own core; 0 = the cores this process may use "
        "(default: $HARK_WORKERS or 1)",
    )
    _add_version_option(serve)
    serve.set_defaults(func=cmd_serve)

    stream = commands.add_parser(
        "stream",
        parents=[_client_options(audio=True)],
        help="stream an audio file or a pipe and print detections live",
        description="Stream a WAV/FLAC file (any rate, mono or stereo, int or float) to the server in "
        "chunks, at real-time pace unless --fast, and print each detection with its time in the audio. "
        "'-' streams stdin as it arrives: a WAV, FLAC or other header, or headerless PCM with --raw "
        "(arecord -f S16_LE -r 16000 -c 1 | hark stream - --raw). "
        'With --json: {"label", "score", "time_s"} per event and, with --scores, '
        '{"start_s", "end_s", "scores": {label: p}, "gated"} per hop.',
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stream.add_argument("path", metavar="FILE", help="audio file; '-' streams stdin as it arrives")
    stream.add_argument(
        "--fast",
        action="store_true",
        help="send as fast as possible instead of in real time; the server serves such streams from its bulk "
        "budget (a few at a time, HARK_MAX_FAST_STREAMS) and may refuse one with RESOURCE_EXHAUSTED",
    )
    stream.add_argument(
        "--raw",
        action="store_true",
        help="stdin is headerless mono PCM at --rate in --encoding (what arecord and sox -t raw write)",
    )
    stream.add_argument(
        "--encoding",
        choices=RAW_ENCODINGS,
        default="s16le",
        help="sample format of --raw input: 16-bit integer or 32-bit float, little-endian (default: %(default)s)",
    )
    stream.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show how much audio has been sent on stderr (default: with --fast on a terminal)",
    )
    stream.add_argument(
        "--chunk-ms",
        type=_int_in(5, 5000),
        default=100,
        metavar="MS",
        help="audio per chunk in milliseconds (default: %(default)s)",
    )
    stream.add_argument("--scores", action="store_true", help="also print the smoothed class scores of every hop")
    stream.add_argument(
        "--class-threshold",
        action="append",
        type=_class_threshold,
        default=[],
        metavar="CLASS=T",
        help="this stream's threshold for CLASS, in (0, 1]; repeat for several classes",
    )
    stream.add_argument(
        "--sensitivity",
        type=float,
        default=0.0,
        metavar="S",
        help="in [-1, 1]: every threshold t becomes t^(2^S); above 0 more events (default: %(default)s)",
    )
    stream.add_argument(
        "--allow", action="append", default=[], metavar="CLASS", help="only CLASS may raise events; repeatable"
    )
    stream.set_defaults(func=cmd_stream)

    listen = commands.add_parser(
        "listen",
        parents=[_client_options(audio=True)],
        help="stream the microphone and print detections live",
        description="Stream an input device (the default microphone unless --device) to the server and "
        "print each detection as it happens, with a live level and score line on a terminal. Ctrl-C ends "
        "the stream and prints its summary (exit 0). Needs the mic extra (pip install 'hark[mic]') and "
        'PortAudio. With --json: {"label", "score", "time_s"} per event on stdout.',
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument(
        "--device",
        metavar="DEVICE",
        help="input device: an index or (part of) a name from --list-devices; file:PATH plays a WAV/FLAC "
        "at real-time pace as if it were a microphone (default: the system's default input)",
    )
    listen.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    listen.add_argument(
        "--chunk-ms",
        type=_int_in(10, 1000),
        default=100,
        metavar="MS",
        help="audio per chunk in milliseconds (default: %(default)s)",
    )
    listen.add_argument(
        "--meter",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the live level and score line on stderr (default: on when stderr is a terminal)",
    )
    listen.set_defaults(func=cmd_listen)

    classify = commands.add_parser(
        "classify",
        parents=[_client_options(audio=True)],
        help="classify whole audio files, one line per file",
        description="Classify each file as one clip (one unary call per file) and print its path, label "
        'and score. With --json: {"path", "label", "score", "scores", "model", "version"} per file, or '
        '{"path", "error"} for a file that failed; the other files are still classified.',
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    classify.add_argument("paths", nargs="+", metavar="FILE", help="audio files (WAV/FLAC, any rate and format)")
    classify.add_argument(
        "--timeout", type=_positive_float, default=30.0, metavar="S", help="deadline per call (default: %(default)s)"
    )
    prepare = classify.add_argument_group(
        "preprocessing (hark.core.preprocess, as the training clips were made: trimmed words, peak-normalised)"
    )
    prepare.add_argument(
        "--trim",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cut leading and trailing silence (10 ms frames 40 dB below the loudest) before sending, so the "
        "server centres the word in its window as training did (default: on)",
    )
    prepare.add_argument(
        "--normalize",
        choices=("none", "peak", "rms"),
        default="peak",
        help="set the clip's peak or RMS level to --level-dbfs; none sends it as recorded (default: %(default)s)",
    )
    prepare.add_argument(
        "--level-dbfs",
        type=_level_dbfs,
        default=CLASSIFY_LEVEL_DBFS,
        metavar="DB",
        help="target level of --normalize in dB full scale, at most 0 (default: %(default)s, within the "
        "training clips' peaks of -30 to -1)",
    )
    classify.set_defaults(func=cmd_classify)

    models = commands.add_parser(
        "models",
        parents=[_client_options(audio=False)],
        help="list the served models and versions",
        description="List the models and versions the server can serve now, with labels, window/hop and "
        'test accuracy. With --json: one object per model version, "default" true for the version an '
        "unpinned request gets.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.add_argument(
        "--timeout", type=_positive_float, default=10.0, metavar="S", help="deadline (default: %(default)s)"
    )
    models.set_defaults(func=cmd_models)

    health = commands.add_parser(
        "health",
        help="check the server's grpc.health.v1 status",
        description="Check grpc.health.v1: print the status and exit 0 if SERVING, 1 otherwise "
        "(including an unreachable server), as a container HEALTHCHECK expects.",
    )
    health.add_argument(
        "--server",
        type=server_address,
        default=os.environ.get("HARK_SERVER") or DEFAULT_SERVER,
        metavar="HOST:PORT",
        help="server address (default: $HARK_SERVER or %(default)s)",
    )
    _add_security_options(health)
    health.add_argument("--service", default="", metavar="NAME", help="service to check (default: the whole server)")
    health.add_argument(
        "--timeout", type=_positive_float, default=5.0, metavar="S", help="deadline (default: %(default)s)"
    )
    _add_version_option(health)
    health.set_defaults(func=cmd_health)

    control = commands.add_parser(
        "control-check",
        help="run the served versions' control sets through the live server",
        description="Ask a running server to stream each version's labelled control set "
        "(<version>/control/control.csv) through its own live path and report the accuracy, which it also "
        "exports as hark_control_accuracy. Talks to the server's metrics port over HTTP, from the server's "
        'own host (loopback only). With --json: one {"model", "version", "clips", "correct", "accuracy", '
        '"duration_s", "misses", "error"} per version.',
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    control.add_argument(
        "--server",
        type=server_address,
        default=os.environ.get("HARK_METRICS_SERVER") or DEFAULT_METRICS_SERVER,
        metavar="HOST:PORT",
        help="the server's metrics address (default: $HARK_METRICS_SERVER or %(default)s)",
    )
    control.add_argument("--model", default="", help="only this model (default: every model with a control set)")
    _add_model_version_option(control, "only model version N (default: all)")
    _add_version_option(control)
    control.add_argument(
        "--min-accuracy",
        type=float,
        default=0.0,
        metavar="A",
        help="exit 1 when a version scores below A (default: %(default)s)",
    )
    control.add_argument("--json", action="store_true", help="print one JSON object per version on stdout")
    control.add_argument(
        "--timeout", type=_positive_float, default=600.0, metavar="S", help="wait this long (default: %(default)s)"
    )
    control.set_defaults(func=cmd_control_check)


def _plugin_entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name)


def train_extra_hint() -> str:
    """How to get the training commands here: ``make dev`` in a checkout, the extra elsewhere."""
    if (CHECKOUT_ROOT / "Makefile").is_file() and (CHECKOUT_ROOT / "training").is_dir():
        where = _relative(str(CHECKOUT_ROOT))
        return "run `make dev`" + ("" if where == "." else f" in {where}")
    return "install the training extra: pip install 'hark[train]'"


def _note_missing_plugins(parser: argparse.ArgumentParser, missing: Sequence[str]) -> None:
    """One line at the end of ``hark --help`` instead of one "unavailable" line per training command."""
    if missing:
        parser.epilog = (parser.epilog or "") + (
            f"\ntraining commands ({', '.join(missing)}) are not installed: {train_extra_hint()}."
        )


def _add_plugin(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], entry_point: importlib.metadata.EntryPoint
) -> bool:
    """Let a plugin add its subcommand; if it cannot even load, add a placeholder that explains why.

    A placeholder for a missing dependency stays out of the command list (``hark --help`` says once how
    to install them all) but still answers when it is run. False when the plugin is a placeholder.
    """
    try:
        add_command = entry_point.load()
        add_command(commands)
    except Exception as e:  # any failure must leave the rest of the CLI usable
        if entry_point.name in commands.choices:  # it registered itself before failing
            return True
        missing = isinstance(e, ImportError)
        reason = train_extra_hint() if missing else f"it failed to load: {type(e).__name__}: {e}"
        description = f"The {entry_point.name!r} command is not available: {reason}."
        if missing:  # listed once in the epilog, not here
            placeholder = commands.add_parser(entry_point.name, description=description, add_help=False)
        else:
            placeholder = commands.add_parser(
                entry_point.name, help="(unavailable: failed to load)", description=description, add_help=False
            )
        placeholder.set_defaults(func=_unavailable(entry_point.name, reason, e), _placeholder=True)
        return not missing
    return True


def _unavailable(name: str, reason: str, error: BaseException) -> Handler:
    def run(args: argparse.Namespace) -> int:
        print(f"{PROG}: error: the {name!r} command is not available: {reason}", file=sys.stderr)
        print(f"{PROG}: ({type(error).__name__}: {error})", file=sys.stderr)
        return EXIT_BAD_REQUEST

    return run


def _package_version() -> str:
    try:
        return importlib.metadata.version("hark")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hark`` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Built-in commands never need the plugins: skipping them keeps `hark stream` from importing torch.
    command = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(plugins=[] if command in BUILTIN_COMMANDS else None)
    args, extra = parser.parse_known_args(args_list)
    if extra and not getattr(args, "_placeholder", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Handler = args.func
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _CliFailure as e:
        return _fail(str(e), e.code)
    except BrokenPipeError:
        # The reader went away (`| head`); point stdout at /dev/null so the exit-time flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


BUILTIN_COMMANDS: Final = frozenset({"serve", "stream", "listen", "classify", "models", "health", "control-check"})


# -------------------------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    """Build Settings with the command-line overrides, say where to connect, then serve until stopped."""
    from pydantic import ValidationError

    from hark.config import Settings

    try:
        settings = Settings.load(
            host=args.host,
            port=args.port,
            model_store=args.model_store,
            metrics_port=args.metrics_port,
            log_format=args.log_format,
            log_level=args.log_level,
            workers=args.workers,
        )
    except (ValidationError, ValueError, OSError) as e:
        return _fail(f"invalid settings: {e}", EXIT_BAD_REQUEST)
    if (taken := _port_taken(settings.metrics_host, settings.metrics_port)) is not None:
        return _fail(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {taken} (another program, "
            "such as node_exporter, has it?); choose another port with --metrics-port PORT or "
            "HARK_METRICS_PORT=PORT (0 picks a free one, -1 turns metrics off)",
            EXIT_BAD_REQUEST,
        )
    address = f"{settings.host}:{settings.port}"
    print(f"{PROG}: serving {settings.model_store} on {address}", file=sys.stderr)
    server_opt = "" if address == DEFAULT_SERVER else f" --server {_connect_address(settings.host, settings.port)}"
    if settings.port == 0:
        server_opt = " --server HOST:PORT  (port 0: the server logs the port it picked)"
    print(f"{PROG}: try: {_self_command()} stream some.wav{server_opt}", file=sys.stderr, flush=True)

    from hark.serving.workers import default_workers, serve_workers

    workers = settings.workers or default_workers()
    if workers > 1:
        return serve_workers(settings, workers)

    from hark.server import serve

    exit_code: int = serve(settings)
    return exit_code


def cmd_stream(args: argparse.Namespace) -> int:
    """Stream a file or stdin; events go to stdout as they arrive, with their time in the stream's audio."""
    from hark.client import Detection, HarkError, HopScores, StreamStarted
    from hark.core.audio import AudioError

    try:
        feed = _stream_feed(args)
    except AudioError as e:
        return _fail(str(e), EXIT_BAD_REQUEST)
    length = "" if feed.duration_s is None else f" ({feed.duration_s:.2f} s)"
    pace = "as fast as possible" if args.fast else "in real time"
    show_progress = args.progress if args.progress is not None else (args.fast and sys.stderr.isatty())
    progress = _Progress(feed, sys.stderr) if show_progress else None
    events = 0
    with _closing(_connect(args)) as client:
        try:
            for item in client.stream(
                feed.chunks(progress),
                sample_rate=args.rate,
                model=args.model,
                version=args.model_version,
                encoding=feed.encoding,
                realtime=not args.fast,
                fast=args.fast,
                emit_scores=args.scores,
                class_thresholds=dict(args.class_threshold),
                sensitivity=args.sensitivity,
                allowed_classes=args.allow,
            ):
                if isinstance(item, StreamStarted):
                    _info(f"streaming {_source_name(args.path)}{length} {pace} to {describe_started(item)}")
                elif isinstance(item, Detection):
                    events += 1
                    if progress is not None:
                        progress.clear()
                    _emit(detection_json(item) if args.json else format_detection(item), args.json)
                elif isinstance(item, HopScores):
                    _emit(scores_json(item) if args.json else format_scores(item), args.json)
        except HarkError as e:
            return _fail_rpc(e.code.name, e.details, args.server)
        finally:
            if progress is not None:
                progress.clear()
    if feed.error is not None:
        return _fail(str(feed.error), EXIT_BAD_REQUEST)
    _info(f"{events} event{'s' if events != 1 else ''} in {feed.sent_s:.2f} s of audio")
    return EXIT_OK


def cmd_listen(args: argparse.Namespace) -> int:
    """Stream a live source until it ends or Ctrl-C; print events as they come, then the stream's summary."""
    from hark.client import Detection, HarkError, HopScores, StreamStarted
    from hark.client.microphone import MicrophoneError, list_input_devices, open_source
    from hark.core.audio import AudioError

    if args.list_devices:
        try:
            devices = list_input_devices()
        except MicrophoneError as e:
            return _fail(str(e), EXIT_BAD_REQUEST)
        for d in devices:
            row = {"index": d.index, "name": d.name, "channels": d.channels, "default": d.is_default,
                   "default_sample_rate": d.default_sample_rate}  # fmt: skip
            mark = "*" if d.is_default else " "
            line = f"{mark} {d.index:3d}  {d.name}  ({d.channels} ch, {d.default_sample_rate:g} Hz)"
            _emit(row if args.json else line, args.json)
        if not devices:
            _info("no input device found")
        return EXIT_OK
    try:
        source = open_source(args.device, sample_rate=args.rate, chunk_ms=args.chunk_ms)
    except (MicrophoneError, AudioError) as e:
        return _fail(str(e), EXIT_BAD_REQUEST)
    meter = _Meter(sys.stderr, enabled=args.meter if args.meter is not None else sys.stderr.isatty())
    counts: dict[str, int] = {}
    heard_s = 0.0
    interrupted = False
    try:
        with _closing(_connect(args)) as client:
            for item in client.stream(
                meter.watch(source.chunks()),
                sample_rate=source.sample_rate,
                model=args.model,
                version=args.model_version,
                realtime=False,  # a live source paces itself
                emit_scores=True,
            ):
                if isinstance(item, StreamStarted):
                    _info(f"listening to {source.name} with {describe_started(item)}; Ctrl-C to stop")
                elif isinstance(item, Detection):
                    counts[item.label] = counts.get(item.label, 0) + 1
                    meter.clear()
                    _emit(detection_json(item) if args.json else format_detection(item), args.json)
                elif isinstance(item, HopScores):
                    heard_s = item.end_s
                    meter.show(item)
    except KeyboardInterrupt:
        interrupted = True
    except HarkError as e:
        meter.clear()
        return _fail_rpc(e.code.name, e.details, args.server)
    finally:
        source.close()
        meter.clear()
    total = sum(counts.values())
    summary = ", ".join(f"{label} {n}" for label, n in counts.items())  # in the order first heard
    ended = "stopped" if interrupted else "the source ended"
    _info(
        f"{ended}: {total} event{'s' if total != 1 else ''} in {heard_s:.1f} s" + (f" ({summary})" if summary else "")
    )
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    """Classify each file in turn; a bad file fails alone, a server that is gone stops the run."""
    from hark.client import HarkError, read_clip
    from hark.core.audio import AudioError
    from hark.core.preprocess import PreprocessConfig, preprocess

    prepare = PreprocessConfig(trim=args.trim, normalize=args.normalize, level_dbfs=args.level_dbfs)
    status = EXIT_OK
    with _connect(args, args.timeout) as client:
        for path in args.paths:
            try:
                samples = preprocess(read_clip(path, args.rate), args.rate, args.rate, prepare)
                result = client.classify(samples, sample_rate=args.rate, model=args.model, version=args.model_version)
            except AudioError as e:
                _file_failed(path, str(e), args.json)
                status = max(status, EXIT_BAD_REQUEST)
                continue
            except HarkError as e:
                code = exit_code_for_status(e.code.name)
                if code == EXIT_UNAVAILABLE or e.code.name == "NOT_FOUND":  # would fail every other file too
                    if args.json:
                        _emit({"path": path, "error": f"{e.code.name}: {e.details}"}, True)
                    return _fail_rpc(e.code.name, e.details, args.server)
                _file_failed(path, f"{e.code.name}: {e.details}", args.json)
                status = max(status, code)
                continue
            _emit(classification_json(path, result) if args.json else format_classification(path, result), args.json)
    return status


def cmd_models(args: argparse.Namespace) -> int:
    """List what the server serves: a table for people, one object per model version for machines."""
    from hark.client import HarkError

    with _connect(args, args.timeout) as client:
        try:
            models = client.models()
        except HarkError as e:
            return _fail_rpc(e.code.name, e.details, args.server)
    if args.json:
        for row in models_json(models):
            _emit(row, True)
    else:
        for line in format_models(models):
            _emit(line, False)
        if not models:
            _info("the server has no servable model")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """0 when SERVING, 1 for anything else, unreachable included: the contract of a container HEALTHCHECK."""
    from hark.client import HarkError

    with _connect(args, args.timeout) as client:
        try:
            status = client.health(args.service)
        except HarkError as e:
            print(f"{PROG}: error: {e.code.name}: {e.details}", file=sys.stderr)
            return EXIT_FAILURE
    print(status, flush=True)
    return EXIT_OK if status == "SERVING" else EXIT_FAILURE


def cmd_control_check(args: argparse.Namespace) -> int:
    """POST /control-check on the server's metrics port; print each version's accuracy and misses."""
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({k: v for k, v in (("model", args.model), ("version", args.model_version)) if v})
    url = f"http://{args.server}/control-check" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=args.timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return _fail(
            f"cannot reach the metrics port at {args.server}: {reason} (is the server running with "
            "HARK_METRICS_PORT set, and are you on its host?)",
            EXIT_UNAVAILABLE,
        )
    except http.client.HTTPException:
        return _fail(
            f"{args.server} does not answer HTTP: give the server's metrics port (HARK_METRICS_PORT), "
            "not its gRPC port",
            EXIT_UNAVAILABLE,
        )
    try:
        payload = json.loads(body)
    except ValueError:
        return _fail(f"{url} answered HTTP {status} with something that is not JSON", EXIT_FAILURE)
    if "results" not in payload:
        message = str(payload.get("error", f"HTTP {status}"))
        return _fail(message, EXIT_BAD_REQUEST if status in (400, 404) else EXIT_FAILURE)
    code = EXIT_OK
    for result in payload["results"]:
        if result.get("error") or (result.get("accuracy") or 0.0) < args.min_accuracy:
            code = EXIT_FAILURE
        if args.json:
            _emit(result, True)
            continue
        name = f"{result['model']} v{result['version']}"
        if result.get("error"):
            _emit(f"{name}  FAILED: {result['error']}", False)
            continue
        _emit(
            f"{name}  accuracy {result['accuracy']:.3f} ({result['correct']}/{result['clips']})  "
            f"{result['duration_s']:.2f} s",
            False,
        )
        for miss in result.get("misses", []):
            _emit(f"  miss  {miss['path']}  labelled {miss['label']}, heard {miss['predicted'] or 'nothing'}", False)
    return code


# --------------------------------------------------------------------------------------------- helpers


def exit_code_for_status(code_name: str) -> int:
    """Map a gRPC status name to the exit code documented in the module docstring."""
    if code_name in _BAD_REQUEST_CODES:
        return EXIT_BAD_REQUEST
    if code_name in _RETRY_LATER_CODES:
        return EXIT_UNAVAILABLE
    return EXIT_FAILURE


class _Feed:
    """The audio of ``hark stream``: a whole file, or stdin decoded as it arrives, with what was sent so far.

    A decoding error in the middle of stdin cannot be raised where it happens (gRPC reads the chunks on its
    own thread); it ends the stream and waits in :attr:`error` to be reported.
    """

    def __init__(self, source: Iterable[AudioChunk], rate: int, encoding: str, duration_s: float | None) -> None:
        self._source = iter(source)
        self.rate = rate
        self.encoding = encoding
        self.duration_s = duration_s
        self.sent_s = 0.0
        self.error: Exception | None = None
        self._first: AudioChunk | None = None

    def prime(self) -> None:
        """Read the first chunk now, so a header that is not audio fails before the stream starts."""
        self._first = next(self._source, None)

    def chunks(self, progress: _Progress | None) -> Iterator[AudioChunk]:
        from hark.core.audio import AudioError

        width = 2 if self.encoding == "pcm_s16le" else 4
        pending = [self._first] if self._first is not None else []
        self._first = None
        try:
            for chunk in pending:
                yield self._count(chunk, width, progress)
            for chunk in self._source:
                yield self._count(chunk, width, progress)
        except AudioError as e:
            self.error = e

    def _count(self, chunk: AudioChunk, width: int, progress: _Progress | None) -> AudioChunk:
        self.sent_s += (len(chunk) / width if isinstance(chunk, bytes) else len(chunk)) / self.rate
        if progress is not None:
            progress.update()
        return chunk


def _stream_feed(args: argparse.Namespace) -> _Feed:
    """What ``hark stream`` sends: the whole file read first, or stdin as it arrives (WAV/FLAC or --raw PCM)."""
    from hark.client import read_clip, split_chunks
    from hark.client.pipe import decoded_chunks, raw_chunks
    from hark.core.audio import AudioError

    if args.raw and args.path != "-":
        raise AudioError("--raw reads headerless PCM from stdin: use it with '-'")
    if args.path != "-":
        samples = read_clip(args.path, args.rate)
        return _Feed(split_chunks(samples, args.rate, args.chunk_ms), args.rate, "pcm_s16le", len(samples) / args.rate)
    stdin = _stdin_bytes()
    if args.raw:
        encoding = f"pcm_{args.encoding}"
        feed = _Feed(
            raw_chunks(stdin, encoding=args.encoding, rate=args.rate, chunk_ms=args.chunk_ms), args.rate, encoding, None
        )
    else:
        feed = _Feed(decoded_chunks(stdin, rate=args.rate, chunk_ms=args.chunk_ms), args.rate, "pcm_s16le", None)
    feed.prime()
    return feed


def _stdin_bytes() -> BinaryIO:
    """stdin as unbuffered bytes where it is a file descriptor (a pipe, a terminal).

    gRPC reads the chunks on a daemon thread, which a Ctrl-C leaves blocked in a read; a BufferedReader's
    lock held there would abort the interpreter's shutdown. Where stdin is not a descriptor (embedded, in
    tests) its buffer serves.
    """
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return sys.stdin.buffer
    return open(fd, "rb", buffering=0, closefd=False)  # lives as long as the process


def _source_name(path: str) -> str:
    return "stdin" if path == "-" else path


class _Progress:
    """``hark: sent 12.0 of 60.0 s (20%)`` on stderr: rewritten in place on a terminal, a line per 10% elsewhere."""

    def __init__(self, feed: _Feed, out: TextIO) -> None:
        self._feed = feed
        self._out = out
        self._tty = out.isatty()
        self._shown_step = -1
        self._lock = threading.Lock()
        self._drawn = False

    def update(self) -> None:
        sent, total = self._feed.sent_s, self._feed.duration_s
        step = int(10 * sent / total) if total else int(sent // 10)  # tenths of the file, or every 10 s of stdin
        if step == self._shown_step:
            return
        self._shown_step = step
        text = f"{PROG}: sent {sent:.1f}" + (f" of {total:.1f} s ({100 * sent / total:.0f}%)" if total else " s")
        with self._lock:
            if self._tty:
                self._out.write(f"\r\033[K{text}")
                self._drawn = True
            else:
                self._out.write(text + "\n")
            self._out.flush()

    def clear(self) -> None:
        with self._lock:
            if self._drawn:
                self._out.write("\r\033[K")
                self._out.flush()
                self._drawn = False


class _Meter:
    """The live line of ``hark listen``: input level and the best classes of the latest hop, in place on stderr."""

    BAR: Final = 20
    FLOOR_DBFS: Final = -60.0

    def __init__(self, out: TextIO, *, enabled: bool) -> None:
        self._out = out
        self.enabled = enabled
        self._level_dbfs = -120.0
        self._drawn = False

    def watch(self, chunks: Iterable[AudioChunk]) -> Iterator[AudioChunk]:
        """Pass the chunks on, noting each one's level (on gRPC's request thread; a float store is atomic)."""
        from hark.core.audio import rms_dbfs

        for chunk in chunks:
            if not isinstance(chunk, bytes):
                self._level_dbfs = rms_dbfs(chunk)
            yield chunk

    def show(self, hop: HopScores) -> None:
        if not self.enabled:
            return
        filled = round(self.BAR * min(1.0, max(0.0, 1 - self._level_dbfs / self.FLOOR_DBFS)))
        bar = "#" * filled + "-" * (self.BAR - filled)
        best = sorted(hop.scores.items(), key=lambda kv: kv[1], reverse=True)[:3]
        ranked = "  ".join(f"{label} {p:.2f}" for label, p in best)
        self._out.write(f"\r\033[K{self._level_dbfs:6.1f} dBFS [{bar}]  {ranked}")
        self._out.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self._out.write("\r\033[K")
            self._out.flush()
            self._drawn = False


class _closing:
    """Close a client on the way out; after Ctrl-C, give the channel's close a second at most.

    An interrupted stream can leave gRPC's request thread inside the audio source (a pipe, a device)
    when the channel closes, and closing then may wait for it; the process is ending anyway, so it does
    not wait long (the socket closes with the process and the server sees the stream cancelled).
    """

    def __init__(self, client: HarkClient) -> None:
        self.client = client

    def __enter__(self) -> HarkClient:
        return self.client

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None or not issubclass(exc_type, KeyboardInterrupt):
            self.client.close()
            return
        closer = threading.Thread(target=self.client.close, name="hark-close", daemon=True)
        closer.start()
        closer.join(1.0)


def _port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound (as the metrics server binds it), or None when it can or is not fixed.

    The server checks too, but as a log line after the model has loaded; a clash here is one line before.
    """
    import socket

    if port <= 0:
        return None
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
            probe.bind((host.strip("[]"), port))
    except OSError as e:
        return e.strerror or str(e)
    return None


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _fail_rpc(code_name: str, details: str, server: str) -> int:
    message = f"{code_name}: {details}"
    if code_name == "UNAVAILABLE":
        message += f" (is a Hark server running at {server}? start one with `hark serve`)"
    return _fail(message, exit_code_for_status(code_name))


def _file_failed(path: str, message: str, as_json: bool) -> None:
    """Report one file's failure: on stderr for people and, with --json, as {"path", "error"} on stdout."""
    print(f"{PROG}: error: {message if path in message else f'{path}: {message}'}", file=sys.stderr)
    if as_json:
        _emit({"path": path, "error": message}, True)


def _info(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _emit(item: dict[str, Any] | str, as_json: bool, out: TextIO | None = None) -> None:
    """One line on stdout, flushed at once so a pipe sees live detections as they happen."""
    line = json.dumps(item, ensure_ascii=False, allow_nan=False) if as_json else str(item)
    print(line, file=out or sys.stdout, flush=True)


def _self_command() -> str:
    """How the user ran us, for copy-paste hints: ``.venv/bin/hark`` from ``make run``, else ``hark``."""
    argv0 = sys.argv[0] if sys.argv else PROG
    if argv0.endswith(("cli.py", "__main__.py")):
        return f"{_relative(sys.executable)} -m hark.cli"
    if os.sep in argv0:
        return _relative(argv0)
    return PROG


def _relative(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


def _connect_address(host: str, port: int) -> str:
    """Where a client on this machine connects to reach a server bound to ``host``."""
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _rounded(x: float, digits: int = 6) -> float | None:
    return round(float(x), digits) if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------ formatting


def describe_started(s: StreamStarted) -> str:
    labels = ", ".join(s.labels)
    return f"{s.model} v{s.version} (window {s.window_s:.2f} s, hop {s.hop_s:.2f} s; labels: {labels})"


def _class_threshold(text: str) -> tuple[str, float]:
    """``snare=0.4`` -> ``("snare", 0.4)``, for ``hark stream --class-threshold``."""
    label, sep, value = text.partition("=")
    try:
        threshold = float(value)
    except ValueError:
        threshold = -1.0
    if not sep or not label or not 0.0 < threshold <= 1.0:
        raise argparse.ArgumentTypeError(f"expected CLASS=T with T in (0, 1], got {text!r}")
    return label, threshold


def format_detection(d: Detection) -> str:
    """``  1.23 s  yes         0.97``: time in the stream's audio, label, score; an offset (multi-label
    models) reads ``  1.80 s  snare        end (from 1.23 s)``."""
    if d.kind == "offset":
        return f"{d.time_s:6.2f} s  {d.label:<12} end (from {d.onset_s or 0.0:.2f} s)"
    return f"{d.time_s:6.2f} s  {d.label:<12} {d.score:.2f}"


def format_scores(h: HopScores, top: int = 3) -> str:
    """One hop's best few classes, indented under the detections so events still stand out."""
    best = sorted(h.scores.items(), key=lambda kv: kv[1], reverse=True)[:top]
    ranked = "  ".join(f"{label} {p:.2f}" for label, p in best)
    return f"{h.start_s:6.2f}-{h.end_s:.2f} s   · {ranked}{'  (quiet)' if h.gated else ''}"


def format_classification(path: str, c: Classification) -> str:
    """``clip.wav  yes  0.97``; when several classes are active (a multi-label model), every one of them."""
    if len(c.active) > 1:
        return f"{path}  " + "  ".join(f"{label} {score:.2f}" for label, score in c.active.items())
    return f"{path}  {c.label}  {c.score:.2f}"


def detection_json(d: Detection) -> dict[str, Any]:
    """An event as a JSON object; an offset (multi-label models) also says its kind and onset time."""
    out = {"label": d.label, "score": _rounded(d.score), "time_s": _rounded(d.time_s)}
    if d.kind != "onset":
        out |= {"kind": d.kind, "onset_s": _rounded(d.onset_s) if d.onset_s is not None else None}
    return out


def scores_json(h: HopScores) -> dict[str, Any]:
    return {
        "start_s": _rounded(h.start_s),
        "end_s": _rounded(h.end_s),
        "scores": {label: _rounded(p) for label, p in h.scores.items()},
        "gated": h.gated,
    }


def classification_json(path: str, c: Classification) -> dict[str, Any]:
    return {
        "path": path,
        "label": c.label,
        "score": _rounded(c.score),
        "scores": {label: _rounded(p) for label, p in c.scores.items()},
        "model": c.model,
        "version": c.version,
    }


def models_json(models: Iterable[ModelInfo]) -> list[dict[str, Any]]:
    return [
        {
            "model": m.name,
            "version": v.version,
            "default": v.version == m.default_version,
            "labels": list(v.labels),
            "window_s": v.window_s,
            "hop_s": v.hop_s,
            "sample_rate_hz": v.sample_rate_hz,
            "test_accuracy": _rounded(v.test_accuracy),
            "sha256": v.sha256,
            "created_at": v.created_at,
        }
        for m in models
        for v in m.versions
    ]


def format_models(models: Sequence[ModelInfo]) -> list[str]:
    """A table, one row per version; ``*`` marks the version an unpinned request gets."""
    rows = [("MODEL", "VERSION", "WINDOW", "HOP", "ACCURACY", "LABELS")]
    for m in models:
        for v in m.versions:
            rows.append(
                (
                    m.name,
                    f"{v.version}{'*' if v.version == m.default_version else ''}",
                    f"{v.window_s:.2f} s",
                    f"{v.hop_s:.2f} s",
                    f"{v.test_accuracy:.3f}",
                    ", ".join(v.labels),
                )
            )
    if len(rows) == 1:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in rows]


if __name__ == "__main__":
    sys.exit(main())
