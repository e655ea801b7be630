"""The paper's task: masked low-rank matrix completion (data.py, models/, progress.py).

A thin adapter: every call goes to those modules unchanged, so a seed gives the numbers that
tests/test_tasks.py pins (tests/data/matrix_baseline.json).
"""

from __future__ import annotations

from .. import progress as measures
from ..config import Config
from ..data import Batch, sample_batch
from ..hooks import HookedModule
from ..models.registry import build_model, supports

PROGRESS_BATCH = 256  # progress measures use the first matrices of the evaluation batch


class MatrixCompletion:
    name = "matrix"
    analyses = None  # every analysis applies to it

    def check(self, cfg: Config) -> None:
        return None

    def build_model(self, cfg: Config) -> HookedModule:
        return build_model(cfg.model, cfg.data.m * cfg.data.n, seed=cfg.seed, cols=cfg.data.n)

    def batch(self, cfg: Config, count: int, gen, step: int | None = None) -> Batch:
        if step is None:
            return sample_batch(cfg.data, count, gen)
        data = cfg.curriculum.data_at(cfg.data, step)
        # The data's range is validated up front, so no per-batch range check (a host sync).
        return sample_batch(data, count, gen, cfg.curriculum.shift(step), check=False)

    def progress(self, model: HookedModule, batch: Batch, cfg: Config) -> dict[str, float]:
        k = PROGRESS_BATCH
        return measures.measures(
            model,
            batch.tokens[:k],
            batch.mask[:k],
            cfg.data.m,
            cfg.data.n,
            None if batch.pad is None else batch.pad[:k],
        )

    def run_kind(self, cfg: Config) -> str:
        # a model with one scalar read-out per position (the BERT) writes the MSE; a decoder of
        # the value tokens (the GPT variant, Fig. 11) cross-entropy and accuracies
        return "matrix" if supports(cfg.model.arch, "scalar_readout") else "gpt"


TASK = MatrixCompletion()
