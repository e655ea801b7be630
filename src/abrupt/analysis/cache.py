"""Forward passes shared by the analyses of one command: each (checkpoint, batch) is run once.

TransformerLens's `run_with_cache`, memoised for a whole `abrupt analyze`: the analyses ask
`Inputs.batch` for their evaluation batch (one object per data, size and seed) and
`Inputs.activations` for that batch's activations at a checkpoint (the task's teacher-forced
pass, `Task.inputs`); the first ask runs the forward
pass, later asks (the same analysis at another option, or another analysis on the same batch:
ablation and patching share theirs) read it. Two kinds of pass, because reading an
attention pattern switches a layer to the exact attention path (`models/layers.py`), whose last
bits differ from the fused one:

    "stream"    every layer's hook_resid_pre and hook_z, and hook_out: the fused path, so its
                predictions are those of `model.predict` bit for bit
    "patterns"  every layer's hook_pattern (B, H, T, T), on the exact path

Passes run in `models.layers.CHUNK` matrices at a time in evaluation mode without gradients, as
`model.predict` does, so what is read from the cache equals what a fresh pass would give. Tensors
are kept on the model's device.
"""

from __future__ import annotations

import torch

from ..config import Config, DataConfig
from ..data import seeded_batch
from ..hooks import act_name, mode
from ..models import layers
from ..tasks.base import Task, TaskBatch

KINDS = ("stream", "patterns")


def names(kind: str, n_layers: int) -> list[str]:
    """The hook points a pass of `kind` stores."""
    if kind == "stream":
        per_layer = [act_name(k, l) for l in range(n_layers) for k in ("resid_pre", "z")]
        return per_layer + [act_name("out")]
    if kind == "patterns":
        return [act_name("pattern", l) for l in range(n_layers)]
    raise ValueError(f"unknown activation kind '{kind}'; one of {', '.join(KINDS)}")


@torch.no_grad()
def run_chunked(task: Task, model, batch: TaskBatch, kind: str) -> dict[str, torch.Tensor]:
    """{hook name: activation over the whole batch (B, ...)} of one teacher-forced pass
    (`task.inputs`) of `kind`."""
    want = names(kind, len(model.blocks))
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in want}
    with mode(model):
        for i in range(0, len(batch), layers.CHUNK):
            (tokens,), kwargs = task.inputs(model, batch[i : i + layers.CHUNK])
            _, cache = model.run_with_cache(tokens, names=want, **kwargs)
            for n in want:
                parts[n].append(cache[n])
    return {n: torch.cat(p) for n, p in parts.items()}


@torch.no_grad()
def predict_from(
    model, layer: int, resid_pre: torch.Tensor, **forward: torch.Tensor | None
) -> torch.Tensor:
    """The teacher-forced pass resumed at `blocks.{layer}.hook_resid_pre` (`run_from`) with the
    cached resid_pre (B, L, d), CHUNK examples a pass: its output (`hook_out`: (B, L) for the
    BERT, (B, L, vocab) for a decoder) float on the CPU. `forward`: the pass's other inputs
    (`Task.inputs`: the BERT's pad, a decoder's keys), each (B, ...) or None."""

    def rows(i: int) -> dict[str, torch.Tensor | None]:
        return {k: None if v is None else v[i : i + layers.CHUNK] for k, v in forward.items()}

    with mode(model):
        return torch.cat(
            [
                model.run_from(layer, resid_pre[i : i + layers.CHUNK], **rows(i)).float().cpu()
                for i in range(0, len(resid_pre), layers.CHUNK)
            ]
        )


class ForwardCache:
    """The batches and activations of one command on the run configured by `cfg`; `Inputs`
    holds one."""

    def __init__(self, task: Task, cfg: Config) -> None:
        self.task, self.cfg = task, cfg
        self._batches: dict[tuple[str, int, int], TaskBatch] = {}
        # keyed by the batch object's id; the batch is kept in the value so the id stays its own
        self._runs: dict[tuple[int, int, str], tuple[TaskBatch, dict[str, torch.Tensor]]] = {}

    def batch(self, n: int, seed: int, data: DataConfig | None = None) -> TaskBatch:
        key = (repr(data), n, seed)  # mutable, so unhashable: its repr names every field
        if key not in self._batches:
            self._batches[key] = (
                self.task.seeded_batch(self.cfg, n, seed)
                if data is None
                else seeded_batch(data, n, seed)
            )
        return self._batches[key]

    def activations(self, step: int, model, batch: TaskBatch, kind: str) -> dict[str, torch.Tensor]:
        key = (step, id(batch), kind)
        if key not in self._runs:
            self._runs[key] = (batch, run_chunked(self.task, model, batch, kind))
        return self._runs[key][1]
