"""The losses of a prediction: the one definition training, evaluation, analyses and baselines use.

    loss        MSE over every entry (the training objective)
    loss_obs    MSE over observed entries
    loss_mask   MSE over hidden entries
    mask_value  mean |prediction| at hidden entries (0 when the model predicts the MASK mean)

Contract: a mean over an empty set (no hidden entries when p_mask = 0, none observed) is NaN,
never 0, so that "undefined" cannot read as "perfect"; JSON writers turn it into null.
Computed in float32, or float64 when the prediction is float64 (the baselines).
"""

from __future__ import annotations

from typing import Iterable

import torch

from .data import Batch

KEYS = ("loss", "loss_obs", "loss_mask", "mask_value")


def _mean_over(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    w = where.to(values.dtype)
    count = w.sum()
    return torch.where(
        count > 0, (values * w).sum() / count.clamp_min(1), torch.full_like(count, float("nan"))
    )


def losses(pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """`pred` (B, T) or (B, m, n) against the batch's rounded target; tensors on pred's device."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    pred = pred.reshape(batch.target.shape).to(dtype)
    target = batch.target.to(pred.device, dtype)
    hidden = batch.mask.to(pred.device)
    sq = (pred - target) ** 2
    if batch.pad is not None:  # a size mixture: padding is no entry of any matrix
        real = ~batch.pad.to(pred.device)
        return {
            "loss": _mean_over(sq, real),
            "loss_obs": _mean_over(sq, real & ~hidden),
            "loss_mask": _mean_over(sq, hidden),
            "mask_value": _mean_over(pred.abs(), hidden),
        }
    return {
        "loss": sq.mean(),
        "loss_obs": _mean_over(sq, ~hidden),
        "loss_mask": _mean_over(sq, hidden),
        "mask_value": _mean_over(pred.abs(), hidden),
    }


def as_floats(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: v.item() for k, v in parts.items()}


def evaluate(model, batch: Batch, fwd_hooks: Iterable = ()) -> dict[str, float]:
    """Losses of `model` on `batch` in evaluation mode, without gradients, with optional hooks."""
    with torch.no_grad(), model.hooks(fwd_hooks):
        return as_floats(losses(model.predict(batch.tokens, pad=batch.pad), batch))


def per_size(pred: torch.Tensor, batch: Batch, names: list[str]) -> dict[str, float]:
    """L_mask of each size of a mixture: {"loss_mask_5x5": ..., ...}."""
    sq = (pred.float() - batch.target.to(pred.device)) ** 2
    hidden, size = batch.mask.to(pred.device), batch.size.to(pred.device)
    return {
        f"loss_mask_{name}": _mean_over(sq, hidden & (size == k)[:, None]).item()
        for k, name in enumerate(names)
    }
