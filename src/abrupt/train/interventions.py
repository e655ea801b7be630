"""When each step-dependent intervention on attention is on: one schedule, read by training (before
each step) and by checkpoint loading (a checkpoint is loaded as it was trained).

- The row/column attention bias (`model.attn_bias` = c != 1, docs/plateau): on up to and including
  training step `model.attn_bias_until` (0: the whole run).
- The attention-score multiplier of the sequence tasks (`task.attn_scale` = c != 1, the follow-up's
  intervention): on from training step `task.attn_scale_from` (0: the whole run).

The checkpoint of step S holds the weights after step S, which was trained with the setting of
step S; it is loaded with that setting.
"""

from __future__ import annotations

import torch

from ..config import Config


def bias_on(cfg: Config, step: int) -> bool:
    """Whether the row/column attention bias acts at training step `step`."""
    until = cfg.model.attn_bias_until
    return cfg.model.attn_bias != 1.0 and (until == 0 or step <= until)


def scale_on(cfg: Config, step: int) -> bool:
    """Whether the attention-score multiplier acts at training step `step`."""
    return cfg.task.attn_scale != 1.0 and step >= cfg.task.attn_scale_from


def apply(model: torch.nn.Module, cfg: Config, step: int) -> None:
    """Set `model`'s switches to the schedule's at `step` (a model without an intervention's switch
    has nothing to set: the GPT variant on matrices has neither)."""
    if hasattr(model, "attn_bias_on"):
        model.attn_bias_on = bias_on(cfg, step)
    if hasattr(model, "attn_scale_on"):
        model.attn_scale_on = scale_on(cfg, step) and bool(model.scale_layers)
