"""How early does each signal warn of the escape? The study behind `abrupt forecast` (issue 19).

Input: run directories (or sweep directories, whose trials are runs) with metrics.jsonl. Runs are
split by position into a calibration half (even indices) and a held-out half (odd); nothing is
tuned on the held-out runs, on which every number reported is measured.

- Lead time of a signal (the evaluation L_mask, and each logged progress measure `prog_*`): the
  signal warns at the first step after the plateau's start where its departure from its plateau
  value (forecast.departure) exceeds `noise_k` times its robust plateau noise and stays above for
  `hold` logs; lead = escape_step - that step. A warning in a run that never escapes, or one
  that is withdrawn (the departure falls back below the threshold for `hold` logs before the
  escape), is a false alarm.
- Forecast error: every forecast made before the escape (forecast.history; for a progress
  measure with the target calibrated on the calibration half), against how far ahead it was
  made: |forecast - escape| and whether the interval held the escape.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..run.rundir import read_config, read_metrics
from . import forecast as fc
from .transition import detect


@dataclass
class Run:
    name: str
    rows: list[dict[str, Any]]
    after: int  # the curriculum's end: the plateau is sought after it
    escape: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.escape = detect(self.rows, after=self.after)["escape_step"]


def load_runs(paths: list[Path]) -> list[Run]:
    """Runs from run directories and sweep directories (every trial with metrics), sorted by
    name."""
    dirs: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").exists():
            dirs.append(p)
        elif p.is_dir():
            dirs += sorted(d for d in p.iterdir() if (d / "metrics.jsonl").exists())
        else:
            raise FileNotFoundError(f"{p}: neither a run directory nor a sweep directory")
    runs = [
        Run(f"{d.parent.name}/{d.name}", read_metrics(d), read_config(d).curriculum.end())
        for d in dirs
    ]
    return sorted(runs, key=lambda r: r.name)


def signals(runs: list[Run]) -> list[str]:
    keys = {k for r in runs for row in r.rows[:1] for k in row if k.startswith("prog_")}
    return [fc.LOSS, *sorted(keys)]


def warning(run: Run, signal: str, noise_k: float = 3.0, hold: int = 3) -> dict[str, Any]:
    """The first sustained crossing of the noise threshold: {'warn': step or None, 'false_alarm':
    bool}."""
    steps, d, _ = fc.departure(run.rows, signal, run.after)
    if len(steps) < 2 * hold + 3:
        return {"warn": None, "false_alarm": False}
    sigma = fc.noise_level(d, max(len(d) // 4, 5))
    above = [x > noise_k * sigma for x in d]
    warn = next((i for i in range(len(d) - hold + 1) if all(above[i : i + hold])), None)
    if warn is None:
        return {"warn": None, "false_alarm": False}
    end = (
        len(d)
        if run.escape is None
        else next((i for i, s in enumerate(steps) if s >= run.escape), len(d))
    )
    withdrawn = any(not any(above[j : j + hold]) for j in range(warn, max(warn, end - hold + 1)))
    return {
        "warn": steps[warn],
        "false_alarm": run.escape is None or withdrawn or steps[warn] > run.escape,
    }


def lead_table(runs: list[Run]) -> list[dict[str, Any]]:
    """Per signal over the given runs: median and range of lead times, false alarms, misses."""
    out = []
    for sig in signals(runs):
        leads, false, missed = [], 0, 0
        for run in runs:
            w = warning(run, sig)
            if w["false_alarm"]:
                false += 1
            elif w["warn"] is None or run.escape is None:
                missed += run.escape is not None
            else:
                leads.append(run.escape - w["warn"])
        out.append(
            {
                "signal": sig,
                "runs": len(runs),
                "warned": len(leads),
                "false_alarms": false,
                "missed": missed,
                "lead_median": statistics.median(leads) if leads else None,
                "lead_min": min(leads) if leads else None,
                "lead_max": max(leads) if leads else None,
            }
        )
    return out


def forecast_errors(
    runs: list[Run], signal: str, target: float, every: int = 1
) -> list[dict[str, Any]]:
    """Every forecast made before the escape, on runs that escaped: horizon, error, covered."""
    out = []
    for run in runs:
        if run.escape is None:
            continue
        seen = [r for r in run.rows if r["step"] < run.escape]
        for f in fc.history(seen, signal, target, run.after, every=every):
            if f["escape"] is None or f["reason"] == "escaped":
                continue
            out.append(
                {
                    "run": run.name,
                    "signal": signal,
                    "made_at": f["step"],
                    "horizon": run.escape - f["step"],
                    "forecast": f["escape"],
                    "error": abs(f["escape"] - run.escape),
                    "covered": f["low"] <= run.escape <= f["high"],
                }
            )
    return out


def study(runs: list[Run], every: int = 1) -> dict[str, Any]:
    """Calibrate on even-indexed runs, report on odd-indexed ones (and lead times on all)."""
    calib, held = runs[0::2], runs[1::2]
    targets = {fc.LOSS: fc.ESCAPE_DEPARTURE}
    for sig in signals(runs)[1:]:
        t = fc.calibrate([(r.rows, r.after) for r in calib], sig)
        if t:
            targets[sig] = t
    errors = [e for sig, t in targets.items() for e in forecast_errors(held, sig, t, every)]
    return {
        "runs": [
            {"name": r.name, "escape": r.escape, "after": r.after, "held_out": i % 2 == 1}
            for i, r in enumerate(runs)
        ],
        "targets": targets,
        "leads_held_out": lead_table(held),
        "leads_all": lead_table(runs),
        "errors": errors,
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return "–" if v is None else str(v)


def _lead_md(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| signal | runs | warned | lead median (steps) | lead range | false alarms | missed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rng = "–" if r["lead_min"] is None else f"{r['lead_min']} to {r['lead_max']}"
        out.append(
            f"| {r['signal']} | {r['runs']} | {r['warned']} | {_fmt(r['lead_median'])} | {rng} | "
            f"{r['false_alarms']} | {r['missed']} |"
        )
    return out


HORIZONS = (0, 100, 250, 500, 1000, 2000, 10**9)


def error_by_horizon(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median |forecast - escape| and interval coverage per signal and horizon bin (steps ahead)."""
    out = []
    for sig in sorted({e["signal"] for e in errors}):
        for lo, hi in zip(HORIZONS, HORIZONS[1:]):
            sel = [e for e in errors if e["signal"] == sig and lo < e["horizon"] <= hi]
            if sel:
                out.append(
                    {
                        "signal": sig,
                        "horizon": f"{lo}-{hi}" if hi < 10**9 else f">{lo}",
                        "forecasts": len(sel),
                        "runs": len({e["run"] for e in sel}),
                        "median_error": statistics.median(e["error"] for e in sel),
                        "coverage": sum(e["covered"] for e in sel) / len(sel),
                    }
                )
    return out


def write(result: dict[str, Any], out: Path) -> Path:
    """results.json, summary.md and error_vs_horizon.png in `out`; returns summary.md's path."""
    from ..plots import figure
    from ..run.rundir import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    by_h = error_by_horizon(result["errors"])
    atomic_write_json(out / "results.json", {**result, "error_by_horizon": by_h})
    held = [r for r in result["runs"] if r["held_out"]]
    lines = [
        "# Forecasting the escape (issue 19)",
        "",
        f"{len(result['runs'])} runs, {len(held)} held out (odd positions); targets calibrated on "
        "the others: " + ", ".join(f"{k} {v:.3g}" for k, v in result["targets"].items()) + ".",
        "",
        "## Lead time of each signal, held-out runs",
        "",
        *_lead_md(result["leads_held_out"]),
        "",
        "## Lead time of each signal, all runs",
        "",
        *_lead_md(result["leads_all"]),
        "",
        "## Forecast error against how far ahead it was made (held-out runs)",
        "",
        "| signal | steps ahead | forecasts | runs | median abs error (steps) | interval held the "
        "escape |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['signal']} | {r['horizon']} | {r['forecasts']} | {r['runs']} | "
        f"{r['median_error']:.0f} | {r['coverage']:.0%} |"
        for r in by_h
    ]
    lines += ["", "| run | escape step | held out |", "|---|---|---|"]
    lines += [
        f"| {r['name']} | {_fmt(r['escape'])} | {'yes' if r['held_out'] else ''} |"
        for r in result["runs"]
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    with figure(out / "error_vs_horizon.png", figsize=(6.4, 4.2)) as (fig, axes):
        ax = axes[0][0]
        for sig in sorted({e["signal"] for e in result["errors"]}):
            sel = [e for e in result["errors"] if e["signal"] == sig]
            ax.scatter(
                [e["horizon"] for e in sel],
                [max(e["error"], 1) for e in sel],
                s=8,
                alpha=0.6,
                label=sig,
            )
        ax.plot(
            [1, max([e["horizon"] for e in result["errors"]] or [10])],
            [1, max([e["horizon"] for e in result["errors"]] or [10])],
            color="gray",
            ls=":",
            lw=0.8,
            label="error = steps ahead",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("steps before the escape when the forecast was made")
        ax.set_ylabel("|forecast - actual escape| (steps)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    return out / "summary.md"
