"""The attention-score multiplier of the sequence tasks (the follow-up's intervention): with
`task.attn_scale` = c != 1 the decoder's attention weights of every query on its correct keys (the
task's `key_map`) are multiplied by c and renormalised, in the layers `task.attn_scale_layers`; it
acts from training step `task.attn_scale_from` on (0: the whole run)."""

from __future__ import annotations

import torch

from ..config import Config, layer_list
from ..models.layers import AttentionSite


class ScaleOnKeys:
    """The attention edit: (B, 1, L, L) c on the correct keys, 1 elsewhere, in `layers` of a pass
    that carries the keys (training and evaluation; not greedy decoding, which has none)."""

    def __init__(self, c: float, layers: list[int]) -> None:
        self.c = c
        self.layers = set(layers)

    def __call__(self, site: AttentionSite) -> tuple[str, torch.Tensor] | None:
        if site.keys is None or site.layer not in self.layers:
            return None
        on = site.keys[:, site.layer, : site.t, : site.t].to(site.device)[:, None]
        return "scale", torch.where(on, self.c, 1.0).to(site.dtype)


class AttnScale:
    name = "attn_scale"
    key = "task.attn_scale"
    unexported = (
        "the attention-score multiplier (task.attn_scale) acts at this step and GPT2LMHeadModel "
        "has no such multiplier"
    )

    def on(self, cfg: Config, step: int) -> bool:
        return cfg.task.attn_scale != 1.0 and step >= cfg.task.attn_scale_from

    def edit(self, model: torch.nn.Module, cfg: Config) -> ScaleOnKeys:
        k = cfg.task
        layers = layer_list(k.attn_scale_layers, cfg.model.layers, "task.attn_scale_layers")
        return ScaleOnKeys(k.attn_scale, layers)


INTERVENTION = AttnScale()
