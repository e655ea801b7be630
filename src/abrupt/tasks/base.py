"""The task protocol: the calls training, checkpoints and the analyses make of a task."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..config import Config
from ..hooks import HookedModule


class Task(Protocol):
    name: str
    # analyses (analysis/<name>.py) that apply to runs of this task; None: every analysis
    analyses: tuple[str, ...] | None

    def check(self, cfg: Config) -> None:
        """Raise ValueError for a configuration this task cannot train (one line)."""

    def build_model(self, cfg: Config) -> HookedModule:
        """The untrained model, initialised from cfg.seed."""

    def batch(self, cfg: Config, count: int, gen: torch.Generator, step: int | None = None) -> Any:
        """`count` examples drawn on gen's device: the training batch of `step` (1-based), or,
        with step None, the target distribution (evaluation). Has `.to(device)`, `len()`,
        slicing and a `size` attribute (None unless a matrix size mixture)."""

    def progress(self, model: HookedModule, batch: Any, cfg: Config) -> dict[str, float]:
        """The progress measures (`prog_*` keys) of `model` on an evaluation batch."""
