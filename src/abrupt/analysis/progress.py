"""Progress measures against the loss: which moved first, and how long before the drop.

The measures are the task's (`Task.progress`): on matrices the largest row and column attention
mass of a head, representation collapse and position purity (abrupt/progress.py); on a sequence
task the follow-up's repetition, collapse over output positions and attention progress per layer
(tasks/sequence.py). They are read from metrics.jsonl where training logged them
(`train.progress=true`, the sequence presets' default: every log step, with the gradient norm of
each part), and otherwise computed at every checkpoint on the analyses' seeded batch (`source`
in the results says which). Each is drawn under the headline loss, and reported with

    halfway_step          the first step (from the plateau's start) where it got half-way from its
                          value at the plateau's start to its final value
    halfway_after_extreme the same from its extreme (the value farthest from the final one, at
                          `extreme_step`) on: for a measure that rises on the plateau and then
                          falls (collapse), where its fall got half-way
and each step's distance before the drop (the detector's drop_step).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..checks import validate_run
from ..config import Config, ConfigError
from ..models import groups
from ..plots import figure
from ..progress import LABELS, PROGRESS_KEYS
from .common import Count, Inputs, Result, Seed, Table, Text, number

TITLE = "Progress measures during training"
PAPER = (
    "The follow-up study (Gopalani & Hu, 2025) finds attention learning to be the bottleneck: "
    "attention to the "
    "right keys, and the end of representation collapse, begin before the loss falls."
)
ORDER = 5
NEEDS: frozenset[str] = frozenset()  # task capabilities (tasks/base.py): the task's progress only
# the follow-up's claims, each with the measures it is about (prefixes of their keys)
FOLLOW_UP = {
    "attention to the right keys": ("prog_attn_l", "prog_row_mass", "prog_col_mass"),
    "the end of collapse": ("prog_collapse",),
}


def unsupported(cfg: Config) -> str | None:
    if cfg.train.progress:
        return None
    # not logged: computed from the checkpoints, where the model can compute them at all
    try:
        validate_run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=True)))
    except ConfigError as e:
        return f"the run logged no progress measures and they cannot be computed for it ({e})"
    return None


def halfway(steps: list[int], values: list[float], start: int) -> int | None:
    """First step (from `start`) where the value is half-way from its value at `start` to its final
    value."""
    pts = _points(steps, values, start)
    if len(pts) < 2:
        return None
    first, last = pts[0][1], pts[-1][1]
    mid = (first + last) / 2
    rising = last > first
    return next((s for s, v in pts if (v >= mid if rising else v <= mid)), None)


def extreme_halfway(
    steps: list[int], values: list[float], start: int
) -> tuple[int | None, float | None, int | None]:
    """(step, value) of the value farthest from the final one (from `start` on), and the first
    step from there where the value is half-way from it to the final value."""
    pts = _points(steps, values, start)
    if len(pts) < 2:
        return None, None, None
    last = pts[-1][1]
    at = max(range(len(pts)), key=lambda i: abs(pts[i][1] - last))
    step, far = pts[at]
    mid = (far + last) / 2
    rising = last > far
    half = next((s for s, v in pts[at:] if (v >= mid if rising else v <= mid)), None)
    return step, far, half


def _points(steps: list[int], values: list[Any], start: int) -> list[tuple[int, float]]:
    return [
        (s, v)
        for s, v in zip(steps, values)
        if s >= start and isinstance(v, (int, float)) and math.isfinite(v)
    ]


def computed(inputs: Inputs, n: int, seed: int) -> tuple[list[int], dict[str, list[float]]]:
    """(checkpoint steps, {measure: value at each}) of the task's progress measures on the
    seeded batch of `n` examples."""
    batch = inputs.batch(n, seed)
    found = {
        step: inputs.task.progress(model, batch, inputs.cfg)
        for step, model in inputs.all_checkpoints().items()
    }
    keys = list(dict.fromkeys(k for v in found.values() for k in v))
    return list(found), {k: [v.get(k) for v in found.values()] for k in keys}


def run(inputs: Inputs, seed: Seed = 0, n: Count = 256) -> Result:
    """`seed`, `n`: the batch the measures are computed on where training logged none."""
    rows, summary = inputs.metrics, inputs.summary
    start, drop = summary.get("plateau_start") or 0, summary.get("drop_step")
    keys = [k for k in PROGRESS_KEYS if any(k in r for r in rows)]
    # the measures a sequence task adds
    keys += sorted({k for r in rows for k in r if k.startswith("prog_") and k not in PROGRESS_KEYS})
    if keys:
        source = "logged"
        keys += [f"grad_norm_{p}" for p in groups.PARTS if any(f"grad_norm_{p}" in r for r in rows)]
        steps = [r["step"] for r in rows]
        series = {k: [r.get(k) for r in rows] for k in keys}
    else:
        source = "checkpoints"
        steps, series = computed(inputs, n, seed)
    table = []
    for key, values in series.items():
        at = halfway(steps, values, start)
        extreme_step, extreme, after = extreme_halfway(steps, values, start)
        table.append(
            {
                "measure": key,
                "at_plateau_start": next((v for s, v in zip(steps, values) if s >= start), None),
                "final": values[-1] if values else None,
                "halfway_step": at,
                "steps_before_drop": (drop - at) if drop is not None and at is not None else None,
                "extreme_step": extreme_step,
                "extreme": extreme,
                "halfway_after_extreme": after,
                "after_extreme_before_drop": (
                    drop - after if drop is not None and after is not None else None
                ),
            }
        )
    numbers = {
        "source": source,
        "steps": steps if source == "checkpoints" else [],
        "plateau_start": start,
        "drop_step": drop,
        "headline_label": inputs.task.headline_label,
        "rows": table,
    }
    loss = f"eval_{inputs.task.headline}"
    draw = {
        "loss_steps": [r["step"] for r in rows],
        "loss": [r.get(loss) for r in rows],
        "steps": steps,
        "series": series,
    }
    return Result(numbers, draw)


def plot(result: Result, out: Path) -> list[Path]:
    d, r = result.figure_data, result.numbers
    prog = [k for k in d["series"] if k.startswith("prog_")]
    grads = [k for k in d["series"] if k.startswith("grad_norm_")]
    path = out / "progress.png"
    drop = r["drop_step"]
    # measures computed at checkpoints are few points: marked, on a log step axis
    marker = "o" if r["source"] == "checkpoints" else None
    panels = [
        ("loss", f"evaluation {r['headline_label']}", True),
        (prog, f"progress measures ({'at checkpoints' if marker else 'logged'})", False),
    ]
    if grads:
        panels.append((grads, "gradient norm per part", True))
    with figure(path, len(panels), 1, figsize=(7, 2.7 * len(panels)), sharex=True) as (fig, axes):
        for (keys, title, log), (ax,) in zip(panels, axes):
            if keys == "loss":
                ax.plot(d["loss_steps"], _nan(d["loss"]), lw=1.1, color="black")
            for key in keys if keys != "loss" else ():
                ax.plot(
                    d["steps"],
                    _nan(d["series"][key]),
                    lw=1.1,
                    marker=marker,
                    ms=3,
                    label=LABELS.get(key, key),
                )
            if drop is not None:
                ax.axvline(drop, color="gray", ls="--", lw=0.8, label="drop")
            if log:
                ax.set_yscale("log")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            if keys != "loss":
                ax.legend(fontsize=7)
        axes[-1][0].set_xlabel("step")
    return [path]


def _nan(ys: list[Any]) -> list[float]:
    return [math.nan if y is None else y for y in ys]


def story(r: dict[str, Any]) -> str:
    """Where each measure's move got half-way, relative to the drop, beside the follow-up's
    finding ('' without a drop)."""
    drop = r["drop_step"]
    if drop is None:
        return ""
    parts = []
    for claim, prefixes in FOLLOW_UP.items():
        found = [x for x in r["rows"] if x["measure"].startswith(prefixes)]
        timed = [x for x in found if x["after_extreme_before_drop"] is not None]
        if not timed:
            continue
        said = ", ".join(
            f"{x['measure']} half-way at step {x['halfway_after_extreme']} "
            f"({_relative(x['after_extreme_before_drop'])})"
            for x in timed
        )
        agree = all(x["after_extreme_before_drop"] > 0 for x in timed)
        verdict = "before the drop, as the follow-up finds" if agree else "not before the drop"
        parts.append(f"{claim}: {said}, {verdict}")
    claimed = tuple(p for prefixes in FOLLOW_UP.values() for p in prefixes)
    others = [
        f"{x['measure']} half-way at step {x['halfway_after_extreme']} "
        f"({_relative(x['after_extreme_before_drop'])})"
        for x in r["rows"]
        if x["measure"].startswith("prog_")
        and not x["measure"].startswith(claimed)
        and x["after_extreme_before_drop"] is not None
    ]
    if others:
        parts.append("the other measures: " + ", ".join(others))
    if not parts:
        return ""
    return (
        f"The follow-up finds attention to the right keys and the end of collapse precede the "
        f"loss drop. Here (drop at step {drop}; half-way from each measure's extreme on the "
        "plateau to its final value): " + "; ".join(parts) + "."
    )


def _relative(before: int) -> str:
    if before == 0:
        return "at the drop"
    return f"{before} steps before the drop" if before > 0 else f"{-before} steps after it"


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = [
        [
            x["measure"],
            x["at_plateau_start"],
            x.get("extreme"),
            x["final"],
            x["halfway_step"],
            x["steps_before_drop"],
            x.get("halfway_after_extreme"),
            x.get("after_extreme_before_drop"),
        ]
        for x in r["rows"]
    ]
    source = (
        f"computed at the checkpoints (steps {', '.join(map(str, r['steps']))}; the run logged "
        "none, so a half-way step is only as fine as the checkpoints)"
        if r.get("source") == "checkpoints"
        else "as logged during training"
    )
    out: list[Table | Text] = [
        Text(
            f"Measures {source}. Plateau from step {r['plateau_start']}; "
            + (f"drop at step {r['drop_step']}" if r["drop_step"] is not None else "no drop")
            + ". A measure's half-way step is where it first got half-way from its "
            "plateau-start value to its final value; the half-way step after its extreme, where "
            "it got half-way from its value farthest from the final one (a rise and fall: "
            "collapse) to the final one."
        )
    ]
    told = story(r)
    if told:
        out.append(Text(told))
    out.append(
        Table(
            [
                "measure",
                "at plateau start",
                "extreme",
                "final",
                "half-way step",
                "steps before the drop",
                "half-way after extreme",
                "its steps before the drop",
            ],
            rows,
        )
    )
    return out


def findings(r: dict[str, Any]) -> list[list[str]]:
    """The report's story rows ([question, this run, the follow-up finds, verdict]): when
    attention to the right keys and the end of collapse came, against the drop."""
    drop = r["drop_step"]
    if drop is None:
        return []
    out = []
    for claim, prefixes in FOLLOW_UP.items():
        for x in r["rows"]:
            if not x["measure"].startswith(prefixes) or x["after_extreme_before_drop"] is None:
                continue
            before = x["after_extreme_before_drop"]
            moved = (
                f"{x['measure']}: {number(x['extreme'])} (step {x['extreme_step']}) to "
                f"{number(x['final'])}, half-way at step {x['halfway_after_extreme']} "
                f"({_relative(before)}, drop at {drop})"
            )
            out.append(
                [
                    f"when {claim} came",
                    moved,
                    f"{claim} precedes the loss drop",
                    "agrees" if before > 0 else "differs",
                ]
            )
    return out
