"""BERT against nuclear-norm minimization on the same matrices (Fig. 3 of the paper).

Every method sees exactly what BERT sees: the rounded values at observed entries. Scores are
against the rounded full matrix, as in training. The nuclear norm of BERT's completion is that
of its whole output matrix (observed entries included).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Any

from .. import baselines
from ..data import seeded_batch
from ..plots import figure
from .common import (
    Check,
    Count,
    Inputs,
    Result,
    Seed,
    Table,
    Text,
    between,
    each,
    one_of,
    solver_outcomes,
)

TITLE = "BERT vs nuclear-norm minimization (Fig. 3)"
PAPER = (
    "BERT reaches lower MSE than nuclear-norm minimization at its training p_mask and a different "
    "nuclear norm: it is not doing nuclear-norm minimization (Fig. 3)."
)
ORDER = 80
NEEDS = frozenset({"matrices"})  # task capabilities (tasks/base.py)


def unsupported(cfg) -> str | None:
    return (
        "nuclear-norm minimization needs at least a 2x2 matrix"
        if min(cfg.data.m, cfg.data.n) < 2
        else None
    )


FIG3_P_MASKS = tuple(round(0.10 + 0.05 * i, 2) for i in range(11))  # 0.10, 0.15, ..., 0.60


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 512,
    p_masks: Annotated[tuple[float, ...], each(between(0, 1, open_hi=True))] = FIG3_P_MASKS,
    lambdas: Annotated[
        tuple[float, ...], Check(lambda vs: all(v > 0 and math.isfinite(v) for v in vs), "each > 0")
    ] = (),
    solver: Annotated[str, one_of("torch", "cvxpy")] = "torch",
) -> Result:
    """MSE and nuclear norm against p_mask for the last chosen checkpoint; the same matrices at
    every p_mask and for every method (one seeded stream: nested masks)."""
    step, model = inputs.post
    rows = []
    truth = None
    for p in p_masks:
        batch = seeded_batch(dataclasses.replace(inputs.data, p_mask=p, clip=True), n, seed)
        if truth is None:
            truth = baselines.nuclear_norm(batch.matrix).mean().item()
        for row in baselines.score_methods(
            batch, inputs.data.m, inputs.data.n, model, lambdas, solver, inputs.solutions()
        ):
            rows.append({"p_mask": p, "n": n, **row})
    return Result(
        {
            "step": step,
            "rows": rows,
            "true_nuclear_norm": truth,
            "solver": solver,
            "seed": seed,
            "n": n,
            "flips": ordering_flips(rows),
        }
    )


def ordering_flips(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where BERT beats exact nuclear-norm minimization on L_mask, and where the ordering flips."""
    by_p: dict[float, dict[str, float]] = {}
    for r in rows:
        by_p.setdefault(r["p_mask"], {})[r["method"]] = r["loss_mask"]
    better = {p: v["bert"] < v["nuclear_norm"] for p, v in sorted(by_p.items()) if "bert" in v}
    ps = list(better)
    flips = [ps[i] for i in range(1, len(ps)) if better[ps[i]] != better[ps[i - 1]]]
    return {"bert_better_at": [p for p, b in better.items() if b], "flips_at": flips}


def plot(result: Result, out: Path) -> list[Path]:
    path = out / "fig3.png"
    with figure(path, 1, 3, figsize=(13, 3.8)) as (fig, axes):
        _draw(result.numbers, axes[0])
    return [path]


def _draw(result: dict[str, Any], axes) -> None:
    rows = result["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        sel = [r for r in rows if r["method"] == method]
        ps = [r["p_mask"] for r in sel]
        style = (
            {"lw": 2.0, "color": "tab:red"}
            if method == "bert"
            else (
                {"lw": 2.0, "color": "black"}
                if method == "nuclear_norm"
                else {"lw": 0.8, "alpha": 0.6}
            )
        )
        label = {"bert": "BERT", "nuclear_norm": "nuclear-norm min."}.get(
            method, method.replace("nuclear_norm_reg_", "reg. λ=")
        )
        axes[0].plot(ps, [r["loss"] for r in sel], marker="o", ms=3, label=label, **style)
        axes[1].plot(ps, [r["loss_mask"] for r in sel], marker="o", ms=3, label=label, **style)
        axes[2].plot(ps, [r["nuclear_norm"] for r in sel], marker="o", ms=3, label=label, **style)
    axes[2].axhline(result["true_nuclear_norm"], color="gray", ls="--", lw=1, label="ground truth")
    for ax, title in zip(axes, ("MSE, all entries", "MSE, hidden entries", "mean nuclear norm")):
        ax.set_xlabel("p_mask")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7)


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = [
        [x["p_mask"], x["method"], x["loss"], x["loss_mask"], x["nuclear_norm"]]
        for x in r["rows"]
        if x["method"] in ("bert", "nuclear_norm")
    ]
    return [
        Text(
            f"Step {r['step']}. BERT below nuclear-norm minimization (L_mask) at p_mask "
            f"{r['flips']['bert_better_at']}; "
            f"ordering flips at {r['flips']['flips_at']}. Ground-truth mean nuclear norm "
            f"{r['true_nuclear_norm']:.3f}." + solver_outcomes(r["rows"])
        ),
        Table(["p_mask", "method", "MSE", "MSE hidden", "nuclear norm"], rows),
    ]
