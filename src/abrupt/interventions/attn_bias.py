"""The row/column attention bias (docs/plateau): with `model.attn_bias` = c != 1 the BERT's
attention weights on keys in the query's row or column are multiplied by c (log c added to their
logits), in the layers `model.attn_bias_layers`; it acts up to and including training step
`model.attn_bias_until` (0: the whole run)."""

from __future__ import annotations

import math

import torch

from ..config import Config, layer_list
from ..models.layers import AttentionSite


def row_column_bias(
    t: int, cols: int, c: float, device: torch.device | None = None
) -> torch.Tensor:
    """(T, T) additive attention bias: log c where the key shares the query's row or column in a
    matrix of `cols` columns read row-major (the query itself included), 0 elsewhere."""
    p = torch.arange(t, device=device)
    same = (p[:, None] // cols == p[None, :] // cols) | (p[:, None] % cols == p[None, :] % cols)
    return same.float() * math.log(c)


class RowColumnBias:
    """The attention edit: the bias in `layers`, none elsewhere. The (T, T) bias of the latest
    shape is kept: every layer of every pass of one matrix size reads the same tensor."""

    def __init__(self, c: float, layers: list[int]) -> None:
        self.c = c
        self.layers = set(layers)
        self._kept: tuple[tuple, torch.Tensor] | None = None

    def __call__(self, site: AttentionSite) -> tuple[str, torch.Tensor] | None:
        if site.layer not in self.layers:
            return None
        shape = (site.t, site.cols, site.device)
        if self._kept is None or self._kept[0] != shape:
            self._kept = (shape, row_column_bias(site.t, site.cols, self.c, site.device))
        return "bias", self._kept[1]


class AttnBias:
    name = "attn_bias"
    key = "model.attn_bias"
    unexported = (
        "the row/column attention bias (model.attn_bias) acts at this step and BertModel has no "
        "such bias; export a step after model.attn_bias_until"
    )

    def on(self, cfg: Config, step: int) -> bool:
        until = cfg.model.attn_bias_until
        return cfg.model.attn_bias != 1.0 and (until == 0 or step <= until)

    def edit(self, model: torch.nn.Module, cfg: Config) -> RowColumnBias:
        if not getattr(model, "cols", None):
            raise ValueError("model.attn_bias needs a model of matrices (its number of columns)")
        m = cfg.model
        layers = layer_list(m.attn_bias_layers, m.layers, "model.attn_bias_layers")
        return RowColumnBias(m.attn_bias, layers)


INTERVENTION = AttnBias()
