"""How early, and how well, is the escape forecast? The study behind `abrupt forecast`, by
replaying the forecaster on committed runs' metrics rows step by step (no training).

Input: run directories (or folders holding them, searched recursively) with metrics.jsonl (and
signal.jsonl, the dense signal, where training wrote one). Each run belongs to a task family
(forecast.family: `matrix`, `sequence`). Within a family and preset, the runs that escape with a
dense signal, and apart from them those without, are sorted by name and split by position: even
positions are **calibration runs** (the targets, `forecast.calibrate_dense` and
`forecast.calibrate`, and the interval's calibration table, `calibration.Calibration`, are fit on
them and nowhere else), odd positions **evaluation runs** (every error and coverage reported is
measured on them). Runs that never escape take no part in either: on them every forecast is a
false alarm. The signals: `train_loss` (forecast.DENSE: the loss forecast from the dense signal,
calibrated per preset, rows 'family:preset', by the curve that forecast its calibration runs
best, `dense_fit`), `loss` (from the logged evaluation loss alone) and the progress measures.

For each evaluation run and signal, with L = escape_step - plateau_start its plateau's length:

- lead of the first warning (`warning`): the first sustained departure above the plateau's noise;
  lead of the first forecast: escape - the first step with a forecast (both also / L);
- error at 75%, 50%, 25% of L before the escape: |forecast - escape| / L, the forecast being the
  one the run showed at its last log at or before escape - q L (none there: no forecast);
- coverage: the share of its forecasts made before the escape whose 90% interval held it (and,
  for comparison, the share the fit's own spread held).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tasks
from ..run.rundir import (
    atomic_write_json,
    atomic_write_text,
    read_config,
    read_metrics,
    read_signal,
)
from . import calibration as cal
from . import forecast as fc
from .transition import detect, run_kind

CAL, EVAL, NEVER = "calibration", "evaluation", "never escapes"
BEFORE = (0.75, 0.5, 0.25)  # the times to judge at: these fractions of L before the escape


@dataclass
class Run:
    name: str
    rows: list[dict[str, Any]]
    after: int  # the curriculum's end: the plateau is sought after it
    escape: int | None = field(init=False)
    start: int | None = field(init=False)
    family: str = field(init=False)
    role: str = ""
    kind: str | None = None  # transition.RUN_KINDS, from its configuration; None: from the rows
    dense: tuple[list[int], list[float]] | None = None  # signal.jsonl's (steps, losses), if any
    preset: str = ""  # its preset's name (the dense fit is also calibrated per preset)

    def __post_init__(self) -> None:
        self.kind = self.kind or run_kind(self.rows)
        found = detect(self.rows, after=self.after, kind=self.kind)
        self.escape, self.start = found["escape_step"], found["plateau_start"]
        self.family = fc.family(self.kind)

    @property
    def length(self) -> int:
        """L, the plateau's length in steps (at least 1)."""
        return max(1, (self.escape or 0) - (self.start or 0))


def load_runs(paths: list[Path]) -> tuple[list[Run], list[str]]:
    """Runs from run directories and folders holding them (searched recursively), sorted by
    name, with their roles set (`assign_roles`), and the paths dropped as repeats: each run is
    counted once, by its resolved directory (a run given twice, or given and also found in a
    folder given, would otherwise be a calibration and an evaluation run at once).
    FileNotFoundError for a path that is neither."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").exists():
            found.append(p)
        elif p.is_dir():
            found += sorted(m.parent for m in p.rglob("metrics.jsonl"))
        else:
            raise FileNotFoundError(f"{p}: neither a run directory nor a folder of runs")
    dirs: dict[Path, Path] = {}
    repeats = []
    for d in found:
        if d.resolve() in dirs:
            repeats.append(str(d))
        else:
            dirs[d.resolve()] = d
    runs = []
    for d in dirs.values():
        cfg = read_config(d)
        kind = tasks.get(cfg.task.name).run_kind(cfg)
        sig = read_signal(d)
        dense = ([r["step"] for r in sig], [r["loss"] for r in sig]) if sig else None
        after = cfg.curriculum.end()
        runs.append(Run(str(d), read_metrics(d), after, kind=kind, dense=dense, preset=cfg.preset))
    return assign_roles(sorted(runs, key=lambda r: r.name)), repeats


def assign_roles(runs: list[Run]) -> list[Run]:
    """Per family, escaping runs alternate calibration / evaluation by name, those with a dense
    signal (signal.jsonl) apart from those without and per preset (so that each fit, and each
    preset's, has calibration and evaluation runs); the rest never escape."""

    def kind_of(r: Run) -> tuple[str, str, bool]:
        # only the dense fit is calibrated per preset: runs without keep their family's split
        return r.family, r.preset if r.dense else "", r.dense is not None

    for key in {kind_of(r) for r in runs}:
        escaping = sorted((r for r in runs if kind_of(r) == key and r.escape), key=lambda r: r.name)
        for i, r in enumerate(escaping):
            r.role = CAL if i % 2 == 0 else EVAL
    for r in runs:
        if not r.escape:
            r.role = NEVER
    return runs


def signals(runs: list[Run]) -> list[str]:
    """The signals to study: DENSE (the loss fit on the dense signal) where a run has one, the
    logged loss, the progress measures logged."""
    keys = {k for r in runs for row in r.rows[:1] for k in row if k.startswith("prog_")}
    dense = [fc.DENSE] if any(r.dense for r in runs) else []
    return [*dense, fc.LOSS, *sorted(keys)]


def takes(run: Run, signal: str, group: str) -> bool:
    """Whether `run` is studied for `signal` in `group` (a family; for DENSE a preset of it,
    'family:preset', and only runs with a dense signal)."""
    member = group in (run.family, f"{run.family}:{run.preset}")
    return member and (signal != fc.DENSE or run.dense is not None)


def groups(runs: list[Run], signal: str) -> list[str]:
    """What `signal` is calibrated for: each family; for DENSE each preset with a dense run
    instead (forecast.dense_group: the slide before the escape differs between presets)."""
    if signal != fc.DENSE:
        return sorted({r.family for r in runs})
    return sorted({f"{r.family}:{r.preset}" for r in runs if r.dense and r.preset})


def warning(run: Run, signal: str, noise_k: float = 3.0, hold: int = 3) -> dict[str, Any]:
    """The first sustained crossing of the noise threshold: {'warn': step or None, 'false_alarm':
    bool}. A warning in a run that never escapes, after its escape, or withdrawn before it (the
    departure falls back for `hold` logs), is a false alarm."""
    steps, d, _ = fc.departure(run.rows, signal, run.after, kind=run.kind)
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


def replay(
    run: Run, signal: str, target: float, every: int = 1, fit: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The fit's forecast (forecast.history, raw) at every `every`-th log the run showed before
    its escape (all its logs if it never escapes); `fit`: the dense fit's preset settings,
    {'shape': its curve, 'longest': its longest calibration plateau} (`dense_fit`; None or a
    key missing: the family's curve, no such limit)."""
    fit = fit or {}
    seen = [r for r in run.rows if run.escape is None or r["step"] < run.escape]
    if signal == fc.DENSE:
        return fc.history(
            seen,
            fc.LOSS,
            fc.ESCAPE_DEPARTURE,
            run.after,
            every=every,
            raw=True,
            kind=run.kind,
            dense=run.dense,
            dense_goal=target,
            dense_shape=fit.get("shape"),
            dense_longest=fit.get("longest"),
        )
    return fc.history(seen, signal, target, run.after, every=every, raw=True, kind=run.kind)


def error_at(shown: list[tuple[int, int | None]], run: Run, q: float) -> float | None:
    """|forecast - escape| / L of the forecast shown at the (escaping) run's last log at or
    before escape - q L, from (step, forecast or None) at each log; None where none was shown
    then."""
    assert run.escape is not None
    at = [x for step, x in shown if step <= run.escape - q * run.length]
    return abs(at[-1] - run.escape) / run.length if at and at[-1] is not None else None


def dense_fit(calib: list[Run]) -> tuple[float, dict[str, Any]] | None:
    """The dense fit's target and settings, (target, {'shape': curve, 'longest': steps}), for
    one preset from its calibration runs `calib`. 'longest': the longest of their plateaus (no
    forecast further than forecast.HORIZON times it from the plateau's start: the calibration
    knows nothing of slower runs, and a slide 10-100 times slower, at a 10-100 times smaller lr,
    was forecast to end and did not). 'shape': for each curve (forecast.CURVES) its target
    (forecast.calibrate_dense) and the fit's raw errors at the times BEFORE the escape (a run
    without a forecast then counts as off by L, as does an error above L); the curve with the
    smallest mean error over runs and times, the family's (forecast.SHAPES) on a tie (a mean, not
    a median: with few forecasts per run a median is often "none" for both). Where a preset's
    plateau is flat and its loss falls over a few hundred steps (`addition`) the exponential runs
    to the escape; where it slides (`mws`), the line. None when no run gives a target."""
    dense = [(r.rows, r.after, r.kind, r.dense) for r in calib]
    own = fc.SHAPES[calib[0].family]
    longest = max(r.length for r in calib)
    best: tuple[float, float, str] | None = None
    for shape in sorted(fc.CURVES, key=lambda c: c != own):
        t = fc.calibrate_dense(dense, shape=shape)
        if not t:
            continue
        errors: dict[float, list[float]] = {q: [] for q in BEFORE}
        for run in calib:
            # (where the dense signal has a gap the fit falls back to the logged loss: not this
            # curve's forecast)
            shown = [
                (f["step"], f["escape"] if f["signal"] == fc.DENSE else None)
                for f in replay(run, fc.DENSE, t, fit={"shape": shape, "longest": longest})
            ]
            for q in BEFORE:
                e = error_at(shown, run, q)
                errors[q].append(1.0 if e is None else min(e, 1.0))
        cost = statistics.fmean(e for v in errors.values() for e in v)
        if best is None or cost < best[0]:
            best = (cost, t, shape)
    return (best[1], {"shape": best[2], "longest": longest}) if best else None


def targets(runs: list[Run]) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """({'group/signal': target departure}, {'group/signal': settings} for the dense fit's keys)
    (groups: see `groups`): 0.2 for the loss, the dense fit's (`dense_fit`) and each measure's
    from the group's calibration runs (forecast.calibrate)."""
    out: dict[str, float] = {}
    fits: dict[str, dict[str, Any]] = {}
    for fam in sorted({r.family for r in runs}):
        calib = [r for r in runs if r.family == fam and r.role == CAL]
        for group in groups([r for r in runs if r.family == fam], fc.DENSE):
            mine = [r for r in calib if takes(r, fc.DENSE, group)]
            fit = dense_fit(mine) if mine else None
            if fit:
                out[f"{group}/{fc.DENSE}"], fits[f"{group}/{fc.DENSE}"] = fit
        out[f"{fam}/{fc.LOSS}"] = fc.ESCAPE_DEPARTURE
        for sig in signals([r for r in runs if r.family == fam]):
            if sig in (fc.DENSE, fc.LOSS):
                continue
            t = fc.calibrate([(r.rows, r.after, r.kind) for r in calib], sig)
            if t:
                out[f"{fam}/{sig}"] = t
    return out, fits


def fit_table(
    runs: list[Run], tgts: dict[str, float], fits: dict[str, dict[str, Any]], every: int = 1
) -> cal.Calibration:
    """The calibration table from the calibration runs' replayed forecasts (the dense fit's by
    its preset's settings, `fits`)."""
    scores: dict[str, list[tuple[str, float, float]]] = {}
    calib = [r for r in runs if r.role == CAL]
    for key, target in tgts.items():
        fam, sig = key.split("/", 1)
        for run in (r for r in calib if takes(r, sig, fam)):
            for f in replay(run, sig, target, every, fits.get(key)):
                # (a dense run's fit falls back to the logged loss where its signal has a gap)
                if f["raw"] is None or f["reason"] == "escaped" or f["signal"] != sig:
                    continue
                u = cal.elapsed(f["step"], f["raw"], f["start"])
                scores.setdefault(key, []).append(
                    (run.name, u, cal.score(f["step"], f["raw"], run.escape))
                )
    return cal.Calibration.fit(scores, tgts, [r.name for r in calib], fits)


def judge(
    run: Run,
    signal: str,
    target: float,
    table: cal.Calibration,
    every: int = 1,
    group: str | None = None,
):
    """One run and signal: its calibrated forecasts (by the table's entry of `group`, default the
    run's family, and the curve it names), and how they fared (see the module)."""
    made = []
    shown: list[tuple[int, int | None]] = []  # (step, calibrated forecast or None) at each log
    fit = table.dense_settings(group or run.family, signal)
    for f in replay(run, signal, target, every, fit):
        # a dense fit that fell back to the logged loss (a gap in its signal) is calibrated as
        # training calibrates it (forecast.forecast): as the family's loss
        dense = signal != fc.DENSE or f["signal"] == fc.DENSE
        c = fc.calibrated(
            fc.Forecast(**f),
            (group or run.family) if dense else run.family,
            signal if dense else fc.LOSS,
            table,
            target if dense else fc.ESCAPE_DEPARTURE,
        )
        shown.append((c.step, c.escape if c.reason != "escaped" else None))
        if c.escape is not None and c.reason != "escaped":
            made.append(
                {**f, "low_raw": f["low"], "high_raw": f["high"], "escape": c.escape}
                | {"low": c.low, "high": c.high}
            )
    out: dict[str, Any] = {"run": run.name, "signal": signal, "forecasts": len(made)}
    # the dense fit's warning: the logged loss's (a departure on the plateau is one event)
    out["warn"] = warning(run, fc.LOSS if signal == fc.DENSE else signal)
    if run.escape is None:  # refuted: the whole interval lies before the run's last log
        out["refuted"] = sum(m["high"] < run.rows[-1]["step"] for m in made)
        return out, made
    L, e = run.length, run.escape
    out["first_lead"] = (e - made[0]["step"]) / L if made else None
    for q in BEFORE:
        out[f"error_{q:g}"] = error_at(shown, run, q)
    out["covered"] = [m["low"] <= e <= m["high"] for m in made]
    out["raw_covered"] = [m["low_raw"] <= e <= m["high_raw"] for m in made]
    out["width"] = [(m["high"] - m["low"]) / L for m in made]
    return out, made


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def study(runs: list[Run], every: int = 1) -> dict[str, Any]:
    """Targets and the calibration table from the calibration runs; per family and signal, the
    numbers of the module's docstring on the evaluation runs and false alarms on the runs that
    never escape."""
    tgts, fits = targets(runs)
    table = fit_table(runs, tgts, fits, every)
    rows, points = [], []
    for key, target in tgts.items():
        fam, sig = key.split("/", 1)
        ev = [r for r in runs if r.role == EVAL and takes(r, sig, fam)]
        judged = []
        for run in ev:
            j, made = judge(run, sig, target, table, every, fam)
            judged.append(j)
            points += [
                {"run": run.name, "family": fam, "signal": sig, "L": run.length}
                | {"start": run.start, "escape": run.escape, "step": m["step"]}
                | {"forecast": m["escape"], "low": m["low"], "high": m["high"]}
                for m in made
            ]
        never = [r for r in runs if r.role == NEVER and takes(r, sig, fam)]
        alarms = [judge(r, sig, target, table, every, fam)[0] for r in never]
        warned = [
            (j, r)
            for j, r in zip(judged, ev)
            if j["warn"]["warn"] is not None and not j["warn"]["false_alarm"]
        ]
        row: dict[str, Any] = {
            "family": fam,
            "signal": sig,
            "target": target,
            # the dense fit's curve (dense_fit); None for the others
            "curve": table.dense_settings(fam, sig).get("shape"),
            "evaluation_runs": len(ev),
            "warned": len(warned),
            "warn_lead": _median([(r.escape - j["warn"]["warn"]) / r.length for j, r in warned]),
            "warn_lead_steps": _median([r.escape - j["warn"]["warn"] for j, r in warned]),
            "warn_false_alarms": sum(j["warn"]["false_alarm"] for j in judged)
            + sum(a["warn"]["warn"] is not None for a in alarms),
            "forecast_runs": sum(j["forecasts"] > 0 for j in judged),
            "first_lead": _median([j["first_lead"] for j in judged if j["first_lead"] is not None]),
            "first_lead_steps": _median(
                [
                    j["first_lead"] * r.length
                    for j, r in zip(judged, ev)
                    if j["first_lead"] is not None
                ]
            ),
            "forecasts": sum(j["forecasts"] for j in judged),
            "coverage": _share([c for j in judged for c in j["covered"]]),
            "raw_coverage": _share([c for j in judged for c in j["raw_covered"]]),
            "width": _median([w for j in judged for w in j["width"]]),
            "never_runs": len(never),
            "false_alarm_runs": sum(a["forecasts"] > 0 for a in alarms),
            "refuted_runs": sum(a["refuted"] > 0 for a in alarms),
        }
        for q in BEFORE:
            errs = [j[f"error_{q:g}"] for j in judged if j[f"error_{q:g}"] is not None]
            row[f"at_{q:g}_runs"] = len(errs)
            row[f"at_{q:g}_error"] = _median(errs)
            # a run with no forecast then counts as a miss (an infinite error)
            row[f"at_{q:g}_error_all"] = _median(errs + [math.inf] * (len(judged) - len(errs)))
        rows.append(row)
    return {
        "runs": [
            {"name": r.name, "family": r.family, "role": r.role, "escape": r.escape}
            | {"plateau_start": r.start, "after": r.after}
            for r in runs
        ],
        "targets": tgts,
        "table": rows,
        "goals": goals(rows, points),
        "points": points,
        "calibration": table.as_dict(),
    }


def _share(xs: list[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _or_inf(v: float | None) -> float:
    return math.inf if v is None else v


def goals(rows: list[dict[str, Any]], points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's three goals per family, met or by how much not."""
    out = []
    for fam in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == fam]
        pts = [p for p in points if p["family"] == fam]
        cover = _share([p["low"] <= p["escape"] <= p["high"] for p in pts])
        best = min(mine, key=lambda r: (_or_inf(r["at_0.5_error_all"]), _or_inf(r["at_0.5_error"])))
        err = best["at_0.5_error_all"]
        alarms = sum(r["false_alarm_runs"] for r in mine)  # (signal, run) pairs
        out += [
            {
                "family": fam,
                "goal": "90% intervals cover 80-95% on evaluation runs (all signals)",
                "value": cover,
                "met": cover is not None and 0.8 <= cover <= 0.95,
                "forecasts": len(pts),
            },
            {
                "family": fam,
                "goal": "median error at half the plateau before the escape <= 0.25 L "
                "(best signal; a run without a forecast then is a miss)",
                "value": err,
                "met": err is not None and err <= 0.25,
                "signal": best["signal"],
                "detail": f"{best['at_0.5_runs']} of {best['evaluation_runs']} runs had a forecast "
                f"then, median {_fmt(best['at_0.5_error'])} L among them",
            },
            {
                "family": fam,
                "goal": "no forecast on a run that never escapes",
                "value": alarms,
                "met": alarms == 0,
                "signal": "all signals",
                "detail": f"(signal, run) pairs with a forecast, over {mine[0]['never_runs']} "
                f"never-escaping runs; {sum(r['refuted_runs'] for r in mine)} refuted by the "
                "run's end",
            },
        ]
    return out


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if pct:
        return f"{v:.0%}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _steps(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def markdown(result: dict[str, Any]) -> str:
    """summary.md: the runs and their roles, the table per family and signal, the goals."""
    runs = result["runs"]

    def count(fam: str, role: str) -> int:
        return sum(r["family"] == fam and r["role"] == role for r in runs)

    fams = sorted({r["family"] for r in runs})
    lines = [
        "# Forecasting the escape: calibrated intervals per family and preset",
        "",
        "Written by `abrupt forecast` (src/abrupt/dynamics/study.py). Runs per family: "
        + "; ".join(
            f"{f} {count(f, CAL)} calibration, {count(f, EVAL)} evaluation, "
            f"{count(f, NEVER)} never escaping"
            for f in fams
        )
        + ". L = the plateau's length (escape_step - plateau_start); errors and leads are "
        "fractions of L, on the evaluation runs.",
        "",
        "| family | signal | eval runs | warned (lead / L, steps) | "
        "with a forecast (first lead / L, steps) | "
        "error at 75% / 50% / 25% of L before (runs) | 90% interval held the escape (fit's "
        "spread) | median width / L | never-escaping runs with a forecast (one its end refuted) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["table"]:
        at = " / ".join(f"{_fmt(r[f'at_{q:g}_error'])} ({r[f'at_{q:g}_runs']})" for q in BEFORE)
        lines.append(
            f"| {r['family']} | {r['signal']}{f' ({c})' if (c := r['curve']) else ''} | "
            f"{r['evaluation_runs']} | {r['warned']} "
            f"({_fmt(r['warn_lead'])}, {_steps(r['warn_lead_steps'])}) | {r['forecast_runs']} "
            f"({_fmt(r['first_lead'])}, {_steps(r['first_lead_steps'])}) | {at} | "
            f"{_fmt(r['coverage'], True)} of {r['forecasts']} ({_fmt(r['raw_coverage'], True)}) | "
            f"{_fmt(r['width'])} | {r['false_alarm_runs']} of {r['never_runs']} "
            f"({r['refuted_runs']}) |"
        )
    lines += ["", "## Goals", "", "| family | goal | value | met |", "|---|---|---|---|"]
    for g in result["goals"]:
        pct = "cover" in g["goal"]
        extra = f" ({g['signal']}: {g['detail']})" if "signal" in g else ""
        lines.append(
            f"| {g['family']} | {g['goal']} | {_fmt(g['value'], pct)}{extra} | "
            f"{'yes' if g['met'] else 'no'} |"
        )
    lines += ["", "## Runs", "", "| run | family | role | escape step |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['family']} | {r['role']} | {_fmt(r['escape'])} |" for r in runs]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> Path:
    """results.json and summary.md in `out` (the figure: `plots.plot_study_intervals`); returns
    summary.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    # the points only draw the figure
    atomic_write_json(out / "results.json", {k: v for k, v in result.items() if k != "points"})
    atomic_write_text(out / "summary.md", markdown(result))  # its tables hold '–' and '∞'
    return out / "summary.md"
