"""Switching components between a plateau checkpoint and a post-drop one (Sec. 3 item 9).

Each parameter group is moved from one model into the other, both directions, and the losses are
re-measured. Groups: qkv, attn_out, mlp, layernorm, embeddings, readout, and the two halves
"attention" (qkv + attn_out) and "rest" (everything else).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..config import DataConfig  # noqa: E402
from ..model import MatrixBert  # noqa: E402
from .common import evaluate_with_hooks, seeded  # noqa: E402

GROUPS = {
    "qkv": r"^blocks\.\d+\.attn\.[qkv]\.",
    "attn_out": r"^blocks\.\d+\.attn\.o\.",
    "mlp": r"^blocks\.\d+\.mlp_(in|out)\.",
    "layernorm": r"^blocks\.\d+\.ln_",
    "embeddings": r"^(tok_embed|pos_embed|ln_embed)\.",
    "readout": r"^readout\.",
}
GROUPS["attention"] = f"({GROUPS['qkv']})|({GROUPS['attn_out']})"
GROUPS["rest"] = f"^(?!({GROUPS['attention']}))"


def group_names(model: MatrixBert, group: str) -> list[str]:
    if group not in GROUPS:
        raise ValueError(f"unknown group '{group}'; use one of {', '.join(GROUPS)}")
    pattern = re.compile(GROUPS[group])
    return [n for n in model.state_dict() if pattern.search(n)]


def transplant(into: MatrixBert, donor: MatrixBert, group: str) -> MatrixBert:
    """A copy of `into` with `group`'s parameters taken from `donor`."""
    out = copy.deepcopy(into)
    sd = out.state_dict()
    donor_sd = donor.state_dict()
    for name in group_names(into, group):
        sd[name] = donor_sd[name].clone()
    out.load_state_dict(sd)
    return out


def run(
    pre: tuple[int, MatrixBert],
    post: tuple[int, MatrixBert],
    data: DataConfig,
    seed: int = 0,
    n: int = 512,
    groups: tuple[str, ...] = tuple(GROUPS),
) -> dict[str, Any]:
    batch = seeded(data, n, seed)
    (pre_step, pre_model), (post_step, post_model) = pre, post
    result: dict[str, Any] = {"seed": seed, "n": n, "pre_step": pre_step, "post_step": post_step,
                              "pre": evaluate_with_hooks(pre_model, batch), "post": evaluate_with_hooks(post_model, batch),
                              "pre_with_post": {}, "post_with_pre": {}}
    for group in groups:
        result["pre_with_post"][group] = evaluate_with_hooks(transplant(pre_model, post_model, group), batch)
        result["post_with_pre"][group] = evaluate_with_hooks(transplant(post_model, pre_model, group), batch)
    return result


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    groups = list(result["pre_with_post"])
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    xs = range(len(groups))
    ax.bar([x - 0.2 for x in xs], [result["pre_with_post"][g]["loss_mask"] for g in groups], 0.4,
           label=f"plateau model (step {result['pre_step']}) + group from step {result['post_step']}")
    ax.bar([x + 0.2 for x in xs], [result["post_with_pre"][g]["loss_mask"] for g in groups], 0.4,
           label=f"final model (step {result['post_step']}) + group from step {result['pre_step']}")
    ax.axhline(result["pre"]["loss_mask"], color="tab:blue", ls=":", lw=1, label="plateau model as is")
    ax.axhline(result["post"]["loss_mask"], color="tab:orange", ls=":", lw=1, label="final model as is")
    ax.set_xticks(list(xs), groups)
    ax.set_yscale("log")
    ax.set_ylabel("L_mask")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "switching.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]
