"""The row/column attention bias (docs/plateau): with `attn_bias.factor` = c != 1 the BERT's
attention weights on keys in the query's row or column are multiplied by c (log c added to their
logits), in the layers `attn_bias.layers`; it acts up to and including training step
`attn_bias.until` (0: the whole run)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import CommaList, Config, ConfigError, layer_list
from ..models.layers import AttentionSite


@dataclass
class AttnBiasSettings:
    """The row/column attention bias (an intervention on attention, docs/plateau)."""

    #: c: attention weights on keys in the query's row or column multiplied by c (log c added to
    #: their logits); 1 = off (`model.attn_bias` in an older config.json)
    factor: float = 1.0
    #: layers that get the bias, e.g. 0,1 (empty: every layer)
    layers: CommaList = ""
    #: > 0: the bias is switched off after this training step (0: on for the whole run)
    until: int = 0

    def check(self, cfg: Config) -> None:
        if not 0 < self.factor < math.inf:
            raise ConfigError(
                f"attn_bias.factor: must be a positive number (1 = off), got {self.factor}"
            )
        if self.until < 0:
            raise ConfigError(
                f"attn_bias.until: must be >= 0 (0 = the whole run), got {self.until}"
            )
        layer_list(self.layers, cfg.model.layers, "attn_bias.layers")


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
    key = "attn_bias.factor"
    settings = AttnBiasSettings
    needs = "row_column_bias"
    unexported = (
        "the row/column attention bias (attn_bias.factor) acts at this step and BertModel has no "
        "such bias; export a step after attn_bias.until"
    )

    def used(self, cfg: Config) -> bool:
        return cfg.attn_bias.factor != 1.0

    def on(self, cfg: Config, step: int) -> bool:
        until = cfg.attn_bias.until
        return self.used(cfg) and (until == 0 or step <= until)

    def edit(self, model: torch.nn.Module, cfg: Config) -> RowColumnBias:
        if not getattr(model, "cols", None):
            raise ValueError("attn_bias.factor needs a model of matrices (its number of columns)")
        s = cfg.attn_bias
        return RowColumnBias(s.factor, layer_list(s.layers, cfg.model.layers, "attn_bias.layers"))


INTERVENTION = AttnBias()
