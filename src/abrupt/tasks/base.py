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
    # optional: its own settings, a dataclass with `#:` docs above each field (and optionally
    # `check(self, cfg)`): the configuration section `name`, read as `cfg.<name>.<field>`
    settings: type | None

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

    def run_kind(self, cfg: Config) -> str:
        """What the metrics rows of a run configured by `cfg` are, one of
        `dynamics.transition.RUN_KINDS`: it names the headline loss the transition is read from
        (`transition.HEADLINE_LOSS`), the forecast's calibration family (`forecast.family`) and
        the loss figure's layout (plots.plot_losses)."""
