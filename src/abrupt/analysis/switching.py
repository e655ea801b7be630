"""Switching components between a plateau checkpoint and a post-drop one (Sec. 3 item 9).

Each parameter group is moved from one model into the other, both directions, and the losses are
re-measured. Groups: qkv, attn_out, mlp, layernorm, embeddings, readout, and the two halves
"attention" (qkv + attn_out) and "rest" (everything else).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

from ..config import Config
from ..data import seeded_batch
from ..losses import evaluate
from ..models import groups as groups_
from ..models.bert import MatrixBert
from ..plots import figure
from .common import Count, Inputs, Result, Seed, Table, Text, each, loss_cells, needs_hidden, one_of

TITLE = "Switching components"
PAPER = (
    "Attention is the component that changes at the drop: moving the attention weights between "
    "a plateau and a final model carries most of the difference in loss."
)
ORDER = 70
NEEDS = frozenset({"matrices"})  # task capabilities (tasks/base.py)


def group_names(model: MatrixBert, group: str) -> list[str]:
    return groups_.names(model, group)


def transplant(into: MatrixBert, donor: MatrixBert, group: str) -> MatrixBert:
    """A copy of `into` with `group`'s parameters taken from `donor`."""
    out = copy.deepcopy(into)
    sd = out.state_dict()
    donor_sd = donor.state_dict()
    for name in group_names(into, group):
        sd[name] = donor_sd[name].clone()
    out.load_state_dict(sd)
    return out


def unsupported(cfg: Config) -> str | None:
    return needs_hidden(cfg)


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 512,
    groups: Annotated[tuple[str, ...], each(one_of(*groups_.SWITCHING))] = groups_.SWITCHING,
) -> Result:
    """Between the first (plateau) and the last (post-drop) chosen checkpoint."""
    batch = seeded_batch(inputs.data, n, seed)
    (pre_step, pre_model), (post_step, post_model) = inputs.pre, inputs.post
    numbers: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "pre_step": pre_step,
        "post_step": post_step,
        "pre": evaluate(pre_model, batch),
        "post": evaluate(post_model, batch),
        "pre_with_post": {},
        "post_with_pre": {},
    }
    for group in groups:
        numbers["pre_with_post"][group] = evaluate(transplant(pre_model, post_model, group), batch)
        numbers["post_with_pre"][group] = evaluate(transplant(post_model, pre_model, group), batch)
    return Result(numbers)


def plot(result: Result, out: Path) -> list[Path]:
    r = result.numbers
    groups = list(r["pre_with_post"])
    xs = range(len(groups))
    path = out / "switching.png"
    with figure(path, figsize=(8, 3.6)) as (fig, axes):
        ax = axes[0][0]
        ax.bar(
            [x - 0.2 for x in xs],
            [r["pre_with_post"][g]["loss_mask"] for g in groups],
            0.4,
            label=f"plateau model (step {r['pre_step']}) + group from step {r['post_step']}",
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [r["post_with_pre"][g]["loss_mask"] for g in groups],
            0.4,
            label=f"final model (step {r['post_step']}) + group from step {r['pre_step']}",
        )
        ax.axhline(
            r["pre"]["loss_mask"], color="tab:blue", ls=":", lw=1, label="plateau model as is"
        )
        ax.axhline(
            r["post"]["loss_mask"], color="tab:orange", ls=":", lw=1, label="final model as is"
        )
        ax.set_xticks(list(xs), groups)
        ax.set_yscale("log")
        ax.set_ylabel("L_mask")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return [path]


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = [
        [f"plateau (step {r['pre_step']}) as is", *loss_cells(r["pre"])],
        [f"final (step {r['post_step']}) as is", *loss_cells(r["post"])],
    ]
    rows += [[f"plateau + final {g}", *loss_cells(v)] for g, v in r["pre_with_post"].items()]
    rows += [[f"final + plateau {g}", *loss_cells(v)] for g, v in r["post_with_pre"].items()]
    return [Table(["model", "L", "L_obs", "L_mask"], rows)]
