"""Find the plateau and the sudden drop from logged metrics alone (so it also runs on old runs).

The detector reads one series, `eval_loss_mask` (the hidden-entry loss on the fixed evaluation
batch; `loss_mask` where that is absent; for the GPT variant and the sequence tasks the
cross-entropy `eval_loss`, on the written outputs only), smoothed by a running median of `window`
points:

1. plateau_start: the first logged step after which the smoothed loss falls by less than
   `flat_ratio` over the next `window` logs (the initial fall from random weights is over).
2. plateau_level: the median of the smoothed loss from plateau_start up to the first step where
   it falls 20% below its plateau_start value (or to the end).
3. drop_step: the first step after plateau_start where the smoothed loss falls below
   plateau_level / 2; null when that never happens. escape_step: the first step 20% below
   the plateau (the loss has left it); the plateau's length is escape_step - plateau_start.

`dropped` additionally asks for the final loss to be `min_factor` (10x) below the plateau.

`sudden` is the reviewer's window rule for the paper's phenomenon (see `window_rule`): the loss
sat on the plateau, within 25% of its level, for P steps (`plateau_steps`), and within P/4 steps
after leaving that band fell at least 5x below the level (`drop_factor` F = plateau level / the
lowest smoothed L_mask in those P/4 steps). A sharp drop followed by a long slow tail is sudden; a
slow slide is not, however deep it ends. `fall_start`/`fall_end`/`fall_ratio` (see `suddenness`)
describe the whole fall, from the plateau to the final value, for comparison.
"""

from __future__ import annotations

import statistics
from typing import Any

# escape_step: the first step the smoothed loss is this fraction below the plateau (the plateau's
# level is also read only up to the step this fraction below plateau_start)
ESCAPE_DEPARTURE = 0.2
# drop_step: the first step the smoothed loss is below this fraction of the plateau
DROP_FRACTION = 0.5
# the running median's width and the plateau start's test, in logs (`detect`)
WINDOW = 5
FLAT_RATIO = 0.9
# `dropped`: the final loss this factor below the plateau
MIN_FACTOR = 10.0
# the window rule (`window_rule`): the plateau band around its level, and the drop factor F that
# makes a drop sudden
BAND = 0.25
SUDDEN_FACTOR = 5.0


# What a run's metrics rows are: the paper's BERT on matrices, the matrix task's GPT variant
# (models/gpt.py), a sequence task (tasks/sequence.py). A task declares its runs' kind
# (`Task.run_kind`); `run_kind` guesses it from the rows where only they are known.
RUN_KINDS = ("matrix", "gpt", "sequence")
# the loss the drop is read from, by kind: L_mask on matrices (the MSE on hidden entries), the
# cross-entropy on the written outputs for the GPT variant (Fig. 11) and the sequence tasks
HEADLINE_LOSS = {"matrix": "eval_loss_mask", "gpt": "eval_loss", "sequence": "eval_loss"}
# what that loss is, in words (figures, reports)
HEADLINE_LABEL = {
    "matrix": "L_mask (MSE on hidden entries)",
    "gpt": "cross-entropy on the written matrix",
    "sequence": "cross-entropy on the outputs",
}


def run_kind(rows: list[dict[str, Any]]) -> str:
    """A run's kind (RUN_KINDS) guessed from the keys each objective writes, for metrics read
    without their config.json (`kind=None` below): 'sequence' (`eval_seq_acc`), 'gpt'
    (`eval_acc_obs`), else 'matrix'."""
    if rows and "eval_seq_acc" in rows[0]:
        return "sequence"
    if rows and "eval_acc_obs" in rows[0]:
        return "gpt"
    return "matrix"


def loss_series(
    rows: list[dict[str, Any]], kind: str | None = None
) -> tuple[list[int], list[float]]:
    """(steps, losses) of the run's headline loss (HEADLINE_LOSS of `kind`; None: `run_kind`'s
    guess from the rows); on matrices the training L_mask where a row lacks the evaluation's."""
    key = HEADLINE_LOSS[kind or run_kind(rows)]
    if key == "eval_loss_mask" and not (
        rows and all(r.get("eval_loss_mask") is not None for r in rows)
    ):
        key = "loss_mask"
    pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [s for s, _ in pts], [v for _, v in pts]


def running_median(values: list[float], window: int) -> list[float]:
    half = window // 2
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def detect(
    rows: list[dict[str, Any]],
    window: int = WINDOW,
    flat_ratio: float = FLAT_RATIO,
    min_factor: float = MIN_FACTOR,
    after: int = 0,
    kind: str | None = None,
) -> dict[str, Any]:
    """`after`: the plateau is looked for only after this step (the end of a training curriculum,
    during which the evaluation loss reflects the shifted training data, not the target's).
    `kind`: the run's (RUN_KINDS; None: guessed from the rows), which names the loss read."""
    steps, raw = loss_series(rows, kind)
    result: dict[str, Any] = {
        "plateau_start": None,
        "plateau_level": None,
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
    end = next(
        (j for j in range(start, len(s)) if s[j] < (1 - ESCAPE_DEPARTURE) * s[start]), len(s)
    )
    plateau = statistics.median(s[start:end])
    drop = next((j for j in range(start, len(s)) if s[j] < DROP_FRACTION * plateau), None)
    escape = next(
        (j for j in range(start, len(s)) if s[j] < (1 - ESCAPE_DEPARTURE) * plateau), None
    )
    result["plateau_start"] = steps[start]
    result["plateau_level"] = plateau
    result["escape_step"] = steps[escape] if escape is not None else None
    if drop is not None:
        result["drop_step"] = steps[drop]
        result["dropped"] = s[-1] * min_factor <= plateau
    return result


def drop_seen_at(rows: list[dict[str, Any]], after: int = 0, kind: str | None = None) -> int | None:
    """The first logged step at which `detect` on the rows up to it says `dropped`: where a run's
    early stop (`train.stop_after_drop`) started counting, log by log; None if it never did. For
    resuming runs whose checkpoints did not record it (the rows are re-read prefix by prefix)."""
    for i in range(1, len(rows) + 1):
        if detect(rows[:i], after=after, kind=kind)["dropped"]:
            return int(rows[i - 1]["step"])
    return None


def window_rule(
    rows: list[dict[str, Any]],
    found: dict[str, Any],
    window: int = WINDOW,
    band: float = BAND,
    factor: float = SUDDEN_FACTOR,
    kind: str | None = None,
) -> dict[str, Any]:
    """The window rule on the smoothed series: `plateau_end` is the first step after plateau_start
    where the loss is below (1 - band) x the plateau level; the plateau is the run of logs just
    before it that stay within band x the level, `plateau_steps` P its length in steps;
    `drop_factor` F = level / the lowest loss in (plateau_end - 1 log, plateau_end + P/4];
    `sudden` = F >= factor. All None/False when the loss never leaves the plateau. F is inf where
    the loss reaches exactly 0 in the window (float32 cross-entropy can); JSON writes it as null."""
    out: dict[str, Any] = {
        "plateau_end": None,
        "plateau_steps": None,
        "drop_factor": None,
        "sudden": False,
    }
    level, first = found.get("plateau_level"), found.get("plateau_start")
    if not level or first is None:
        return out
    steps, raw = loss_series(rows, kind)
    s = running_median(raw, window)
    start = steps.index(first)
    leave = next((j for j in range(start, len(s)) if s[j] < (1 - band) * level), None)
    if leave is None or leave == 0:
        return out
    i0 = leave - 1
    while i0 - 1 >= start and abs(s[i0 - 1] - level) <= band * level:
        i0 -= 1
    p_steps = steps[leave] - steps[i0]
    horizon = steps[leave] + p_steps / 4
    low = min(v for st, v in zip(steps[leave:], s[leave:]) if st <= horizon)
    f = level / low if low > 0 else float("inf")
    out.update(
        plateau_end=steps[leave], plateau_steps=p_steps, drop_factor=round(f, 3), sudden=f >= factor
    )
    return out


def suddenness(
    rows: list[dict[str, Any]], found: dict[str, Any], window: int = WINDOW, kind: str | None = None
) -> dict[str, Any]:
    """fall_start / fall_end: the first steps where the smoothed L_mask is 20% and 80% of the way
    (log scale) from the plateau to its final value; fall_ratio = (end - start) / start."""
    out: dict[str, Any] = {"fall_start": None, "fall_end": None, "fall_ratio": None}
    plateau = found.get("plateau_level")
    if not found.get("drop_step") or not plateau:
        return out
    steps, raw = loss_series(rows, kind)
    s = running_median(raw, window)
    final = s[-1]
    if not 0 < final < plateau:
        return out
    level = lambda frac: plateau * (final / plateau) ** frac  # noqa: E731
    start_i = next(
        (i for i, v in enumerate(s) if steps[i] >= found["plateau_start"] and v <= level(0.2)), None
    )
    end_i = next(
        (i for i, v in enumerate(s) if start_i is not None and i >= start_i and v <= level(0.8)),
        None,
    )
    if start_i is None or end_i is None or steps[start_i] == 0:
        return out
    ratio = (steps[end_i] - steps[start_i]) / steps[start_i]
    out.update(fall_start=steps[start_i], fall_end=steps[end_i], fall_ratio=round(ratio, 4))
    return out


# summary.json's description of the detector, from the thresholds above
DETECTOR = (
    f"transition.detect(window={WINDOW}, flat_ratio={FLAT_RATIO}): drop = smoothed eval L_mask < "
    f"plateau/{1 / DROP_FRACTION:g}; sudden = window_rule(band={BAND}, factor={SUDDEN_FACTOR:g}): "
    f"F >= {SUDDEN_FACTOR:g} within P/4 steps of leaving the plateau"
)


def summarize(
    rows: list[dict[str, Any]],
    seconds: float | None = None,
    after: int = 0,
    kind: str | None = None,
) -> dict[str, Any]:
    """The run's summary.json: transition fields plus final losses (the plateau sought after
    `after`; `kind`: the run's, RUN_KINDS, None: guessed from the rows)."""
    found = detect(rows, after=after, kind=kind)
    last = rows[-1] if rows else {}
    headline = HEADLINE_LOSS[kind or run_kind(rows)]
    # a size mixture logs L_mask per size (eval_loss_mask_5x5, ...): a drop step for each
    per_size = sorted({k for r in rows[:1] for k in r if k.startswith("eval_loss_mask_")})
    sizes = {
        f"drop_step_{k.removeprefix('eval_loss_mask_')}": detect(
            [{"step": r["step"], "eval_loss_mask": r.get(k)} for r in rows],
            after=after,
            kind="matrix",
        )["drop_step"]
        for k in per_size
    }
    return {
        **found,
        **suddenness(rows, found, kind=kind),
        **window_rule(rows, found, kind=kind),
        **sizes,
        "final_loss": last.get("eval_loss", last.get("loss")),
        # the headline loss's last value (L_mask on matrices, the output cross-entropy on
        # sequences); final_loss is the evaluation objective's
        "final_level": last.get(headline, last.get(headline.removeprefix("eval_"))),
        "headline": headline,
        "steps": last.get("step", 0),
        "seconds": seconds if seconds is not None else last.get("time"),
        "detector": DETECTOR,
    }

