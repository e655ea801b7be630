"""Copying before the drop (Table 1): substitute a value token for MASK at hidden positions.

A model that copies its input predicts the substituted value at hidden entries (MSE to the
substitute near 0) while still fitting observed entries; a model that completes the matrix
ignores the substitute. Run on low-rank inputs and on random full-rank inputs with the same
entry variance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..config import DataConfig  # noqa: E402
from ..data import Batch, MASK_ID, generator, make_batch, sample_mask, sample_matrices, value_to_id  # noqa: E402
from ..model import MatrixBert  # noqa: E402
from .common import loss_dict  # noqa: E402


def full_rank_like(data: DataConfig, count: int, gen: torch.Generator) -> torch.Tensor:
    """I.i.d. uniform entries with the low-rank matrices' second moment (full rank almost surely)."""
    second = sample_matrices(data, 4096, torch.Generator().manual_seed(0)).pow(2).mean().item()
    half_width = (3 * second) ** 0.5
    return (torch.rand((count, data.m, data.n), generator=gen) * 2 - 1) * half_width


def substituted(batch: Batch, value: float | None) -> Batch:
    """The batch with hidden tokens replaced by the token of `value` (None keeps MASK)."""
    if value is None:
        return batch
    token = value_to_id(torch.tensor([value])).item()
    tokens = torch.where(batch.mask, torch.full_like(batch.tokens, token), batch.tokens)
    return dataclasses.replace(batch, tokens=tokens)


def run(
    models: dict[int, MatrixBert],
    data: DataConfig,
    seed: int = 0,
    n: int = 512,
    substitutes: tuple[float, ...] = (0.44, -0.24),
) -> dict[str, Any]:
    g = generator(seed)
    inputs = {
        "low-rank": sample_matrices(data, n, g),
        "full-rank": full_rank_like(data, n, g),
    }
    mask = sample_mask(data, n, g)
    rows = []
    for step, model in models.items():
        for kind, matrices in inputs.items():
            base = make_batch(matrices, mask, clip=True)
            for value in (None, *substitutes):
                batch = substituted(base, value)
                pred = model.predict(batch.tokens)
                sub = 0.0 if value is None else round(value, 2)
                hidden = batch.mask
                rows.append({
                    "step": step,
                    "input": kind,
                    "substitute": "MASK" if value is None else value,
                    **loss_dict(pred, batch),
                    "mse_to_substitute": ((pred[hidden] - sub) ** 2).mean().item(),
                })
    return {"rows": rows, "n": n, "seed": seed, "mask_token": MASK_ID}


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    rows = result["rows"]
    steps = sorted({r["step"] for r in rows})
    kinds = list(dict.fromkeys(r["input"] for r in rows))
    subs = list(dict.fromkeys(str(r["substitute"]) for r in rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 3.6), dpi=110, squeeze=False)
    width = 0.8 / len(steps)
    for ax, kind in zip(axes[0], kinds):
        for i, step in enumerate(steps):
            vals = [next(r["mse_to_substitute"] for r in rows if r["step"] == step and r["input"] == kind and str(r["substitute"]) == s) for s in subs]
            ax.bar([j + i * width for j in range(len(subs))], vals, width, label=f"step {step}")
        ax.set_xticks([j + width * (len(steps) - 1) / 2 for j in range(len(subs))], subs)
        ax.set_title(f"{kind} inputs: MSE(hidden prediction, substitute)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "copying.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]
