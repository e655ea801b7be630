"""Find the plateau and the sudden drop from logged metrics alone (so it also runs on old runs).

The detector reads one series, `eval_loss_mask` (the hidden-entry loss on the fixed evaluation
batch; `loss_mask` where that is absent), smoothed by a running median of `window` points:

1. plateau_start: the first logged step after which the smoothed loss falls by less than
   `flat_ratio` over the next `window` logs (the initial fall from random weights is over).
2. plateau_loss_mask: the median of the smoothed loss from plateau_start up to the first step where
   it falls below half its plateau_start value (or to the end).
3. drop_step: the first step after plateau_start where the smoothed loss falls below
   plateau_loss_mask / 2; null when that never happens.

`dropped` additionally asks for the final loss to be `min_factor` (10x) below the plateau.
"""

from __future__ import annotations

import statistics
from typing import Any


def _series(rows: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    key = "eval_loss_mask" if rows and all(r.get("eval_loss_mask") is not None for r in rows) else "loss_mask"
    pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [s for s, _ in pts], [v for _, v in pts]


def running_median(values: list[float], window: int) -> list[float]:
    half = window // 2
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def detect(
    rows: list[dict[str, Any]], window: int = 5, flat_ratio: float = 0.9, min_factor: float = 10.0
) -> dict[str, Any]:
    steps, raw = _series(rows)
    result: dict[str, Any] = {
        "plateau_start": None,
        "plateau_loss_mask": None,
        "drop_step": None,
        "dropped": False,
    }
    if len(steps) < 2:
        return result
    s = running_median(raw, window)
    start = None
    for i in range(len(s)):
        ahead = s[min(i + window, len(s) - 1)]
        if ahead >= flat_ratio * s[i]:
            start = i
            break
    if start is None:
        return result
    end = next((j for j in range(start, len(s)) if s[j] < 0.5 * s[start]), len(s))
    plateau = statistics.median(s[start:end])
    drop = next((j for j in range(start, len(s)) if s[j] < 0.5 * plateau), None)
    result["plateau_start"] = steps[start]
    result["plateau_loss_mask"] = plateau
    if drop is not None:
        result["drop_step"] = steps[drop]
        result["dropped"] = s[-1] * min_factor <= plateau
    return result


def summarize(rows: list[dict[str, Any]], seconds: float | None = None) -> dict[str, Any]:
    """The run's summary.json: transition fields plus final losses."""
    found = detect(rows)
    last = rows[-1] if rows else {}
    return {
        **found,
        "final_loss": last.get("eval_loss", last.get("loss")),
        "final_loss_mask": last.get("eval_loss_mask", last.get("loss_mask")),
        "steps": last.get("step", 0),
        "seconds": seconds if seconds is not None else last.get("time"),
        "detector": "transition.detect(window=5, flat_ratio=0.9): drop = smoothed eval L_mask < plateau/2",
    }
