"""Operating curves: what each false-alarm budget buys, per engine, so models are compared at equal false alarms.

``hark engines curve VERSION [VERSION ...] --data DIR --tune-data TUNE`` tunes each version's per-class
thresholds for every budget in ``--budgets`` on ``TUNE``'s validation keyword-free speech, exactly as ``hark
engines thresholds`` would, and measures event F1, recall and false alarms per hour per engine on ``DIR``'s
streams with each set. One budget is one operating point; a model that is better only because its thresholds
sit higher shows up on the same curve as the other, further left. Every stream is scored once per version and
each threshold's false alarms on the tuning speech are counted once, so a curve costs about one ``hark engines
eval`` plus one ``hark engines thresholds`` per version. The version's manifest is not changed. ``--at`` reads
each curve's F1 at equal false-alarm rates, the comparison a single budget cannot make; ``--allocate`` splits each
budget as ``hark engines thresholds --allocate`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np

from hark.core.model_store import LoadedModel, VerificationError, load_version
from hark_training.engine_eval import ALLOCATIONS, events_report, score_streams, threshold_tuner

DEFAULT_BUDGETS: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0)
DEFAULT_RATES: tuple[float, ...] = (5.0, 10.0, 20.0)
DEFAULT_DATA = Path("data/keywords")


def operating_curve(
    loaded: LoadedModel,
    data_dir: Path | Sequence[Path],
    tune_dir: Path,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    floor: float = 0.6,
    tune_splits: Sequence[str] = ("val",),
    splits: Sequence[str] = ("val", "test"),
    allocate: str = "equal",
) -> list[dict[str, Any]]:
    """One point per budget: the thresholds tuned for it (split over the keywords as ``allocate`` says) and the
    per-engine event figures they give, on the streams of ``data_dir`` (of several folders, pooled)."""
    m = loaded.manifest
    choose = threshold_tuner(loaded, tune_dir, tune_splits, allocate)  # each threshold counted once for every budget
    folders = [data_dir] if isinstance(data_dir, Path) else list(data_dir)
    scored = [stream for folder in folders for stream in score_streams(loaded, folder, splits)]
    points = []
    for budget in sorted(budgets):
        thresholds = choose(budget, floor)
        points.append(
            {"budget_per_hour": budget, "thresholds": thresholds, "engines": events_report(m, scored, thresholds)}
        )
    return points


def f1_at_rate(points: Sequence[Mapping[str, Any]], engine: str, rate: float) -> float | None:
    """The best event F1 an engine's curve gives at no more than ``rate`` false alarms an hour: two models compared
    at one rate, as keyword spotters are (recall at a fixed false-alarm rate).

    Budgets are tuned on other speech, so the measured rates need not rise with the budget: the points are taken
    in order of their rate (the best F1 where two share one) and joined by straight lines, and the answer is the
    best of the line up to ``rate``. None where the curve never gets that low (no budget tried operates there;
    reading such a curve at its lowest point instead would favour the model that cannot), or where the engine has
    no keyword events to score.
    """
    best: dict[float, float] = {}
    for p in points:
        e = p["engines"].get(engine)
        if e is None or e["event_f1"] is None or e["false_alarms_per_hour"] is None:
            continue
        fa = float(e["false_alarms_per_hour"])
        best[fa] = max(best.get(fa, 0.0), float(e["event_f1"]))
    rates = sorted(best)
    if not rates or rate < rates[0]:
        return None
    reached = [best[r] for r in rates if r <= rate]
    return max(*reached, float(np.interp(rate, rates, [best[r] for r in rates])))


def f1_at_rates(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], rates: Sequence[float]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per version, per engine, the event F1 at each rate (keys are the rates as written, e.g. ``"10"``)."""
    engines = sorted({e for points in curves.values() for p in points for e in p["engines"]})
    return {
        name: {engine: {f"{r:g}": f1_at_rate(points, engine, r) for r in rates} for engine in engines}
        for name, points in curves.items()
    }


def format_f1_at(table: Mapping[str, Mapping[str, Mapping[str, float | None]]]) -> str:
    """One line per engine and version: event F1 at equal false alarms."""
    lines = ["best event F1 within each rate of false alarms per hour (-: the curve never gets that low)"]
    for name, engines in table.items():
        for engine, at in engines.items():
            cells = ", ".join(f"{r}/h {'-' if f1 is None else f'{f1:.3f}'}" for r, f1 in at.items())
            lines.append(f"  {engine} {name}: {cells}")
    return "\n".join(lines)


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], out: Path, rates: Sequence[float] = ()) -> None:
    """Event F1 against false alarms per hour, one panel per engine, one line per version, budgets marked."""
    engines = sorted({e for points in curves.values() for p in points for e in p["engines"]})
    fig, axes = plt.subplots(1, len(engines), figsize=(4.2 * len(engines), 3.8), squeeze=False)
    for ax, engine in zip(axes[0], engines, strict=True):
        for name, points in curves.items():
            xy = [
                (p["engines"][engine]["false_alarms_per_hour"], p["engines"][engine]["event_f1"], p["budget_per_hour"])
                for p in points
                if engine in p["engines"] and p["engines"][engine]["event_f1"] is not None
            ]
            if not xy:
                continue
            line = ax.plot([x for x, _, _ in xy], [y for _, y, _ in xy], marker="o", label=name)[0]
            for x, y, b in xy:
                ax.annotate(
                    f"{b:g}", (x, y), fontsize=7, color=line.get_color(), xytext=(3, 3), textcoords="offset points"
                )
        for rate in rates:
            ax.axvline(rate, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(engine)
        ax.set_xlabel("false alarms per hour")
        ax.set_ylabel("event F1")
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle("Operating curves: thresholds tuned per budget (numbers: budget per hour)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def format_curve(name: str, points: Sequence[Mapping[str, Any]]) -> str:
    """A line per budget: event F1 (recall) / false alarms per hour per engine."""
    lines = [name]
    for p in points:
        cells = []
        for engine, e in sorted(p["engines"].items()):
            f1, recall, fa = e["event_f1"], e["event_recall"], e["false_alarms_per_hour"]
            f1_text = "-" if f1 is None else f"{f1:.3f} ({recall:.3f})"
            cells.append(f"{engine} {f1_text} / {'-' if fa is None else f'{fa:.1f}'}")
        lines.append(f"  budget {p['budget_per_hour']:g}: " + "; ".join(cells))
    return "\n".join(lines)


def _per_hour_list(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not values or any(b <= 0 for b in values):
        raise argparse.ArgumentTypeError(f"{what} must be positive, got {text!r}")
    return values


def budget_list(text: str) -> tuple[float, ...]:
    return _per_hour_list(text, "budgets")


def rate_list(text: str) -> tuple[float, ...]:
    return _per_hour_list(text, "rates")


def _cmd_curve(args: argparse.Namespace) -> int:
    curves: dict[str, list[dict[str, Any]]] = {}
    data = args.data or [DEFAULT_DATA]
    try:
        for version in args.versions:
            loaded = load_version(version)
            curves[str(version)] = operating_curve(
                loaded,
                data,
                args.tune_data,
                args.budgets,
                args.floor,
                args.tune_splits.split(","),
                allocate=args.allocate,
            )
            print(format_curve(str(version), curves[str(version)]))
    except (OSError, ValueError, RuntimeError, VerificationError) as e:
        print(f"cannot draw the operating curve: {e}", file=sys.stderr)
        return 1
    at = f1_at_rates(curves, args.at)
    print(format_f1_at(at))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "data": [str(d) for d in data],
            "tune_data": str(args.tune_data),
            "allocate": args.allocate,
            "curves": curves,
            "f1_at": at,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        plot_curves(curves, args.plot, args.at)
        print(f"wrote {args.plot}")
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark engines curve``."""
    cu = commands.add_parser(
        "curve",
        help="event F1 and false alarms per hour per engine at several false-alarm budgets",
        description="Tune thresholds for each budget on validation keyword-free speech and measure each set per "
        "engine, for one or more versions: models compared at equal false alarms. Manifests are not changed.",
    )
    cu.add_argument("versions", type=Path, nargs="+", metavar="VERSION", help="version folders to compare")
    cu.add_argument(
        "--data",
        type=Path,
        action="append",
        metavar="DIR",
        help="streams to measure on; repeat it to pool several data sets, e.g. two hours of the same engines "
        f"(default: {DEFAULT_DATA})",
    )
    cu.add_argument(
        "--tune-data", type=Path, required=True, help="data folder whose keyword-free streams set the thresholds"
    )
    cu.add_argument("--tune-splits", default="val", help="splits of --tune-data to tune on (default: %(default)s)")
    cu.add_argument(
        "--budgets",
        type=budget_list,
        default=DEFAULT_BUDGETS,
        metavar="LIST",
        help=f"false alarms per hour, comma-separated (default: {','.join(f'{b:g}' for b in DEFAULT_BUDGETS)})",
    )
    cu.add_argument(
        "--at",
        type=rate_list,
        default=DEFAULT_RATES,
        metavar="LIST",
        help="false alarms per hour within which to read each curve's best event F1, comma-separated "
        f"(default: {','.join(f'{r:g}' for r in DEFAULT_RATES)})",
    )
    cu.add_argument(
        "--floor", type=float, default=0.6, help="lowest threshold a keyword may get (default: %(default)s)"
    )
    cu.add_argument(
        "--allocate",
        choices=ALLOCATIONS,
        default="equal",
        help="split each budget in equal shares per keyword, or where it keeps most keyword events of the "
        "tuning data's keyword streams (default: %(default)s)",
    )
    cu.add_argument("--out", type=Path, help="write the curves as JSON here")
    cu.add_argument("--plot", type=Path, help="draw them here (PNG)")
    cu.set_defaults(func=_cmd_curve)
