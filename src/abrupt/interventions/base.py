"""What an intervention module's `INTERVENTION` answers (docs/extending.md)."""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import Config


class Intervention(Protocol):
    name: str

    def on(self, cfg: Config, step: int) -> bool:
        """Whether the intervention acts at training step `step` of the run `cfg` describes."""

    def apply(self, model: torch.nn.Module, cfg: Config, step: int) -> None:
        """Put the intervention's attention edit into `model.attention_edits` while `on(cfg,
        step)`, take it out otherwise (`models.layers.AttentionSite`). A model without
        `attention_edits` is left alone while the intervention is off; while it is on, it raises
        ValueError."""

    def unexported(self, model: torch.nn.Module) -> str | None:
        """Why `model`, with the intervention as `apply` set it, has no transformers counterpart
        (one line for `abrupt export` to print), or None."""
