"""The paper's task: masked low-rank matrix completion (data.py, losses.py, models/).

Every call goes to those modules unchanged, so a seed gives the numbers that tests/test_tasks.py
pins (tests/data/matrix_baseline.json). The BERT reads the masked matrix and writes one value per
entry; the GPT variant reads it, then writes the whole matrix token by token (models/gpt.py), so
that its objective is cross-entropy and the analyses score its greedy completions.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import torch

from .. import progress as measures
from ..config import Config, DataConfig, max_abs_entry
from ..data import Batch, id_to_value, make_batch, sample_batch, seeded_batch, value_to_id
from ..hooks import HookedModule
from ..losses import evaluate, losses
from ..models import gpt
from ..models.registry import build_model, supports
from .base import ProbeTarget

PROGRESS_BATCH = 256  # progress measures use the first matrices of the evaluation batch


def analysis_data(cfg: Config) -> DataConfig:
    """The data the analyses draw from: the model's whole grid (a size mixture's largest size,
    no padding)."""
    return dataclasses.replace(cfg.data, sizes="")


def _decoder(cfg: Config) -> bool:
    """Whether the model writes the matrix as tokens (the GPT variant) rather than one value per
    entry (the BERT)."""
    return not supports(cfg.model.arch, "scalar_readout")


class MatrixCompletion:
    name = "matrix"
    headline = "loss_mask"
    headline_label = "L_mask (MSE on hidden entries)"

    def describe(self, cfg: Config) -> str:
        d = cfg.data
        sizes = f"sizes {d.sizes}" if d.sizes.strip() else f"{d.m}x{d.n}"
        return f"matrix completion: {sizes} rank-{d.rank} matrices, p_mask {d.p_mask:g}"

    def provides(self, cfg: Config) -> frozenset[str]:
        return frozenset(
            {
                "regions",
                "corrupt",
                "key_groups",
                "probe_targets",
                "embeddings",
                "substitute",
                "matrices",
            }
        )

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

    def seeded_batch(self, cfg: Config, count: int, seed: int) -> Batch:
        return seeded_batch(analysis_data(cfg), count, seed)

    def inputs(self, model: HookedModule, batch: Batch) -> tuple[tuple, dict]:
        if isinstance(model, gpt.MatrixGPT):
            # teacher forcing: the masked matrix, SEP, the full matrix but its last entry
            return (gpt.sequence(batch)[:, :-1],), {}
        return (batch.tokens,), {"pad": batch.pad}

    def objective(self, model: HookedModule, out: torch.Tensor, batch: Batch):
        if isinstance(model, gpt.MatrixGPT):
            return gpt.gpt_losses(out, batch)
        return losses(out, batch)

    def evaluate(
        self, model: HookedModule, batch: Batch, fwd_hooks: Iterable = ()
    ) -> dict[str, float]:
        """L, L_obs, L_mask and mask_value of the completed matrices (`model.predict`: the GPT
        variant's greedy completions), as the paper scores a model."""
        return evaluate(model, batch, fwd_hooks)

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

    def evaluates_teacher_forced(self, cfg: Config) -> bool:
        # the BERT's one pass is its prediction; the GPT variant is scored on greedy completions
        return not _decoder(cfg)

    def run_kind(self, cfg: Config) -> str:
        # a model with one scalar read-out per position (the BERT) writes the MSE; a decoder of
        # the value tokens (the GPT variant, Fig. 11) cross-entropy and accuracies
        return "gpt" if _decoder(cfg) else "matrix"

    # --- the analyses' capabilities -------------------------------------------------------------

    def regions(self, cfg: Config, batch: Batch) -> dict[str, torch.Tensor]:
        """Hidden and observed entries; for the GPT variant at the positions that write them (the
        second half of its teacher-forced pass, after the masked matrix)."""
        hidden = batch.mask
        if _decoder(cfg):
            before = torch.zeros_like(hidden)  # the masked matrix's positions write nothing scored
            return {
                "hidden": torch.cat([before, hidden], dim=1),
                "observed": torch.cat([before, ~hidden], dim=1),
            }
        return {"hidden": hidden.clone(), "observed": ~hidden}

    def corrupt(self, cfg: Config, batch: Batch, seed: int) -> Batch:
        """-X under the same mask (the paper's corrupted run); `seed` draws nothing."""
        return make_batch(-batch.matrix, batch.mask, clip=True)

    def key_groups(
        self, cfg: Config, batch: Batch, layer: int, layers: int
    ) -> dict[str, torch.Tensor]:
        """The query's own row and own column (itself excluded), at every layer, over the
        masked matrix's positions (the GPT variant's first m*n)."""
        rel = measures.relation_masks(cfg.data.m, cfg.data.n)
        b = len(batch)
        return {name: rel[name].expand(b, -1, -1) for name in ("row", "column")}

    def probe_targets(self, cfg: Config, batch: Batch) -> dict[str, ProbeTarget]:
        """At every entry of the masked matrix (the GPT variant: the first m*n positions):
        `row`, the entry's row of the masked input (hidden entries as 0); `value`, the entry's
        true value; `singular`, the top right singular vector of the true matrix (sign fixed so
        that its largest entry is positive)."""
        m, n = cfg.data.m, cfg.data.n
        b, t = batch.tokens.shape
        masked = torch.where(batch.mask, torch.zeros_like(batch.target), batch.target)
        rows = masked.reshape(b, m, n)[:, torch.arange(t) // n, :]  # (B, T, n): each entry's row
        _, _, vh = torch.linalg.svd(batch.matrix.double())
        v1 = vh[:, 0, :]
        sign = torch.sign(v1.gather(1, v1.abs().argmax(1, keepdim=True)))
        v1 = (v1 * sign).float()
        where = torch.ones(b, t, dtype=torch.bool)
        out = {
            "row": rows,
            "value": batch.target[..., None],
            "singular": v1[:, None, :].expand(b, t, n),
        }
        if _decoder(cfg):  # its pass reads 2T positions: the probes look at the masked matrix
            pad = torch.zeros(b, t, dtype=torch.bool)
            where = torch.cat([where, pad], dim=1)
            out = {k: torch.cat([y, torch.zeros_like(y)], dim=1) for k, y in out.items()}
        return {k: ProbeTarget(y, where) for k, y in out.items()}

    def token_labels(self, cfg: Config) -> tuple[torch.Tensor, np.ndarray]:
        """The value tokens of the range the training data reaches (3 where unbounded), with
        their values."""
        r = value_range(cfg.data)
        ids = torch.arange(
            value_to_id(torch.tensor([-r])).item(), value_to_id(torch.tensor([r])).item() + 1
        )
        values = id_to_value(ids).numpy()
        return (gpt.value_ids(id_to_value(ids)) if _decoder(cfg) else ids), values

    def position_labels(self, cfg: Config) -> dict[str, np.ndarray]:
        t = cfg.data.m * cfg.data.n
        return {"column": np.arange(t) % cfg.data.n, "row": np.arange(t) // cfg.data.n}

    def substitute(self, batch: Batch, value: float | None) -> Batch:
        if value is None:
            return batch
        token = value_to_id(torch.tensor([value])).item()
        tokens = torch.where(batch.mask, torch.full_like(batch.tokens, token), batch.tokens)
        return dataclasses.replace(batch, tokens=tokens)


    def entry_values(self, cfg: Config, out: torch.Tensor) -> torch.Tensor:
        """The BERT's output itself; the GPT variant's most likely value at the positions that
        write the matrix (the second half of its pass), teacher-forced."""
        if _decoder(cfg):
            t = cfg.data.m * cfg.data.n
            return gpt.id_values(gpt.value_argmax(out[:, t:]), check=False)
        return out


def value_range(data: DataConfig) -> float:
    """The largest |entry| the training data reaches, capped at the vocabulary's 10 (3 where the
    factors are unbounded)."""
    bound = max_abs_entry(data)
    return min(bound, 10.0) if np.isfinite(bound) else 3.0


TASK = MatrixCompletion()
