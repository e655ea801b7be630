"""Step-dependent interventions on attention: one module per intervention, found by `names()`: a
module of this package that defines `INTERVENTION` (an object with the calls of `base.Intervention`)
is an intervention, named by `INTERVENTION.name`; its settings are the configuration section of
that name, registered when abrupt is imported (abrupt/__init__.py).

One schedule for training and checkpoint loading: training calls `apply(model, cfg, step)` before
every step and `run/checkpoints.py` calls it with a checkpoint's step, so a checkpoint is loaded as
it was trained (the checkpoint of step S holds the weights after step S, which was trained with the
setting of step S). `apply` puts each intervention's attention edit into `model.attention_edits`
while its schedule is on and takes it out otherwise. `unexported(model)` says which of them,
acting at the loaded step, has no counterpart in transformers (`export.py` refuses it). A new
intervention is one module here (docs/extending.md).
"""

from __future__ import annotations

import functools

import torch

from ..config import Config, register_section
from ..plugins import find
from .base import Intervention


@functools.cache
def _registry() -> dict[str, Intervention]:
    found = find(__name__, __path__, "INTERVENTION")
    for name, intervention in found.items():
        settings = getattr(intervention, "settings", None)  # optional, as `needs` and `used`
        if settings is not None:
            register_section(name, settings)
    return found


def names() -> tuple[str, ...]:
    """Every intervention's name, sorted."""
    return tuple(_registry())


def get(name: str) -> Intervention:
    """The intervention called `name`; raises ValueError naming them for an unknown one."""
    if name not in _registry():
        raise ValueError(f"unknown intervention '{name}'; choose one of: {', '.join(names())}")
    return _registry()[name]


def apply(model: torch.nn.Module, cfg: Config, step: int) -> None:
    """Put in or take out every intervention's attention edit on `model` by its schedule at
    training step `step`. A model without `attention_edits` is left alone while every intervention
    is off; one that is on raises ValueError naming its key."""
    edits = getattr(model, "attention_edits", None)
    for name, intervention in _registry().items():
        if not intervention.on(cfg, step):
            if edits is not None:
                edits.pop(name, None)
        elif edits is None:
            raise ValueError(
                f"{intervention.key}: model.arch={cfg.model.arch} takes no attention edits"
            )
        elif name not in edits:  # built once while it stays on
            edits[name] = intervention.edit(model, cfg)


def unexported(model: torch.nn.Module) -> str | None:
    """Why an intervention acting on `model` (as set by `apply`) bars its export, or None."""
    acting = getattr(model, "attention_edits", {})
    for name, intervention in _registry().items():
        if name in acting:
            return intervention.unexported
    return None


_registry()  # the interventions' configuration sections exist once the package is imported
