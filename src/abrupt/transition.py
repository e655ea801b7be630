"""Find the plateau and the sudden drop from logged metrics alone (so it also runs on old runs).

The detector reads one series, `eval_loss_mask` (the hidden-entry loss on the fixed evaluation
batch; `loss_mask` where that is absent; for the GPT variant its cross-entropy `eval_loss`), smoothed by a running median of `window` points:

1. plateau_start: the first logged step after which the smoothed loss falls by less than
   `flat_ratio` over the next `window` logs (the initial fall from random weights is over).
2. plateau_loss_mask: the median of the smoothed loss from plateau_start up to the first step where
   it falls 20% below its plateau_start value (or to the end).
3. drop_step: the first step after plateau_start where the smoothed loss falls below
   plateau_loss_mask / 2; null when that never happens. escape_step: the first step 20% below
   the plateau (the loss has left it); the plateau's length is escape_step - plateau_start.

`dropped` additionally asks for the final loss to be `min_factor` (10x) below the plateau.

`sudden` is the reviewer's criterion for the paper's phenomenon (see `suddenness`): the loss sat
on the plateau, fell at least 10x below it, and the fall from 20% to 80% of the way (on a log
scale, plateau to final) took at most a quarter of the steps that came before it. A slow slide
has `dropped` true and `sudden` false.
"""

from __future__ import annotations

import statistics
from typing import Any


def _series(rows: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    if rows and "eval_acc_obs" in rows[0]:  # the GPT variant: its drop is in the cross-entropy (Fig. 11)
        key = "eval_loss"
    else:
        key = "eval_loss_mask" if rows and all(r.get("eval_loss_mask") is not None for r in rows) else "loss_mask"
    pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [s for s, _ in pts], [v for _, v in pts]


def running_median(values: list[float], window: int) -> list[float]:
    half = window // 2
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def detect(
    rows: list[dict[str, Any]], window: int = 5, flat_ratio: float = 0.9, min_factor: float = 10.0, after: int = 0
) -> dict[str, Any]:
    """`after`: the plateau is looked for only after this step (the end of a training curriculum,
    during which the evaluation loss reflects the shifted training data, not the target's)."""
    steps, raw = _series(rows)
    result: dict[str, Any] = {
        "plateau_start": None,
        "plateau_loss_mask": None,
        "drop_step": None,
        "dropped": False,
        "escape_step": None,
    }
    if len(steps) < 2:
        return result
    s = running_median(raw, window)
    start = None
    for i in range(len(s)):
        if steps[i] <= after:
            continue
        ahead = s[min(i + window, len(s) - 1)]
        if ahead >= flat_ratio * s[i]:
            start = i
            break
    if start is None:
        return result
    # the plateau level is read before the fall has begun (until 20% below the start), so that a
    # run which falls only part of the way is not averaged into a lower "plateau"
    end = next((j for j in range(start, len(s)) if s[j] < 0.8 * s[start]), len(s))
    plateau = statistics.median(s[start:end])
    drop = next((j for j in range(start, len(s)) if s[j] < 0.5 * plateau), None)
    escape = next((j for j in range(start, len(s)) if s[j] < 0.8 * plateau), None)
    result["plateau_start"] = steps[start]
    result["plateau_loss_mask"] = plateau
    result["escape_step"] = steps[escape] if escape is not None else None
    if drop is not None:
        result["drop_step"] = steps[drop]
        result["dropped"] = s[-1] * min_factor <= plateau
    return result


def suddenness(rows: list[dict[str, Any]], found: dict[str, Any], window: int = 5, max_ratio: float = 0.25) -> dict[str, Any]:
    """fall_start / fall_end: the first steps where the smoothed L_mask is 20% and 80% of the way
    (log scale) from the plateau to its final value; fall_ratio = (end - start) / start."""
    out: dict[str, Any] = {"fall_start": None, "fall_end": None, "fall_ratio": None, "sudden": False}
    plateau = found.get("plateau_loss_mask")
    if not found.get("drop_step") or not plateau:
        return out
    steps, raw = _series(rows)
    s = running_median(raw, window)
    final = s[-1]
    if not 0 < final < plateau:
        return out
    level = lambda frac: plateau * (final / plateau) ** frac  # noqa: E731
    start_i = next((i for i, v in enumerate(s) if steps[i] >= found["plateau_start"] and v <= level(0.2)), None)
    end_i = next((i for i, v in enumerate(s) if start_i is not None and i >= start_i and v <= level(0.8)), None)
    if start_i is None or end_i is None or steps[start_i] == 0:
        return out
    ratio = (steps[end_i] - steps[start_i]) / steps[start_i]
    out.update(fall_start=steps[start_i], fall_end=steps[end_i], fall_ratio=round(ratio, 4),
               sudden=bool(found.get("dropped")) and ratio <= max_ratio)
    return out


def summarize(rows: list[dict[str, Any]], seconds: float | None = None, after: int = 0) -> dict[str, Any]:
    """The run's summary.json: transition fields plus final losses (the plateau sought after `after`)."""
    found = detect(rows, after=after)
    last = rows[-1] if rows else {}
    # a size mixture logs L_mask per size (eval_loss_mask_5x5, ...): a drop step for each
    per_size = sorted({k for r in rows[:1] for k in r if k.startswith("eval_loss_mask_")})
    sizes = {f"drop_step_{k.removeprefix('eval_loss_mask_')}": detect([{"step": r["step"], "eval_loss_mask": r.get(k)} for r in rows], after=after)["drop_step"]
             for k in per_size}
    return {
        **found,
        **suddenness(rows, found),
        **sizes,
        "final_loss": last.get("eval_loss", last.get("loss")),
        "final_loss_mask": last.get("eval_loss_mask", last.get("loss_mask")),
        "steps": last.get("step", 0),
        "seconds": seconds if seconds is not None else last.get("time"),
        "detector": "transition.detect(window=5, flat_ratio=0.9): drop = smoothed eval L_mask < plateau/2",
    }
