"""Forecast the escape from the plateau while a run trains, from its logged metrics and, where the
run has one, its dense signal (signal.jsonl: the training batch's headline loss at every step).

The rule (one signal at a time; the default signal is the loss):

1. The plateau is found as `transition.detect` finds it (after a curriculum ends), with its level,
   from the logged evaluation loss; so is the escape once seen (`escape_step`: 20% below it).
2. With a dense signal over the plateau (signal LOSS), the forecast fits it (`fit_dense`): its
   departure d = 1 - v / v0 from its value v0 on the plateau's first logs, averaged in blocks of
   steps against the batch noise, is extrapolated over the last half of the plateau so far by a
   curve (a line for a steady slide, an exponential for a saddle's departure from a flat
   plateau; the preset's calibration names it, by default its family's: SHAPES) to a target
   departure: where past runs' slides stood at their escapes, or for the exponential their
   departure at it (`dense_target`, calibrated per preset, `calibrate_dense`; a preset without
   a target in the table is forecast as in 3). Logged rows every 10-50 steps are too few on a
   plateau of 100-200 steps for anything else in time.
3. Without one (runs without a dense signal, progress measures): the signal's departure d(t) from
   its plateau value (for the loss, 1 - L(t) / level, the escape at d = 0.2; for a progress
   measure, |m(t) - m_plateau|, with m_plateau its median over the first `window` logs of the
   plateau, and the target the departure it had at the escapes of other runs, `calibrate`). Near
   a saddle the departure grows exponentially, d(t) = d0 exp(r t). Once the last `fit_points`
   logs all stand above the plateau's noise (`noise_k` robust standard deviations of d on the
   plateau) and still below the target, log d is fitted by weighted least squares on them
   (weights d^2); with a growth rate r at least `min_z` standard errors above 0 the fit's forecast
   is the step where it reaches the target (`fit_forecast`, with the steps where fits with r -/+
   z_interval standard errors do as its spread).
4. `forecast` then corrects the fit by what it got wrong on past runs (`calibration.py`): the
   escape and the 90% interval come from the quantiles of the fit's actual errors on the
   calibration runs, for the task family (for the dense fit: the preset), the signal and how far
   through the plateau the fit thinks it is. A signal without calibration, or forecast to another
   target than its calibration was fit at, keeps the fit's spread, and says so (`basis`).

Anything that cannot be forecast (no plateau, too few rows, a plateau at 0, a constant signal, a
non-finite loss) gives escape None with the reason: the forecast never raises on logged rows.
Assumptions: one plateau, a monotone departure from it, and a target level that transfers between
runs (of a preset, for the dense fit; for progress measures). A forecast is never earlier than the
step after the last one seen.
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

from . import calibration as cal
from .transition import ESCAPE_DEPARTURE, WINDOW, detect, loss_series, run_kind, running_median

LOSS = "loss"  # the signal name of the evaluation L_mask (the task's loss for GPT runs)
# the calibration key of the loss forecast fit on the dense signal (RUN/signal.jsonl: the training
# batch's headline loss at every step) rather than on the logged evaluation loss
DENSE = "train_loss"
# the dense fit (`fit_dense`): blocks on the plateau so far, the fewest blocks fit, no forecast
# further ahead than HORIZON x the plateau so far, and the share of the plateau's steps the dense
# signal must hold to be used
BLOCKS, MIN_BLOCKS, HORIZON, DENSE_COVER = 40, 8, 2.0, 0.9
# the share of the plateau so far (its last blocks) the dense fit is fit on
FIT_SHARE = 0.5
# the curve fit_dense extrapolates, by family (see there; the calibration table's entry of a preset
# names its own, chosen on its calibration runs: study.dense_fit), and for the exponential the
# growth rates tried: GRID of them, log-spaced from 0.1 to 0.1 x RATES e-folds over the fit's window
SHAPES = {"sequence": "line", "matrix": "exp"}
CURVES = ("line", "exp")
# the dense fit's significance (its min_z): it looks again at every log of a long plateau, and at
# 3 standard errors a flat noisy one (tests/test_forecast.py) gave a false alarm in 1 of 5 runs
DENSE_Z = 5.0
GRID, RATES = 60, 500.0
# the stretch of the plateau whose slide, extrapolated to the escape, is the line's dense target
# (`dense_target`): from SLIDE[0] to SLIDE[1] of its length before the escape
SLIDE = (0.5, 0.2)
# the steps up to the escape whose mean departure is the exponential fit's target (`dense_target`)
ESCAPE_STEPS = 5


@dataclass
class Forecast:
    """A forecast made with the rows up to `step`: the escape step `escape` within [low, high]
    (steps), or None with the `reason` why not yet. `raw`: the fit's own escape step before
    calibration; `start`: the plateau's start; `basis`: where the interval comes from; `signal`:
    what the fit read (its calibration's key: LOSS, DENSE or a progress measure)."""

    step: int
    escape: int | None = None
    low: int | None = None
    high: int | None = None
    reason: str = ""
    raw: int | None = None
    start: int | None = None
    basis: str = ""
    signal: str = ""

    def as_row(self) -> dict[str, Any]:
        """The metrics.jsonl fields (only when there is a forecast)."""
        if self.escape is None:
            return {}
        return {
            "forecast_escape": self.escape,
            "forecast_low": self.low,
            "forecast_high": self.high,
        }

    def describe(self, steps_per_s: float = 0.0) -> str:
        """The progress line's text: 'escape in ~1 200 steps (~6 min), 90%: 800–1 900' (steps from
        now; the wall time from `steps_per_s`, the measured step rate, left out when 0), 'escaped
        at step N', or 'escape not yet predictable (reason)'."""
        if self.escape is None:
            return f"escape not yet predictable ({self.reason or 'no forecast'})"
        if self.reason == "escaped":
            return f"escaped at step {_thousands(self.escape)}"
        ahead = self.escape - self.step
        wall = f" ({_wall(ahead / steps_per_s)})" if steps_per_s > 0 else ""
        spread = "90%" if self.basis.startswith("calibrated") else "uncalibrated spread"
        lo, hi = (
            _thousands(_round2(x - self.step)) for x in (self.low or self.step, self.high or 0)
        )
        return f"escape in ~{_thousands(_round2(ahead))} steps{wall}, {spread}: {lo}–{hi}"


def _round2(n: int) -> int:
    """Two significant digits (a forecast is not more precise than that)."""
    if abs(n) < 100:
        return int(n)
    p = 10 ** (len(str(abs(int(n)))) - 2)
    return int(round(n / p) * p)


def _thousands(n: int) -> str:
    return f"{int(n):,}".replace(",", " ")


def _wall(seconds: float) -> str:
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def family(kind: str) -> str:
    """The task family whose calibration applies to runs of `kind` (transition.RUN_KINDS):
    'sequence' (the sequence tasks) or 'matrix' (the BERT and its GPT variant)."""
    return "sequence" if kind == "sequence" else "matrix"


def _signal(
    rows: list[dict[str, Any]], signal: str, kind: str | None = None
) -> tuple[list[int], list[float]]:
    if signal == LOSS:
        return loss_series(rows, kind)
    # a measure can be NaN (undefined)
    pts = [
        (int(r["step"]), float(r[signal]))
        for r in rows
        if isinstance(r.get(signal), (int, float)) and math.isfinite(r[signal])
    ]
    return [s for s, _ in pts], [v for _, v in pts]


def departure(
    rows: list[dict[str, Any]],
    signal: str = LOSS,
    after: int = 0,
    window: int = WINDOW,
    kind: str | None = None,
) -> tuple[list[int], list[float], dict[str, Any]]:
    """(steps, d, plateau) from the plateau's start on: the signal's departure from its plateau
    value (see the module's rule), smoothed by a running median of `window` logs; `plateau` is
    `transition.detect`'s answer. Empty lists before a plateau is found. `kind`: the run's
    (transition.RUN_KINDS; None: guessed from the rows)."""
    found = detect(rows, after=after, window=window, kind=kind)
    if found["plateau_start"] is None:
        return [], [], found
    steps, values = _signal(rows, signal, kind)
    smooth = running_median(values, window)
    keep = [i for i, s in enumerate(steps) if s >= found["plateau_start"]]
    steps, smooth = [steps[i] for i in keep], [smooth[i] for i in keep]
    if not steps:
        return [], [], found
    if signal == LOSS:
        level = found["plateau_level"]
        # a plateau at exactly 0 (float32 cross-entropy reaches it): nothing to depart from
        if not 0 < level < math.inf:
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


def _unusable(
    rows: list[dict[str, Any]], signal: str, target: float, kind: str | None = None
) -> str:
    """Why these rows cannot be forecast from at all ('' when they can)."""
    if not rows:
        return "no rows yet"
    if not (isinstance(target, (int, float)) and 0 < target < math.inf):
        return f"no target for {signal} (its departure at the escape must be > 0, got {target})"
    steps, values = loss_series(rows, kind)
    bad = next((s for s, v in zip(steps, values) if not math.isfinite(v)), None)
    if bad is not None:
        return f"the loss is not finite at step {bad}"
    if signal != LOSS and not _signal(rows, signal)[0]:
        return f"{signal} is not logged (or never finite)"
    return ""


def _seen(
    steps: list[int], d: list[float], target: float, window: int, now: int, start: int
) -> Forecast | None:
    """The escape as seen in the evaluation loss's departure `d` once it has settled (a Forecast
    with reason 'escaped'), a 'leaving the plateau' Forecast while it has not, None before."""
    reached = next((i for i, x in enumerate(d) if x >= target), None)
    if reached is None:
        return None
    if reached > len(d) - 1 - window // 2:
        # the running median around it still reads logs to come, which can move the step: it
        # is told once settled, so the progress line never changes an escape it announced
        return Forecast(now, reason="leaving the plateau (the escape step is told once known)")
    at = steps[reached]
    return Forecast(now, at, at, at, "escaped", at, start)


def fit_forecast(
    rows: list[dict[str, Any]],
    signal: str = LOSS,
    target: float = ESCAPE_DEPARTURE,
    after: int = 0,
    fit_points: int = 8,
    noise_k: float = 3.0,
    min_z: float = 3.0,
    z_interval: float = 1.64,
    window: int = WINDOW,
    kind: str | None = None,
    dense: tuple[list[int], list[float]] | None = None,
    dense_goal: float | None = None,
    horizon: float = HORIZON,
    dense_z: float = DENSE_Z,
    dense_shape: str | None = None,
    dense_longest: int | None = None,
) -> Forecast:
    """The fit's escape step from `rows` (metrics rows, oldest first) as of their last step, with
    the fit's own spread as the interval (uncalibrated: see `forecast`).

    `target`: the departure d at which the escape happens (0.2 for the loss, by the definition of
    escape_step; for a progress measure, from `calibrate`). `dense`: (steps, values) of the run's
    dense signal (signal.jsonl), fit instead of the logged loss where it covers the plateau
    (`fit_dense`; signal LOSS only), to the departure `dense_goal` (its calibrated target,
    `dense_target`; None: the escape's own level) by the curve `dense_shape` (None: the family's,
    SHAPES); `horizon`, `dense_z` (its min_z), `dense_longest` (its longest): see `fit_dense`.
    Other arguments: see the module's rule. Returns a Forecast whose `escape` is None (with a
    reason) when nothing can be said yet; once the departure has reached the target it returns
    the step where it did (the escape is seen)."""
    now = int(rows[-1]["step"]) if rows else 0
    why = _unusable(rows, signal, target, kind)
    if why:
        return Forecast(now, reason=why)
    steps, d, found = departure(rows, signal, after, window, kind)
    if not steps and found["plateau_start"] is not None and signal == LOSS:
        return Forecast(now, reason="the plateau's level is 0: no departure from it to measure")
    start = found["plateau_start"]
    span = dense_span(dense, start, now) if signal == LOSS and steps else None
    if span is not None:
        if len(steps) < window:
            return Forecast(now, reason="plateau too short to judge")
        seen = _seen(steps, d, target, window, now, start)
        dd, v0 = dense_departure(*span, head=steps[window - 1])
        if seen is not None or not dd:
            return seen or Forecast(now, reason="the plateau's level is 0: nothing to depart from")
        # without a calibrated target: where the evaluation loss's escape is, in d's units
        goal = dense_goal or 1 - (1 - target) * found["plateau_level"] / v0
        shape = dense_shape or SHAPES[family(kind or run_kind(rows))]
        return fit_dense(
            span[0],
            dd,
            goal,
            now,
            start,
            noise_k,
            dense_z,
            z_interval,
            horizon,
            shape,
            dense_longest,
        )
    if len(steps) < fit_points + window:
        return Forecast(now, reason="no plateau yet" if not steps else "plateau too short to judge")
    seen = _seen(steps, d, target, window, now, start)
    if seen is not None:
        return seen
    if max(d) == 0:
        return Forecast(now, reason=f"{signal} is constant on the plateau")
    sigma = noise_level(d, len(d) // 2)
    xs, ys = steps[-fit_points:], d[-fit_points:]
    if min(ys) <= noise_k * sigma:
        return Forecast(now, reason="departure within the plateau's noise")
    fit = _fit_log(xs, ys)
    if fit is None or fit[1] <= min_z * fit[2] * math.sqrt(max(window, 2) / 2):
        return Forecast(now, reason="no significant exponential growth")
    intercept, rate, se = fit
    # the running median makes neighbouring logs correlated: fewer independent points
    se *= math.sqrt(max(window, 2) / 2)
    # log-distance still to go at the last fitted step
    gap = math.log(target) - (intercept + rate * xs[-1])

    def reach(r: float) -> int | None:
        return None if r <= 0 else max(now + 1, round(xs[-1] + gap / r))

    escape, low, high = reach(rate), reach(rate + z_interval * se), reach(rate - z_interval * se)
    if high is None:
        return Forecast(now, reason="growth rate too uncertain")
    return Forecast(
        now, escape, low, high, raw=escape, start=start, basis="the fit's spread", signal=signal
    )


def dense_span(
    dense: tuple[list[int], list[float]] | None, start: int | None, now: int
) -> tuple[list[int], list[float]] | None:
    """The dense signal's (steps, values) on the plateau so far, [start, now], or None where it
    does not cover it (none, a gap: a run begun before signal.jsonl existed, then resumed) or holds
    a non-finite value."""
    if dense is None or start is None:
        return None
    steps, values = dense
    lo, hi = bisect.bisect_left(steps, start), bisect.bisect_right(steps, now)
    xs, vs = steps[lo:hi], values[lo:hi]
    if len(xs) < (now - start + 1) * DENSE_COVER or not all(map(math.isfinite, vs)):
        return None
    return xs, vs


def dense_departure(xs: list[int], vs: list[float], head: int) -> tuple[list[float], float]:
    """(d, v0) of the dense signal's values `vs` at the steps `xs` on the plateau: d = 1 - v / v0,
    v0 the median of the values up to step `head` (the plateau's first logs); d is [] where v0
    is not > 0."""
    v0 = statistics.median(v for x, v in zip(xs, vs) if x <= head)
    return ([1 - v / v0 for v in vs] if v0 > 0 else []), v0


def dense_target(
    xs: list[int], d: list[float], escape: int, start: int, shape: str = "line"
) -> float | None:
    """The departure the dense signal's fit of `shape` (CURVES) extrapolates to, as one run shows
    it; the median over calibration runs is the dense fit's target. None when there are too few
    steps to tell.

    'line': where the slide would have reached at the escape, the least-squares line through d
    on the plateau's stretch SLIDE (fractions of its length before the escape) evaluated there.
    The escape itself is sudden (the last few steps' exponential is seen by no fit in time); the
    slide before it is seen, and where it stood at the escape transfers between runs.
    'exp': the departure at the escape itself, the mean of d over its last ESCAPE_STEPS steps (a
    saddle's exponential runs on to it; a flat plateau's slide, read as for 'line', is noise)."""
    if shape == "exp":
        last = [v for x, v in zip(xs, d) if escape - ESCAPE_STEPS < x <= escape]
        return statistics.fmean(last) if len(last) == ESCAPE_STEPS else None
    length = escape - start
    lo, hi = escape - SLIDE[0] * length, escape - SLIDE[1] * length
    pts = [(x, v) for x, v in zip(xs, d) if lo <= x <= hi]
    if len(pts) < 3:
        return None
    slope, intercept = statistics.linear_regression(*zip(*pts))
    return intercept + slope * escape


def fit_dense(
    xs: list[int],
    d: list[float],
    goal: float,
    now: int,
    start: int,
    noise_k: float = 3.0,
    min_z: float = 3.0,
    z_interval: float = 1.64,
    horizon: float = HORIZON,
    shape: str = "line",
    longest: int | None = None,
) -> Forecast:
    """The escape forecast from the dense signal's departure `d` (`dense_departure`) at the steps
    `xs` (every step of the plateau so far, [start, now]): the step where it reaches `goal`.

    A batch's loss is noisy, so d is averaged in blocks of b steps (about `BLOCKS` blocks on the
    plateau so far), and its noise sigma per block is estimated from the step-to-step differences
    (a trend barely moves them). On the last FIT_SHARE of the blocks (at least `MIN_BLOCKS`) a
    curve is fit by least squares with additive noise (blocks at or below 0 count as they are) and
    extrapolated to the goal; its `shape` (CURVES: the preset's, chosen on its calibration runs by
    study.dense_fit; by default its family's, SHAPES):

    - 'line', d = c + s (x - x_last): a plateau that slides steadily (`mws`, `prefix_sum`), whose
      escape's own exponential shows only in its last few steps, too late to forecast from; an
      exponential fit to the slide's early bend runs ahead of it (`dense_target` sets the goal
      where the slide stood at past escapes);
    - 'exp', d = c + a exp(r (x - x_last)), r on a log grid (c and a are linear given r): a flat
      plateau (matrix completion, `addition`) whose departure grows exponentially, as from a
      saddle (the goal: the departure at past escapes).

    The residual variance is the larger of the noise's and the misfit's. A forecast needs growth
    min_z standard errors from none (for 'exp': the fit beats a constant by min_z^2 variances of
    residual sum of squares), the departure above the noise (c + a > noise_k sigma), and the
    escape at most `horizon` times the plateau so far ahead (a plateau that never ends drifts too;
    it would otherwise be forecast to end, far away) and, given `longest` (the longest plateau of
    the preset's calibration runs, steps), at most `horizon` times that from the plateau's start
    (a run far slower than those the calibration knows, e.g. at a 10-100 times smaller lr). Its
    spread: the escapes of the slopes -/+ z_interval standard errors ('line'), of every r fit
    within z_interval^2 variances of the best ('exp')."""
    b = max(1, len(xs) // BLOCKS)
    n = len(xs) // b
    if n < 2 * MIN_BLOCKS:
        return Forecast(now, reason="plateau too short to judge")
    d, steps = d[len(d) - n * b :], xs[len(xs) - n * b :]
    ys = [statistics.fmean(d[i * b : (i + 1) * b]) for i in range(n)]
    bx = [statistics.fmean(steps[i * b : (i + 1) * b]) for i in range(n)]
    diffs = [q - p for p, q in zip(d, d[1:])]
    med = statistics.median(diffs)
    sigma = 1.4826 * statistics.median(abs(x - med) for x in diffs) / math.sqrt(2 * b) or 1e-12
    m = max(MIN_BLOCKS, int(n * FIT_SHARE))
    ys, rel = ys[-m:], [x - bx[-1] for x in bx[-m:]]
    fit = (_slide if shape == "line" else _saddle)(rel, ys, goal, sigma, min_z, z_interval)
    if isinstance(fit, str):
        return Forecast(now, reason=fit)
    level, ahead, spread = fit  # the departure at the last block; steps from it to the goal
    if level <= noise_k * sigma:
        return Forecast(now, reason="departure within the plateau's noise")
    # the last block itself too: a line through a jump that has begun lags it
    if max(level, ys[-1]) >= goal:
        return Forecast(now, reason="leaving the plateau (the escape step is told once known)")

    def at(steps_ahead: float) -> int:
        return max(now + 1, round(bx[-1] + steps_ahead))

    escape = at(ahead)
    if escape - now > horizon * max(now - start, 1):
        return Forecast(now, reason=f"escape beyond {horizon:g}x the plateau so far ahead")
    if longest and escape - start > horizon * longest:
        return Forecast(
            now,
            reason=f"escape beyond {horizon:g}x the longest plateau the preset was calibrated on "
            f"({longest} steps)",
        )
    return Forecast(
        now,
        escape,
        at(min(spread)),
        at(max(spread)),
        raw=escape,
        start=start,
        basis="the fit's spread",
        signal=DENSE,
    )


def _slide(
    rel: list[float], ys: list[float], goal: float, sigma: float, min_z: float, z: float
) -> tuple[float, float, list[float]] | str:
    """fit_dense's line: (level at x = 0, steps to the goal, those of the slopes -/+ z standard
    errors), or why there is no forecast."""
    slope, level = statistics.linear_regression(rel, ys)  # level: the line at x = 0
    mx = statistics.fmean(rel)
    sxx = sum((x - mx) ** 2 for x in rel)
    sse = sum((y - level - slope * x) ** 2 for x, y in zip(rel, ys))
    se = math.sqrt(max(sigma**2, sse / (len(ys) - 2)) / sxx)
    if slope <= min_z * se:
        return "no significant slide"
    # the slow end: a slope near 0 would put it at infinity, which says nothing more
    slopes = (slope + z * se, max(slope - z * se, slope / 10))
    return level, (goal - level) / slope, [(goal - level) / s for s in slopes]


def _saddle(
    rel: list[float], ys: list[float], goal: float, sigma: float, min_z: float, z: float
) -> tuple[float, float, list[float]] | str:
    """fit_dense's exponential: (level at x = 0, steps to the goal, those of every r fit within
    z^2 variances of the best), or why there is no forecast."""
    width = max(-rel[0], 1.0)
    grid = [0.1 / width * (RATES ** (i / (GRID - 1))) for i in range(GRID)]
    fits = [_fit_exp(rel, ys, r) for r in grid]
    flat = sum((y - statistics.fmean(ys)) ** 2 for y in ys)
    best = min(range(GRID), key=lambda i: fits[i][2])
    c, a, sse = fits[best]
    var = max(sigma**2, sse / (len(ys) - 3))  # misfit beyond the noise widens everything
    if a <= 0 or flat - sse < min_z**2 * var:
        return "no significant exponential growth"

    def ahead(i: int) -> float | None:
        c, a, _ = fits[i]
        return math.log((goal - c) / a) / grid[i] if a > 0 and c + a < goal else None

    near = [ahead(i) for i in range(GRID) if fits[i][2] <= sse + z**2 * var]
    spread = [x for x in near if x is not None]
    best_ahead = ahead(best)
    if best_ahead is None:
        return "leaving the plateau (the escape step is told once known)"
    return c + a, best_ahead, spread or [best_ahead]


def _fit_exp(rel: list[float], ys: list[float], r: float) -> tuple[float, float, float]:
    """(c, a, residual sum of squares) of the least-squares fit y = c + a exp(r x), r fixed."""
    e = [math.exp(r * x) for x in rel]
    n, se, sy = len(e), sum(e), sum(ys)
    see, sey = sum(w * w for w in e), sum(w * y for w, y in zip(e, ys))
    det = n * see - se * se
    if det <= 1e-12 * n * see:
        return 0.0, 0.0, math.inf
    a = (n * sey - se * sy) / det
    c = (sy - a * se) / n
    return c, a, sum((y - c - a * w) ** 2 for y, w in zip(ys, e))


def calibrated(
    f: Forecast, fam: str, signal: str, table: cal.Calibration, target: float = ESCAPE_DEPARTURE
) -> Forecast:
    """The fit's forecast `f` (extrapolated to the departure `target`) corrected by `table` (see
    calibration.py): escape and 90% interval from the quantiles of past errors; unchanged, with
    the basis saying why, where the table has no calibration for (fam, signal) or fit it at
    another target. A seen escape or no forecast is returned as it is."""
    if f.escape is None or f.reason == "escaped" or f.raw is None or f.start is None:
        return f
    c, label = table.lookup(fam, f.signal or signal, cal.elapsed(f.step, f.raw, f.start), target)
    if c is None:
        return Forecast(**{**asdict(f), "basis": f"uncalibrated ({label}): fit's spread"})
    span = f.raw - f.step

    def at(q: float) -> int:
        return max(f.step + 1, round(f.step + span * math.exp(q)))

    return Forecast(
        f.step,
        at(c["q_mid"]),
        at(c["q_low"]),
        at(c["q_high"]),
        raw=f.raw,
        start=f.start,
        basis=f"calibrated on {c['runs']} runs ({label})",
    )


def forecast(
    rows: list[dict[str, Any]],
    signal: str = LOSS,
    target: float = ESCAPE_DEPARTURE,
    after: int = 0,
    table: cal.Calibration | None = None,
    kind: str | None = None,
    dense: tuple[list[int], list[float]] | None = None,
    preset: str | None = None,
    **options: Any,
) -> Forecast:
    """The calibrated escape forecast: `fit_forecast`'s (same arguments, `options` its fit
    settings) corrected by `table` (default: the package's calibration.json) for the family of
    `kind`, the run's (transition.RUN_KINDS; None: guessed from the rows), and the signal the fit
    read: `dense`, the run's signal.jsonl as (steps, values), where it covers the plateau, fit to
    the target departure the table's DENSE entry for the run's `preset` (its name: `dense_group`)
    was calibrated at (`dense_target`), by the curve it names, and not beyond twice the longest
    plateau its calibration runs had (`fit_dense`'s `longest`). A preset without one (no
    calibration run of it escaped) is forecast from the logged loss alone: the slide before an
    escape differs between tasks (targets 0.08-0.29), and another's target, which a still-sliding
    plateau passes, was read as an escape to come (`permutation`, `histogram` at their CPU
    presets: docs/forecast)."""
    kind = kind or run_kind(rows)
    table = table if table is not None else cal.packaged()
    group = dense_group(kind, preset) if dense is not None and signal == LOSS else None
    goal = table.target(group, DENSE) if group else None
    settings = table.dense_settings(group, DENSE) if group and goal else {}
    shape = settings.get("shape")
    f = fit_forecast(
        rows,
        signal,
        target,
        after,
        kind=kind,
        dense=dense if goal else None,
        dense_goal=goal,
        dense_shape=shape if shape in CURVES else None,
        dense_longest=settings.get("longest"),
        **options,
    )
    if f.signal == DENSE and group and goal:
        return calibrated(f, group, signal, table, goal)
    if group and not goal and f.escape is None and not f.reason.startswith("leaving"):
        f = replace(f, reason=f"{f.reason}; the per-step fit has no calibration for {preset}")
    return calibrated(f, family(kind), signal, table, target)


def dense_group(kind: str, preset: str | None) -> str | None:
    """The calibration table's group for a dense fit of a run of `kind` from `preset`,
    'family:preset' (the slide before the escape differs between tasks, and between sizes of one
    task: mws and mws_full); None without a preset."""
    return f"{family(kind)}:{preset}" if preset else None


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


def calibrate(runs: list[tuple[Any, ...]], signal: str, window: int = WINDOW) -> float | None:
    """The departure of `signal` at the escape, median over `runs` that escaped, each (rows,
    after) or (rows, after, kind) (kind: transition.RUN_KINDS; without it, guessed from the
    rows): the target for forecasting with that signal. None when no run escaped."""
    at_escape = []
    for rows, after, *kind in runs:
        steps, d, found = departure(rows, signal, after, window, *kind)
        if found["escape_step"] is None or not steps:
            continue
        i = max(j for j, s in enumerate(steps) if s <= found["escape_step"])
        at_escape.append(d[i])
    return statistics.median(at_escape) if at_escape else None


def calibrate_dense(
    runs: list[tuple[Any, ...]], window: int = WINDOW, shape: str | None = None
) -> float | None:
    """The dense fit's target (`dense_target`) for the curve `shape` (None: the family's, SHAPES),
    median over `runs` that escaped, each (rows, after, kind, dense) (dense: the run's
    signal.jsonl as (steps, values)). None when no run escaped with a dense signal over its
    plateau."""
    at_escape = []
    for rows, after, kind, dense in runs:
        steps, _, found = departure(rows, LOSS, after, window, kind)
        escape, start = found["escape_step"], found["plateau_start"]
        span = dense_span(dense, start, escape or 0) if escape else None
        if span is None or len(steps) < window:
            continue
        d, _ = dense_departure(*span, head=steps[window - 1])
        curve = shape or SHAPES[family(kind or run_kind(rows))]
        t = dense_target(span[0], d, escape, start, curve) if d else None
        if t is not None:
            at_escape.append(t)
    return statistics.median(at_escape) if at_escape else None


def history(
    rows: list[dict[str, Any]],
    signal: str = LOSS,
    target: float = ESCAPE_DEPARTURE,
    after: int = 0,
    every: int = 1,
    raw: bool = False,
    dense: tuple[list[int], list[float]] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """The forecast as it would have been made at each logged step (every `every`-th), as dicts:
    what a run's training wrote to metrics.jsonl, recomputed for any signal (the study's input);
    `raw`: the fit's forecast (`fit_forecast`), before calibration; `dense`: the run's dense
    signal (steps, values), read up to each log step as training had it."""
    make = fit_forecast if raw else forecast
    out = []
    for i in range(1, len(rows) + 1, every):
        upto = None
        if dense is not None:
            j = bisect.bisect_right(dense[0], rows[i - 1]["step"])
            upto = (dense[0][:j], dense[1][:j])
        out.append(asdict(make(rows[:i], signal, target, after, dense=upto, **options)))
    return out


def record(rows: list[dict[str, Any]], escape: int | None, keep: int = 10) -> dict[str, Any]:
    """How the logged forecasts (metrics rows' forecast_*) fared against the escape as it came
    (summary.json's `forecast_record`): their number before the escape, the share whose interval
    held it, the median |forecast - escape| (steps), the lead of the first one, and `made`: at
    most `keep` of them, evenly spread, each {step, escape, low, high, covered, error} (error =
    forecast - actual, steps). Without an escape only the forecasts themselves (every one a
    false alarm if the run never escapes)."""
    made = [
        r
        for r in rows
        if r.get("forecast_escape") is not None and (escape is None or r["step"] < escape)
    ]
    out: dict[str, Any] = {"escape_step": escape, "forecasts": len(made)}
    picks = sorted({round(i * (len(made) - 1) / max(keep - 1, 1)) for i in range(keep)})
    shown = [made[i] for i in picks] if made else []

    def held(r: dict[str, Any]) -> bool:
        return r["forecast_low"] <= escape <= r["forecast_high"]

    out["made"] = [
        {
            "step": r["step"],
            "escape": r["forecast_escape"],
            "low": r["forecast_low"],
            "high": r["forecast_high"],
            "covered": None if escape is None else held(r),
            "error": None if escape is None else r["forecast_escape"] - escape,
        }
        for r in shown
    ]
    if escape is not None and made:
        out["covered"] = round(sum(map(held, made)) / len(made), 3)
        out["median_abs_error"] = statistics.median(
            abs(r["forecast_escape"] - escape) for r in made
        )
        out["first_lead"] = escape - made[0]["step"]
    return out
