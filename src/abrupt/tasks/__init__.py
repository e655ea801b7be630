"""Tasks: what a model learns. One module per task; `get(name)` returns its `TASK` object.

A task answers what training, evaluation and the analyses ask of it (see `base.Task`): the
model it trains, seeded batches drawn on the training device, the objective and its metrics
(the model's `objective` / `evaluate_batch`), progress measures, and which analyses apply.
`matrix` is the paper's matrix completion; `sequence.SequenceTask` is the shared part of the
follow-up's sequence tasks, so that a new one is a module defining its tokens and correct keys.
"""

from __future__ import annotations

import importlib

from .base import Task


def get(name: str) -> Task:
    """The task called `name` (config.TASKS); raises ValueError for an unknown one."""
    from ..config import TASKS

    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    return importlib.import_module(f"{__name__}.{name}").TASK
