"""Switching components between a plateau checkpoint and a post-drop one (Sec. 3 item 9).

Each parameter group (models/groups.py) is moved from one model into the other, both directions,
and the task's metrics are re-measured (`Task.evaluate` on the analyses' seeded batch). Groups:
qkv, attn_out, mlp, layernorm, embeddings, readout, and the two halves "attention" (qkv +
attn_out) and "rest" (everything else); a group the model lacks (the decoder's ln_embed) is
skipped and listed in `absent`.

On matrices the metrics are L, L_obs and L_mask of the completed matrices; on a sequence task the
teacher-forced cross-entropy and accuracy of the outputs, the task's headline metric first in the
report. Which group carries the drop is the one whose transplant moves the headline most.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any

from ..config import Config
from ..hooks import HookedModule
from ..models import groups as groups_
from ..plots import figure
from .common import (
    Count,
    Inputs,
    Result,
    Seed,
    Table,
    Text,
    each,
    headline,
    headline_numbers,
    loss_cells,
    needs_hidden,
    one_of,
)

TITLE = "Switching components"
PAPER = (
    "Attention is the component that changes at the drop: moving the attention weights between "
    "a plateau and a final model carries most of the difference in loss."
)
ORDER = 70
NEEDS: frozenset[str] = frozenset()  # task capabilities (tasks/base.py): the task's evaluate only


def group_names(model: HookedModule, group: str) -> list[str]:
    return groups_.names(model, group)


def transplant(into: HookedModule, donor: HookedModule, group: str) -> HookedModule:
    """A copy of `into` with `group`'s parameters taken from `donor`."""
    out = copy.deepcopy(into)
    sd = out.state_dict()
    donor_sd = donor.state_dict()
    for name in group_names(into, group):
        sd[name] = donor_sd[name].clone()
    out.load_state_dict(sd)
    return out


def unsupported(cfg: Config) -> str | None:
    # a matrix's L_mask is scored on hidden entries; data.p_mask means nothing to other tasks
    return needs_hidden(cfg)


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 512,
    groups: Annotated[tuple[str, ...], each(one_of(*groups_.GROUPS))] = groups_.SWITCHING,
) -> Result:
    """Between the first (plateau) and the last (post-drop) chosen checkpoint."""
    batch = inputs.batch(n, seed)
    evaluate = inputs.task.evaluate
    (pre_step, pre_model), (post_step, post_model) = inputs.pre, inputs.post
    absent = groups_.absent(list(groups), pre_model.cfg)
    numbers: dict[str, Any] = {
        "seed": seed,
        "n": n,
        **headline_numbers(inputs),
        "pre_step": pre_step,
        "post_step": post_step,
        "pre": evaluate(pre_model, batch),
        "post": evaluate(post_model, batch),
        "pre_with_post": {},
        "post_with_pre": {},
    }
    if absent:
        numbers["absent"] = absent
    for group in groups:
        if group in absent:
            continue
        numbers["pre_with_post"][group] = evaluate(transplant(pre_model, post_model, group), batch)
        numbers["post_with_pre"][group] = evaluate(transplant(post_model, pre_model, group), batch)
    return Result(numbers)


def plot(result: Result, out: Path) -> list[Path]:
    r = result.numbers
    key, label = headline(r)
    groups = list(r["pre_with_post"])
    xs = range(len(groups))
    path = out / "switching.png"
    with figure(path, figsize=(8, 3.6)) as (fig, axes):
        ax = axes[0][0]
        ax.bar(
            [x - 0.2 for x in xs],
            [r["pre_with_post"][g][key] for g in groups],
            0.4,
            label=f"plateau model (step {r['pre_step']}) + group from step {r['post_step']}",
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [r["post_with_pre"][g][key] for g in groups],
            0.4,
            label=f"final model (step {r['post_step']}) + group from step {r['pre_step']}",
        )
        ax.axhline(r["pre"][key], color="tab:blue", ls=":", lw=1, label="plateau model as is")
        ax.axhline(r["post"][key], color="tab:orange", ls=":", lw=1, label="final model as is")
        ax.set_xticks(list(xs), groups)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return [path]


def render(r: dict[str, Any]) -> list[Table | Text]:
    key, label = headline(r)
    if "headline" in r:  # a task's own metrics, its headline first
        metrics = [key, *(k for k in r["pre"] if k != key)]
        header, cells = metrics, lambda d: [d[k] for k in metrics]
    else:  # matrices: the paper's L, L_obs, L_mask
        header, cells = ["L", "L_obs", "L_mask"], loss_cells
    rows = [
        [f"plateau (step {r['pre_step']}) as is", *cells(r["pre"])],
        [f"final (step {r['post_step']}) as is", *cells(r["post"])],
    ]
    rows += [[f"plateau + final {g}", *cells(v)] for g, v in r["pre_with_post"].items()]
    rows += [[f"final + plateau {g}", *cells(v)] for g, v in r["post_with_pre"].items()]
    out: list[Table | Text] = []
    if r["pre_with_post"]:
        out.append(Text(_story(r, key, label)))
    if r.get("absent"):
        out.append(Text(f"Not in this model, skipped: {', '.join(r['absent'])}."))
    return [*out, Table(["model", *header], rows)]


def _story(r: dict[str, Any], key: str, label: str) -> str:
    """How far each move takes the plateau model toward the final one, on a log scale of the
    headline (0: no change, 1: all the way), and whether attention carries most of it."""
    pre, post = r["pre"][key], r["post"][key]
    moved = r["pre_with_post"]

    def way(group: str) -> float:
        span = math.log(pre / post) if pre > 0 and post > 0 and pre != post else math.nan
        return math.log(pre / moved[group][key]) / span if moved[group][key] > 0 else math.nan

    words = f"{label}: plateau model {pre:.3g}, final model {post:.3g}."
    singles = [g for g in moved if g not in ("attention", "rest", "all")]
    if singles:
        best = min(singles, key=lambda g: moved[g][key])
        words += (
            f" The single group that moves the plateau model furthest: {best} "
            f"({moved[best][key]:.3g}, {_pct(way(best))} of the way on a log scale)."
        )
    if "attention" in moved and "rest" in moved:
        attn, rest = way("attention"), way("rest")
        if math.isnan(attn) or math.isnan(rest):  # no drop between the two, or a loss of 0
            return words
        verdict = (
            "attention carries most of the drop, as the paper finds"
            if attn > rest
            else "attention does not carry most of the drop, unlike the paper"
        )
        words += (
            f" With the final model's attention it goes {_pct(attn)} of the way, with everything "
            f"else {_pct(rest)}: {verdict}."
        )
    return words


def _pct(x: float) -> str:
    return f"{round(x, 2) + 0.0:.0%}"  # + 0.0: no "-0%"
