"""Tasks: what a model learns. One module per task, found by `names()`: a module of this package
that defines `TASK` (an object with the calls of `base.Task`) is a task, named by `TASK.name`; its
optional settings (`TASK.settings`, a dataclass) are the configuration section of that name,
registered when abrupt is imported (abrupt/__init__.py).

A task answers what training, evaluation and the analyses ask of it (base.Task): the model it
trains, seeded batches, the objective and its metrics, progress measures, and the capabilities
the analyses ask for (regions, a corrupted batch, key groups, probe targets, ...). `matrix` is
the paper's matrix completion; `sequence.SequenceTask` is the shared part of the follow-up's
sequence tasks, so that a new one is a module defining its tokens, answer and correct keys
(docs/extending.md).
"""

from __future__ import annotations

import functools

from ..config import register_section
from ..plugins import find
from .base import Task


@functools.cache
def _registry() -> dict[str, Task]:
    found = find(__name__, __path__, "TASK")
    for name, task in found.items():
        settings = getattr(task, "settings", None)  # optional
        if settings is not None:
            register_section(name, settings)
    return {"matrix": found.pop("matrix"), **found}  # matrix first: the default


def names() -> tuple[str, ...]:
    """Every task's name, `matrix` first."""
    return tuple(_registry())


def get(name: str) -> Task:
    """The task called `name`; raises ValueError naming the tasks for an unknown one."""
    if name not in _registry():
        raise ValueError(f"unknown task '{name}'; choose one of: {', '.join(names())}")
    return _registry()[name]


_registry()  # the tasks' configuration sections exist once the package is imported
