"""Step-dependent interventions on attention: one module per intervention, found by `names()`: a
module of this package that defines `INTERVENTION` (an object with the calls of `base.Intervention`)
is an intervention, named by `INTERVENTION.name`.

One schedule for training and checkpoint loading: training calls `apply(model, cfg, step)` before
every step and `run/checkpoints.py` calls it with a checkpoint's step, so a checkpoint is loaded as
it was trained (the checkpoint of step S holds the weights after step S, which was trained with the
setting of step S). `unexported(model)` says which of them, acting at the loaded step, has no
counterpart in transformers (`export.py` refuses it). A new intervention is one module here
(docs/extending.md).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

import torch

from ..config import Config
from .base import Intervention


@functools.cache
def _registry() -> dict[str, Intervention]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        intervention = getattr(module, "INTERVENTION", None)
        if intervention is not None:
            found[intervention.name] = intervention
    return dict(sorted(found.items()))


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
    training step `step`."""
    for intervention in _registry().values():
        intervention.apply(model, cfg, step)


def unexported(model: torch.nn.Module) -> str | None:
    """Why an intervention acting on `model` (as set by `apply`) bars its export, or None."""
    for intervention in _registry().values():
        why = intervention.unexported(model)
        if why:
            return why
    return None
