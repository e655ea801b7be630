"""Out-of-distribution evaluation (Fig. 18/19 of the paper): a trained model against nuclear-norm
minimization on the same matrices, for other ranks, fewer rows, fewer columns, other factor
distributions and other mask rates.

Shapes with fewer rows or columns are fed row-major with positions 0..m*n-1, as in the paper, so
fewer columns move every entry off its trained column: the test of whether position embeddings
encode the column.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

from ..baselines import score_methods
from ..config import Config, DataConfig, validate_data
from ..data import seeded_batch
from ..plots import figure
from .common import Count, Inputs, Result, Seed, Table, Text, needs_hidden, one_of, solver_outcomes

TITLE = "Out of distribution (Fig. 18, 19)"
PAPER = (
    "Out of distribution the model behaves close to nuclear-norm minimization, except when the "
    "number of "
    "columns changes, since position embeddings encode the column (Fig. 18, 19)."
)
ORDER = 90
NEEDS = frozenset({"matrices"})  # task capabilities (tasks/base.py)

MIN_LINES = 3  # the fewest rows (columns) a row (column) variant has, as in the paper's Fig. 18/19


def unsupported(cfg: Config) -> str | None:
    if min(cfg.data.m, cfg.data.n) < 2:
        return "nuclear-norm minimization needs at least a 2x2 matrix"
    return needs_hidden(cfg)


def default_variants(train: DataConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """(family, label, data overrides) for each OOD setting, relative to the training data; the
    row and column families (down to 3, from the paper) are empty below 3 rows or columns."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for r in range(1, min(train.m, train.n, 4) + 1):
        out.append(("rank", f"r={r}", {"rank": r}))
    for m in range(max(train.rank, MIN_LINES), train.m + 1):
        out.append(("rows", f"m={m}", {"m": m}))
    for n in range(max(train.rank, MIN_LINES), train.n + 1):
        out.append(("columns", f"n={n}", {"n": n}))
    out += [
        ("distribution", "train", {}),
        ("distribution", "gauss σ=0.5", {"distribution": "gaussian", "sigma": 0.5}),
        ("distribution", "laplace b=0.25", {"distribution": "laplace", "scale": 0.25}),
        ("distribution", "U[0,1]", {"distribution": "uniform", "low": 0.0, "high": 1.0}),
        ("distribution", "U[-0.5,0.5]", {"distribution": "uniform", "low": -0.5, "high": 0.5}),
    ]
    for p in (0.1, 0.2, 0.3, 0.4, 0.5):
        out.append(("p_mask", f"p={p:g}", {"p_mask": p}))
    return out


def omitted(train: DataConfig) -> list[str]:
    """Notes on the families a small run leaves empty."""
    return [
        f"no {family} variants: they go down to {MIN_LINES} {family} and this run has {have}"
        for family, have in (("rows", train.m), ("columns", train.n))
        if have < MIN_LINES
    ]


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 512,
    solver: Annotated[str, one_of("torch", "cvxpy")] = "torch",
) -> Result:
    """Each variant of `default_variants` on the last chosen checkpoint, with its own seeded
    batch."""
    step, model = inputs.post
    rows = []
    for i, (family, label, overrides) in enumerate(default_variants(inputs.data)):
        data = dataclasses.replace(inputs.data, **overrides, clip=True)
        validate_data(data)
        batch = seeded_batch(data, n, seed + 10 * i)
        for row in score_methods(
            batch, data.m, data.n, model, solver=solver, cache=inputs.solutions()
        ):
            rows.append({"family": family, "variant": label, **overrides, "n": n, **row})
    return Result(
        {
            "step": step,
            "rows": rows,
            "seed": seed,
            "n": n,
            "solver": solver,
            "notes": omitted(inputs.data),
        }
    )


def plot(result: Result, out: Path) -> list[Path]:
    rows = result.numbers["rows"]
    families = list(dict.fromkeys(r["family"] for r in rows))
    path = out / "ood.png"
    with figure(path, 1, len(families), figsize=(3.6 * len(families), 3.6)) as (fig, axes):
        for ax, fam in zip(axes[0], families):
            sel = [r for r in rows if r["family"] == fam]
            labels = list(dict.fromkeys(r["variant"] for r in sel))
            xs = range(len(labels))
            for method, color, name in (
                ("bert", "tab:red", "BERT"),
                ("nuclear_norm", "black", "nuclear-norm min."),
            ):
                ys = [
                    next(
                        r["loss_mask"] for r in sel if r["variant"] == lab and r["method"] == method
                    )
                    for lab in labels
                ]
                ax.plot(xs, ys, marker="o", color=color, label=name)
            ax.set_xticks(list(xs), labels, rotation=45, ha="right", fontsize=8)
            ax.set_yscale("log")
            ax.set_title(fam)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("MSE, hidden entries")
        axes[0][0].legend(fontsize=8)
    return [path]


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = [
        [x["family"], x["variant"], x["method"], x["loss_mask"], x["nuclear_norm"]]
        for x in r["rows"]
    ]
    return [
        Text(f"Step {r['step']}." + solver_outcomes(r["rows"])),
        Table(["family", "setting", "method", "MSE hidden", "nuclear norm"], rows),
    ]
