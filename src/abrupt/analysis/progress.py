"""Progress measures against the loss: which moved first, and how long before the drop.

Reads the measures training logged (`train.progress=true`; see abrupt/progress.py) from
metrics.jsonl, draws each under the L_mask curve, and reports for each the step where it first
got half-way from its value at the start of the plateau to its final value, and how many steps
before the drop (the detector's drop_step) that was.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config import Config
from ..models import groups
from ..plots import figure
from ..progress import LABELS, PROGRESS_KEYS
from .common import Inputs, Result, Table, Text

TITLE = "Progress measures during training"
PAPER = (
    "The follow-up study (Gopalani & Hu, 2025) finds attention learning to be the bottleneck: "
    "attention to the "
    "right keys, and the end of representation collapse, begin before the loss falls."
)
ORDER = 5
NEEDS = frozenset()  # task capabilities (tasks/base.py)


def unsupported(cfg: Config) -> str | None:
    return None if cfg.train.progress else "the run was trained without train.progress=true"


def halfway(steps: list[int], values: list[float], start: int) -> int | None:
    """First step (from `start`) where the value is half-way from its value at `start` to its final
    value."""
    pts = [
        (s, v)
        for s, v in zip(steps, values)
        if s >= start and isinstance(v, (int, float)) and math.isfinite(v)
    ]
    if len(pts) < 2:
        return None
    first, last = pts[0][1], pts[-1][1]
    mid = (first + last) / 2
    rising = last > first
    return next((s for s, v in pts if (v >= mid if rising else v <= mid)), None)


def run(inputs: Inputs) -> Result:
    rows, summary = inputs.metrics, inputs.summary
    steps = [r["step"] for r in rows]
    start, drop = summary.get("plateau_start") or 0, summary.get("drop_step")
    keys = [k for k in PROGRESS_KEYS if any(k in r for r in rows)]
    # the measures a sequence task adds
    keys += sorted({k for r in rows for k in r if k.startswith("prog_") and k not in PROGRESS_KEYS})
    keys += [f"grad_norm_{p}" for p in groups.PARTS if any(f"grad_norm_{p}" in r for r in rows)]
    table = []
    for key in keys:
        values = [r.get(key) for r in rows]
        at = halfway(steps, values, start)
        table.append(
            {
                "measure": key,
                "at_plateau_start": next((v for s, v in zip(steps, values) if s >= start), None),
                "final": values[-1] if values else None,
                "halfway_step": at,
                "steps_before_drop": (drop - at) if drop is not None and at is not None else None,
            }
        )
    numbers = {"plateau_start": start, "drop_step": drop, "rows": table}
    # the headline loss: L_mask on matrices, the cross-entropy on outputs for a sequence task
    draw = {
        "steps": steps,
        "loss_mask": [r.get("eval_loss_mask", r.get("eval_loss")) for r in rows],
        "series": {k: [r.get(k) for r in rows] for k in keys},
    }
    return Result(numbers, draw)


def plot(result: Result, out: Path) -> list[Path]:
    d = result.figure_data
    prog = [k for k in d["series"] if k.startswith("prog_")]
    grads = [k for k in d["series"] if k.startswith("grad_norm_")]
    path = out / "progress.png"
    drop = result.numbers["drop_step"]
    with figure(path, 3, 1, figsize=(7, 8), sharex=True) as (fig, axes):
        panels = (
            (
                axes[0][0],
                ["loss_mask"],
                "evaluation loss (L_mask; cross-entropy for a sequence task)",
                True,
            ),
            (axes[1][0], prog, "progress measures", False),
            (axes[2][0], grads, "gradient norm per part", True),
        )
        for ax, keys, title, log in panels:
            for key in keys:
                ys = d["loss_mask"] if key == "loss_mask" else d["series"][key]
                ax.plot(
                    d["steps"],
                    [math.nan if y is None else y for y in ys],
                    lw=1.1,
                    label=LABELS.get(key, key),
                )
            if drop is not None:
                ax.axvline(drop, color="gray", ls="--", lw=0.8)
            if log:
                ax.set_yscale("log")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            if keys != ["loss_mask"]:
                ax.legend(fontsize=7)
        axes[2][0].set_xlabel("step")
    return [path]


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = [
        [x["measure"], x["at_plateau_start"], x["final"], x["halfway_step"], x["steps_before_drop"]]
        for x in r["rows"]
    ]
    return [
        Text(
            f"Plateau from step {r['plateau_start']}; drop at step {r['drop_step']}. A measure's "
            "half-way step is where it "
            "first got half-way from its plateau-start value to its final value."
        ),
        Table(
            ["measure", "at plateau start", "final", "half-way step", "steps before the drop"], rows
        ),
    ]
