"""The attention-score multiplier of the sequence tasks (the follow-up's intervention): with
`attn_scale.factor` = c != 1 the decoder's attention weights of every query on its correct keys
(the task's `key_map`) are multiplied by c and renormalised, in the layers `attn_scale.layers`; it
acts from training step `attn_scale.start` on (0: the whole run)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import CommaList, Config, ConfigError, layer_list
from ..models.layers import AttentionSite


@dataclass
class AttnScaleSettings:
    """The attention-score multiplier on a sequence task's correct keys (an intervention on
    attention; Gopalani & Hu 2025)."""

    #: c: attention on the task's correct keys multiplied by c (1 = off; `task.attn_scale` in an
    #: older config.json)
    factor: float = 1.0
    #: ... from this training step on (0: the whole run; the follow-up's "late" switch)
    start: int = 0
    #: ... in these layers, e.g. 1 (empty: every layer with correct keys)
    layers: CommaList = ""

    def check(self, cfg: Config) -> None:
        if not 0 < self.factor < math.inf:
            raise ConfigError(
                f"attn_scale.factor: must be a positive number (1 = off), got {self.factor}"
            )
        if self.start < 0:
            raise ConfigError(
                f"attn_scale.start: must be >= 0 (0 = the whole run), got {self.start}"
            )
        if cfg.task.name == "matrix":
            for key, set_ in (
                ("factor", self.factor != 1.0),
                ("start", self.start != 0),
                ("layers", bool(self.layers.strip())),
            ):
                if set_:
                    raise ConfigError(
                        f"attn_scale.{key}: built for the sequence tasks' correct keys; for "
                        f"matrices use attn_bias.{'until' if key == 'start' else key}"
                    )
        layer_list(self.layers, cfg.model.layers, "attn_scale.layers")


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
    key = "attn_scale.factor"
    settings = AttnScaleSettings
    needs = None  # the sequence tasks need the decoder already
    unexported = (
        "the attention-score multiplier (attn_scale.factor) acts at this step and "
        "GPT2LMHeadModel has no such multiplier"
    )

    def used(self, cfg: Config) -> bool:
        return cfg.attn_scale.factor != 1.0

    def on(self, cfg: Config, step: int) -> bool:
        return self.used(cfg) and step >= cfg.attn_scale.start

    def edit(self, model: torch.nn.Module, cfg: Config) -> ScaleOnKeys:
        s = cfg.attn_scale
        return ScaleOnKeys(s.factor, layer_list(s.layers, cfg.model.layers, "attn_scale.layers"))


INTERVENTION = AttnScale()
