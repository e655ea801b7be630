"""The escape forecast's calibrated 90% interval: split-conformal on past runs' actual errors.

A forecast made at step `now` whose fit extrapolates the escape to `raw` (forecast.fit_forecast)
is scored, once the run has escaped at `escape`, by

    score = log((escape - now) / (raw - now))

(0: the fit was right; -1: the escape came after e^-1 = 37% of the time the fit said was left).
Scores are pooled by task family (`matrix`, `sequence`; for the dense fit by preset,
`sequence:mws`), signal, and how far through its plateau the forecast thought it was,
u = (now - plateau_start) / (raw - plateau_start) (`BINS`): an observable stand-in for "how far
ahead". In each cell the 5%, 50% and 95% quantiles of the scores, every run weighing the same
whatever its number of forecasts (neighbouring forecasts of one run are nearly the same
forecast), with the split-conformal correction for R runs (the levels moved outward by a factor
(1 + 1/R)), give the calibrated forecast

    escape = now + (raw - now) e^q50, interval now + (raw - now) e^q05 ... now + (raw - now) e^q95.

A cell needs `MIN_RUNS` runs and `MIN_SCORES` scores; else the signal's cell over all u is used;
else there is no calibration for the signal and the interval is the fit's own spread, labelled
so. The same holds where the run forecasts to another target than the entry was fit at (its
errors were measured at another level). The table committed with the package
(`calibration.json`) is fit by `abrupt forecast` on the calibration runs of docs/forecast/ only
(its `runs` lists them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

LEVEL = 0.9  # the interval's nominal coverage
BINS = (0.0, 0.5, 0.8, 1.0)  # edges of u, the fraction of the forecast plateau elapsed
MIN_RUNS, MIN_SCORES = 3, 19  # 19: the smallest n whose 95% conformal quantile is finite
ALL = "all"  # the cell over every u
TARGET_TOLERANCE = 0.01  # relative: a target typed from the table's 3 digits still matches


def score(now: int, raw: int, escape: int) -> float:
    """log((escape - now) / (raw - now)) for a forecast made at `now` before the escape."""
    return math.log(max(escape - now, 1) / max(raw - now, 1))


def elapsed(now: int, raw: int, start: int) -> float:
    """u: the fraction of the plateau the forecast thought had passed, in [0, 1]."""
    return min(1.0, max(0.0, (now - start) / max(raw - start, 1)))


def bin_of(u: float) -> str:
    """The name of u's bin, e.g. '0.5-0.8'."""
    i = next((i for i in range(1, len(BINS)) if u < BINS[i]), len(BINS) - 1)
    return f"{BINS[i - 1]:g}-{BINS[i]:g}"


def weighted_quantile(values: list[float], weights: list[float], q: float) -> float:
    """The smallest value whose cumulative weight reaches q of the total (q in [0, 1])."""
    pairs = sorted(zip(values, weights))
    total, acc = sum(weights), 0.0
    for v, w in pairs:
        acc += w
        if acc >= q * total - 1e-12:
            return v
    return pairs[-1][0]


def cell(scores: list[tuple[str, float]]) -> dict[str, Any] | None:
    """Quantiles of (run, score) pairs, each run weighing 1 in all: {'runs', 'n', 'q_low', 'q_mid',
    'q_high'}, or None when there are too few runs or scores to calibrate."""
    runs = {r for r, _ in scores}
    if len(runs) < MIN_RUNS or len(scores) < MIN_SCORES:
        return None
    per_run = {r: sum(1 for x, _ in scores if x == r) for r in runs}
    values, weights = [s for _, s in scores], [1 / per_run[r] for r, _ in scores]
    tail = (1 - LEVEL) / 2 * (1 + 1 / len(runs))  # the split-conformal correction
    return {
        "runs": len(runs),
        "n": len(scores),
        "q_low": round(weighted_quantile(values, weights, max(tail, 0.0)), 4),
        "q_mid": round(weighted_quantile(values, weights, 0.5), 4),
        "q_high": round(weighted_quantile(values, weights, min(1 - tail, 1.0)), 4),
    }


@dataclass
class Calibration:
    """The table: {'family/signal': {'target': ..., 'cells': {bin or 'all': cell}}}; a dense
    fit's entry also holds its preset's settings (study.dense_fit): its curve, 'shape' ('line'
    or 'exp'), and 'longest', the longest plateau of its calibration runs (steps)."""

    entries: dict[str, dict[str, Any]]
    runs: list[str]  # the runs the table was fit on

    @classmethod
    def fit(
        cls,
        scores: dict[str, list[tuple[str, float, float]]],
        targets: dict[str, float],
        runs: list[str],
        settings: dict[str, dict[str, Any]] | None = None,
    ) -> Calibration:
        """From {'family/signal': [(run, u, score), ...]}, each key's target departure and, for
        the dense fit's keys, the settings the scores were measured with (`dense_settings`)."""
        entries = {}
        # a target without enough scores still makes an entry: the fit extrapolates to it, and
        # its spread is labelled uncalibrated (`lookup`)
        for key in sorted(set(scores) | set(targets)):
            sc = scores.get(key, [])
            cells = {ALL: cell([(r, s) for r, _, s in sc])}
            for lo in BINS[:-1]:
                name = bin_of(lo)
                cells[name] = cell([(r, s) for r, u, s in sc if bin_of(u) == name])
            kept = {k: v for k, v in cells.items() if v is not None}
            if kept or targets.get(key) is not None:
                entries[key] = {"target": targets.get(key), "cells": kept}
                entries[key].update((settings or {}).get(key, {}))
        return cls(entries, sorted(runs))

    def lookup(
        self, family: str, signal: str, u: float, target: float
    ) -> tuple[dict[str, Any] | None, str]:
        """(cell, label) for a forecast at u that extrapolates to the departure `target`, or
        (None, why not) where the signal has no entry or its entry was fit at another target
        (beyond a relative `TARGET_TOLERANCE`: its errors were measured at another level)."""
        key = f"{family}/{signal}"
        entry = self.entries.get(key)
        if entry is None:
            return None, key
        fitted = entry.get("target")
        if fitted is not None and abs(target - fitted) > TARGET_TOLERANCE * abs(fitted):
            return None, f"{key} calibrated at target {fitted:.3g}, this run's target is {target:g}"
        name = bin_of(u)
        if name in entry["cells"]:
            return entry["cells"][name], f"{key}, u {name}"
        if ALL not in entry["cells"]:
            return None, f"{key}: too few calibration forecasts"
        return entry["cells"][ALL], f"{key}, all u"

    def target(self, family: str, signal: str) -> float | None:
        """The target departure the entry of (family, signal) was fit at (None: no entry)."""
        return self.entries.get(f"{family}/{signal}", {}).get("target")

    def dense_settings(self, family: str, signal: str) -> dict[str, Any]:
        """The settings the dense fit's entry of (family, signal) was fit with, {'shape': curve,
        'longest': steps} ({} where there are none)."""
        entry = self.entries.get(f"{family}/{signal}", {})
        return {k: entry[k] for k in ("shape", "longest") if k in entry}

    def as_dict(self) -> dict[str, Any]:
        return {
            "about": "escape-forecast calibration (src/abrupt/dynamics/calibration.py): "
            "quantiles of log((escape - now) / (fit - now)) by family/signal and u",
            "level": LEVEL,
            "bins": list(BINS),
            "runs": self.runs,
            "entries": self.entries,
        }

    @classmethod
    def read(cls, path: Path) -> Calibration:
        """A table as `abrupt forecast --calibration` writes it."""
        raw = json.loads(Path(path).read_text())
        return cls(raw["entries"], raw["runs"])


@lru_cache(maxsize=1)
def packaged() -> Calibration:
    """The table committed with the package (an empty one if it is missing)."""
    path = resources.files("abrupt.dynamics") / "calibration.json"
    if not path.is_file():
        return Calibration({}, [])
    raw = json.loads(path.read_text())
    return Calibration(raw["entries"], raw["runs"])
