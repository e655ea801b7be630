"""The row/column attention bias (docs/plateau): with `model.attn_bias` = c != 1 the BERT adds log c
to the attention logits of keys in the query's row or column (`models.bert.row_column_bias`), in
the layers `model.attn_bias_layers`; it acts up to and including training step
`model.attn_bias_until` (0: the whole run). The model's switch is `attn_bias_on`."""

from __future__ import annotations

import torch

from ..config import Config


class AttnBias:
    name = "attn_bias"

    def on(self, cfg: Config, step: int) -> bool:
        until = cfg.model.attn_bias_until
        return cfg.model.attn_bias != 1.0 and (until == 0 or step <= until)

    def apply(self, model: torch.nn.Module, cfg: Config, step: int) -> None:
        if hasattr(model, "attn_bias_on"):
            model.attn_bias_on = self.on(cfg, step)

    def unexported(self, model: torch.nn.Module) -> str | None:
        if getattr(model, "attn_bias_on", False):
            return (
                "the row/column attention bias (model.attn_bias) acts at this step and BertModel "
                "has no such bias; export a step after model.attn_bias_until"
            )
        return None


INTERVENTION = AttnBias()
