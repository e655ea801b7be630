"""The attention-score multiplier of the sequence tasks (the follow-up's intervention): with
`task.attn_scale` = c != 1 the decoder multiplies the scores of every output query on its correct
keys by c (`models.seqgpt`), in the layers `task.attn_scale_layers`; it acts from training step
`task.attn_scale_from` on (0: the whole run). The model's switch is `attn_scale_on`."""

from __future__ import annotations

import torch

from ..config import Config


class AttnScale:
    name = "attn_scale"

    def on(self, cfg: Config, step: int) -> bool:
        return cfg.task.attn_scale != 1.0 and step >= cfg.task.attn_scale_from

    def apply(self, model: torch.nn.Module, cfg: Config, step: int) -> None:
        if hasattr(model, "attn_scale_on"):
            model.attn_scale_on = self.on(cfg, step) and bool(model.scale_layers)

    def unexported(self, model: torch.nn.Module) -> str | None:
        if getattr(model, "attn_scale_on", False):
            return (
                "the attention-score multiplier (task.attn_scale) acts at this step and "
                "GPT2LMHeadModel has no such multiplier"
            )
        return None


INTERVENTION = AttnScale()
