"""Copying before the drop (Table 1): substitute a value token for MASK at hidden positions.

A model that copies its input predicts the substituted value at hidden entries (MSE to the
substitute near 0) while still fitting observed entries; a model that completes the matrix
ignores the substitute. Run on low-rank inputs and on random full-rank inputs with the same
entry variance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import torch

from ..config import VOCAB_MAX, Config, DataConfig
from ..data import MASK_ID, Batch, generator, make_batch, sample_matrices, seeded_batch, value_to_id
from ..losses import as_floats, losses
from ..plots import figure
from .common import Count, Inputs, Result, Seed, Table, Text, between, each, needs_hidden

TITLE = "Copying before the drop (Table 1)"
PAPER = (
    "Before the drop the model copies its input: with a value token put at hidden positions "
    "its predictions there equal that value (MSE to the substitute near 0), on low-rank and "
    "random inputs "
    "alike, while L_obs stays near 0 (Table 1)."
)
ORDER = 10
NEEDS = frozenset({"substitute"})  # task capabilities (tasks/base.py)


def unsupported(cfg: Config) -> str | None:
    return needs_hidden(cfg)


def full_rank_like(data: DataConfig, count: int, gen: torch.Generator) -> torch.Tensor:
    """I.i.d. uniform entries with the low-rank matrices' second moment (full rank almost
    surely)."""
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
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 512,
    substitutes: Annotated[tuple[float, ...], each(between(-VOCAB_MAX, VOCAB_MAX))] = (0.44, -0.24),
) -> Result:
    data = dataclasses.replace(inputs.data, clip=True)
    low_rank = seeded_batch(data, n, seed)
    full_rank = make_batch(full_rank_like(data, n, generator(seed + 1)), low_rank.mask, clip=True)
    rows = []
    for step, model in inputs.models.items():
        for kind, base in (("low-rank", low_rank), ("full-rank", full_rank)):
            for value in (None, *substitutes):
                batch = substituted(base, value)
                pred = model.predict(batch.tokens)
                sub = 0.0 if value is None else round(value, 2)
                rows.append(
                    {
                        "step": step,
                        "input": kind,
                        "substitute": "MASK" if value is None else value,
                        **{
                            k: v
                            for k, v in as_floats(losses(pred, batch)).items()
                            if k != "mask_value"
                        },
                        "mse_to_substitute": ((pred[batch.mask] - sub) ** 2).mean().item(),
                    }
                )
    return Result({"rows": rows, "n": n, "seed": seed, "mask_token": MASK_ID})


def plot(result: Result, out: Path) -> list[Path]:
    rows = result.numbers["rows"]
    steps = sorted({r["step"] for r in rows})
    kinds = list(dict.fromkeys(r["input"] for r in rows))
    subs = list(dict.fromkeys(str(r["substitute"]) for r in rows))
    width = 0.8 / len(steps)
    path = out / "copying.png"
    with figure(path, 1, len(kinds), figsize=(5.5 * len(kinds), 3.6)) as (fig, axes):
        for ax, kind in zip(axes[0], kinds):
            for i, step in enumerate(steps):
                vals = [
                    next(
                        r["mse_to_substitute"]
                        for r in rows
                        if r["step"] == step and r["input"] == kind and str(r["substitute"]) == s
                    )
                    for s in subs
                ]
                ax.bar([j + i * width for j in range(len(subs))], vals, width, label=f"step {step}")
            ax.set_xticks([j + width * (len(steps) - 1) / 2 for j in range(len(subs))], subs)
            ax.set_title(f"{kind} inputs: MSE(hidden prediction, substitute)")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
    return [path]


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = [
        [
            x["step"],
            x["input"],
            x["substitute"],
            x["loss_obs"],
            x["mse_to_substitute"],
            x["loss_mask"],
        ]
        for x in r["rows"]
    ]
    return [
        Table(
            ["step", "input", "at hidden", "L_obs", "MSE to substitute", "L_mask (vs truth)"], rows
        )
    ]
