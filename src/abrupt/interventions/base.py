"""What an intervention module's `INTERVENTION` answers (docs/extending.md); the registry
(`interventions.apply`) puts its edit into a model and takes it out by `on`."""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import Config
from ..models.layers import AttentionEdit


class Intervention(Protocol):
    #: its name, the key of its edit in `model.attention_edits`
    name: str
    #: the configuration key that turns it on, named when a model cannot take it
    key: str
    #: why a model it acts on has no transformers counterpart (one line for `abrupt export`)
    unexported: str
    #: optional: its settings, a dataclass with `#:` docs above each field (and optionally
    #: `check(self, cfg)`): the configuration section `name` (keys `name.field`); None: no keys
    settings: type | None
    #: optional: the capability (`supports`, models/registry.py) a model must declare to take it
    #: while `used`; None: any model with attention edits
    needs: str | None

    def used(self, cfg: Config) -> bool:
        """Whether the run `cfg` describes turns it on at any step (needed with `needs`)."""

    def on(self, cfg: Config, step: int) -> bool:
        """Whether the intervention acts at training step `step` of the run `cfg` describes."""

    def edit(self, model: torch.nn.Module, cfg: Config) -> AttentionEdit:
        """The attention edit (`models.layers.AttentionSite`) it puts into `model` while on;
        ValueError where `model` cannot take it."""
