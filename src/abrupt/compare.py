"""BERT against nuclear-norm minimization on the same matrices (Fig. 3 of the paper).

Every method sees exactly what BERT sees: the rounded values at observed entries. Scores are
against the rounded full matrix, as in training. The nuclear norm of BERT's completion is that
of its whole output matrix (observed entries included).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import baselines  # noqa: E402
from .config import DataConfig  # noqa: E402
from .data import Batch, generator, make_batch, sample_mask, sample_matrices  # noqa: E402
from .model import MatrixBert  # noqa: E402

FIG3_P_MASKS = tuple(round(0.10 + 0.05 * i, 2) for i in range(11))  # 0.10, 0.15, ..., 0.60


def methods_on_batch(
    batch: Batch,
    m: int,
    n: int,
    model: MatrixBert | None = None,
    lambdas: Sequence[float] = (),
    solver: str = "torch",
) -> list[dict[str, Any]]:
    """Score BERT (if given), exact nuclear-norm minimization and each regularized form on one batch."""
    target = batch.target.reshape(-1, m, n)
    hidden = batch.mask.reshape(-1, m, n)
    rows = []
    if model is not None:
        t0 = time.perf_counter()
        pred = model.predict(batch.tokens).reshape(-1, m, n)
        rows.append({"method": "bert", **baselines.score(pred, target, hidden), "seconds": time.perf_counter() - t0, "failures": 0})
    exact = baselines.complete(target, ~hidden, None, solver=solver)
    rows.append({"method": baselines.method_name(None), **baselines.score(exact.x, target, hidden),
                 "seconds": exact.seconds, "failures": exact.failures})
    for lam in lambdas:
        reg = baselines.complete(target, ~hidden, lam, solver=solver, exact=exact.x)
        rows.append({"method": baselines.method_name(lam), **baselines.score(reg.x, target, hidden),
                     "seconds": reg.seconds, "failures": reg.failures})
    return rows


def seeded_batch(data: DataConfig, count: int, seed: int, mask_seed: int | None = None) -> Batch:
    """`count` matrices from `seed` and masks from `mask_seed` (default: seed + 1); values clipped
    to the vocabulary (documented: out-of-distribution factor laws can exceed it)."""
    matrices = sample_matrices(data, count, generator(seed))
    mask = sample_mask(data, count, generator(seed + 1 if mask_seed is None else mask_seed))
    return make_batch(matrices, mask, clip=True)


def fig3(
    model: MatrixBert,
    data: DataConfig,
    p_masks: Sequence[float] = FIG3_P_MASKS,
    count: int = 512,
    seed: int = 0,
    lambdas: Sequence[float] = (),
    solver: str = "torch",
    progress: bool = False,
) -> dict[str, Any]:
    """MSE and nuclear norm against p_mask; the same matrices at every p_mask and for every method."""
    matrices = sample_matrices(data, count, generator(seed))
    truth = baselines.nuclear_norm(matrices).mean().item()
    rows = []
    for i, p in enumerate(p_masks):
        d = dataclasses.replace(data, p_mask=p)
        batch = make_batch(matrices, sample_mask(d, count, generator(seed + 1 + i)), clip=True)
        for row in methods_on_batch(batch, data.m, data.n, model, lambdas, solver):
            rows.append({"p_mask": p, "n": count, **row})
        if progress:
            print(f"  p_mask {p:.2f}: " + ", ".join(f"{r['method']} L_mask {r['loss_mask']:.4f}" for r in rows if r["p_mask"] == p), flush=True)
    return {"rows": rows, "true_nuclear_norm": truth, "solver": solver, "seed": seed, "n": count,
            "flips": ordering_flips(rows)}


def ordering_flips(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where BERT beats exact nuclear-norm minimization on L_mask, and where the ordering flips."""
    by_p: dict[float, dict[str, float]] = {}
    for r in rows:
        by_p.setdefault(r["p_mask"], {})[r["method"]] = r["loss_mask"]
    better = {p: v["bert"] < v["nuclear_norm"] for p, v in sorted(by_p.items()) if "bert" in v}
    ps = list(better)
    flips = [ps[i] for i in range(1, len(ps)) if better[ps[i]] != better[ps[i - 1]]]
    return {"bert_better_at": [p for p, b in better.items() if b], "flips_at": flips}


def plot_fig3(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    for method in methods:
        sel = [r for r in rows if r["method"] == method]
        ps = [r["p_mask"] for r in sel]
        style = {"lw": 2.0, "color": "tab:red"} if method == "bert" else (
            {"lw": 2.0, "color": "black"} if method == "nuclear_norm" else {"lw": 0.8, "alpha": 0.6})
        label = {"bert": "BERT", "nuclear_norm": "nuclear-norm min."}.get(method, method.replace("nuclear_norm_reg_", "reg. λ="))
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
