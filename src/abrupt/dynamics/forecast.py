"""Forecast the escape from the plateau while a run trains, from its logged metrics alone.

The rule (one signal at a time; the default signal is the evaluation L_mask itself):

1. The plateau is found as `transition.detect` finds it (after a curriculum ends), with its level.
2. The signal's departure from its plateau value is d(t): for the loss, 1 - L(t) / level (the
   escape, `escape_step`, is where d reaches 0.2); for a progress measure, |m(t) - m_plateau|,
   with m_plateau its median over the first `window` logs of the plateau, and the target the
   departure it had at the escapes of other runs (`calibrate`).
3. Near a saddle the departure grows exponentially, d(t) = d0 exp(r t). Once the last `fit_points`
   logs all stand above the plateau's noise (`noise_k` robust standard deviations of d on the
   plateau) and still below the target, log d is fitted by weighted least squares on them (weights
   d^2); with a growth
   rate r at least `min_z` standard errors above 0 the forecast is the step where the fit reaches
   the target, and its interval the steps where fits with r -/+ z_interval standard errors do
   (an unbounded end means "not yet predictable").

Assumptions: one plateau, a monotone departure from it, and a target level that transfers between
runs (for progress measures). A forecast is never earlier than the step after the last one seen.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from .transition import ESCAPE_DEPARTURE, detect, loss_series, running_median

LOSS = "loss"  # the signal name of the evaluation L_mask (the task's loss for GPT runs)


@dataclass
class Forecast:
    """A forecast made with the rows up to `step`: the escape step `escape` within [low, high]
    (steps), or None with the `reason` why not yet."""

    step: int
    escape: int | None = None
    low: int | None = None
    high: int | None = None
    reason: str = ""

    def as_row(self) -> dict[str, Any]:
        """The metrics.jsonl fields (only when there is a forecast)."""
        if self.escape is None:
            return {}
        return {
            "forecast_escape": self.escape,
            "forecast_low": self.low,
            "forecast_high": self.high,
        }

    def label(self) -> str:
        """Short text for the progress bar: 'drop ~N±M' (M half the interval)."""
        if self.escape is None:
            return ""
        half = (self.high - self.low) / 2 if self.high is not None and self.low is not None else 0
        return f"~{self.escape}±{half:.0f}"


def _signal(rows: list[dict[str, Any]], signal: str) -> tuple[list[int], list[float]]:
    if signal == LOSS:
        return loss_series(rows)
    pts = [
        (int(r["step"]), float(r[signal]))
        for r in rows
        if isinstance(r.get(signal), (int, float)) and math.isfinite(r[signal])
    ]  # a measure can be NaN (undefined)
    return [s for s, _ in pts], [v for _, v in pts]


def departure(
    rows: list[dict[str, Any]], signal: str = LOSS, after: int = 0, window: int = 5
) -> tuple[list[int], list[float], dict[str, Any]]:
    """(steps, d, plateau) from the plateau's start on: the signal's departure from its plateau
    value (see the module's rule), smoothed by a running median of `window` logs; `plateau` is
    `transition.detect`'s answer. Empty lists before a plateau is found."""
    found = detect(rows, after=after, window=window)
    if found["plateau_start"] is None:
        return [], [], found
    steps, values = _signal(rows, signal)
    smooth = running_median(values, window)
    keep = [i for i, s in enumerate(steps) if s >= found["plateau_start"]]
    steps, smooth = [steps[i] for i in keep], [smooth[i] for i in keep]
    if not steps:
        return [], [], found
    if signal == LOSS:
        level = found["plateau_loss_mask"]
        if (
            not 0 < level < math.inf
        ):  # a plateau at exactly 0 (float32 cross-entropy reaches it): nothing to depart from
            return [], [], found
        d = [1.0 - v / level for v in smooth]
    else:
        base = statistics.median(smooth[:window])
        d = [abs(v - base) for v in smooth]
    return steps, d, found


def noise_level(d: list[float], n: int) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation) of the first n departures."""
    head = d[: max(n, 3)]
    med = statistics.median(head)
    return 1.4826 * statistics.median(abs(x - med) for x in head) or 1e-12


def forecast(
    rows: list[dict[str, Any]],
    signal: str = LOSS,
    target: float = ESCAPE_DEPARTURE,
    after: int = 0,
    fit_points: int = 8,
    noise_k: float = 3.0,
    min_z: float = 3.0,
    z_interval: float = 1.64,
    window: int = 5,
) -> Forecast:
    """The escape step forecast from `rows` (metrics rows, oldest first) as of their last step.

    `target`: the departure d at which the escape happens (0.2 for the loss, by the definition of
    escape_step; for a progress measure, from `calibrate`). Other arguments: see the module's rule.
    Returns a Forecast whose `escape` is None (with a reason) when nothing can be said yet; once the
    departure has reached the target it returns the step where it did (the escape is seen)."""
    now = int(rows[-1]["step"]) if rows else 0
    steps, d, found = departure(rows, signal, after, window)
    if not steps and found["plateau_start"] is not None and signal == LOSS:
        return Forecast(now, reason="the plateau's level is 0: no departure from it to measure")
    if len(steps) < fit_points + window:
        return Forecast(now, reason="no plateau yet" if not steps else "plateau too short to judge")
    reached = next((s for s, x in zip(steps, d) if x >= target), None)
    if reached is not None:
        return Forecast(now, reached, reached, reached, "escaped")
    sigma = noise_level(d, len(d) // 2)
    xs, ys = steps[-fit_points:], d[-fit_points:]
    if min(ys) <= noise_k * sigma:
        return Forecast(now, reason="departure within the plateau's noise")
    fit = _fit_log(xs, ys)
    if fit is None or fit[1] <= min_z * fit[2] * math.sqrt(max(window, 2) / 2):
        return Forecast(now, reason="no significant exponential growth")
    intercept, rate, se = fit
    se *= math.sqrt(
        max(window, 2) / 2
    )  # the running median makes neighbouring logs correlated: fewer independent points
    gap = math.log(target) - (
        intercept + rate * xs[-1]
    )  # log-distance still to go at the last fitted step

    def reach(r: float) -> int | None:
        return None if r <= 0 else max(now + 1, round(xs[-1] + gap / r))

    escape, low, high = reach(rate), reach(rate + z_interval * se), reach(rate - z_interval * se)
    if high is None:
        return Forecast(now, reason="growth rate too uncertain")
    return Forecast(now, escape, low, high)


def _fit_log(xs: list[int], ys: list[float]) -> tuple[float, float, float] | None:
    """Weighted least squares of log y on x: (intercept, slope, standard error of the slope).
    Weights y^2: an additive noise sigma on y is a noise sigma / y on log y."""
    n = len(xs)
    if n < 3:
        return None
    ly, w = [math.log(y) for y in ys], [y * y for y in ys]
    sw = sum(w)
    mx, my = sum(wi * x for wi, x in zip(w, xs)) / sw, sum(wi * y for wi, y in zip(w, ly)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, xs))
    if sxx == 0:
        return None
    slope = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, xs, ly)) / sxx
    intercept = my - slope * mx
    resid = sum(wi * (y - intercept - slope * x) ** 2 for wi, x, y in zip(w, xs, ly))
    se = math.sqrt(resid / (n - 2) / sxx)
    return intercept, slope, se


def calibrate(
    runs: list[tuple[list[dict[str, Any]], int]], signal: str, window: int = 5
) -> float | None:
    """The departure of `signal` at the escape, median over `runs` [(rows, after), ...] that
    escaped:
    the target for forecasting with that signal. None when no run escaped."""
    at_escape = []
    for rows, after in runs:
        steps, d, found = departure(rows, signal, after, window)
        if found["escape_step"] is None or not steps:
            continue
        i = max(j for j, s in enumerate(steps) if s <= found["escape_step"])
        at_escape.append(d[i])
    return statistics.median(at_escape) if at_escape else None


def history(
    rows: list[dict[str, Any]],
    signal: str = LOSS,
    target: float = ESCAPE_DEPARTURE,
    after: int = 0,
    every: int = 1,
    **options: Any,
) -> list[dict[str, Any]]:
    """The forecast as it would have been made at each logged step (every `every`-th), as dicts:
    what a run's training wrote to metrics.jsonl, recomputed for any signal (the study's input)."""
    out = []
    for i in range(1, len(rows) + 1, every):
        f = forecast(rows[:i], signal, target, after, **options)
        out.append(asdict(f))
    return out
