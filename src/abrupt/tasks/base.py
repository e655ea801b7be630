"""The task protocol: every call training, checkpoints and the analyses make of a task, so that
neither the trainer nor an analysis knows one (minGPT's trainer knows nothing of GPT).

Training asks `build_model`, `batch`, `inputs` and `objective`; evaluation `evaluate` (its
`headline` metric is what the transition detector, the forecast and the reports read); the
analyses ask for a seeded batch (`seeded_batch`) and then for what their question needs, each an
optional call named in `provides(cfg)`:

    regions        {name: (B, P) bool} over the positions of the model's output (`hook_out`,
                   B x P x ...) that the task scores: hidden / observed entries of a matrix, the
                   output positions of a sequence; the first is the headline's
    corrupt        a counterfactual batch whose correct outputs differ (-X for a matrix, as in the
                   paper; one input token resampled for a sequence)
    key_groups     {name: (B, T, T) bool} per layer: the keys a query should read (row / column
                   of a matrix; the follow-up's correct keys of a sequence task)
    probe_targets  {name: ProbeTarget}: what a linear probe of the hidden states should find
    embeddings     `token_labels` and `position_labels`: what the embedding tables are of
    outputs        `outputs`: the model's argmax outputs beside the truth and the input, for
                   copying / repetition
    substitute     `substitute`: the batch with a value token written at the hidden entries
                   (the paper's copying test, Table 1)
    matrices       low-rank matrices themselves (the nuclear-norm comparison, OOD inputs), and
                   `entry_values`: the matrix entries an output of the teacher-forced pass writes

An analysis declares the capabilities it needs (`NEEDS` in its module; `NEEDS_ANY`: one of these at
least) and runs wherever a task provides them; a task lists no analysis. docs/extending.md shows
a task written against this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import numpy as np
import torch

from ..config import Config
from ..hooks import HookedModule, mode
from ..losses import as_floats
from ..models import layers

CAPABILITIES = (
    "regions",
    "corrupt",
    "key_groups",
    "probe_targets",
    "embeddings",
    "outputs",
    "substitute",
    "matrices",
)


class TaskBatch(Protocol):
    """What any task's batch has: token ids and a size mixture's index, and it moves and slices."""

    tokens: torch.Tensor  # (B, L) int64: what the task's examples are, as token ids
    size: torch.Tensor | None  # (B,) a matrix size mixture's index per example; None elsewhere

    def to(self, device: torch.device | str) -> Any: ...

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice) -> Any: ...


@dataclass(frozen=True)
class ProbeTarget:
    """What a linear probe of hidden states (B, P, d) at the model's positions should recover.

    y       (B, P, k) float: the target of each position (a one-hot row for a class)
    where   (B, P) bool: the positions it is defined at (and probed at)
    kind    "value" (scored by MSE, R^2 and |cosine|) or "class" (by accuracy of the argmax)
    """

    y: torch.Tensor
    where: torch.Tensor
    kind: str = "value"


@dataclass(frozen=True)
class Outputs:
    """A model's outputs on a batch, beside the truth and the input, as token ids.

    pred    (B, n) int64: the model's argmax at each output position (teacher-forced)
    target  (B, n) int64: the correct outputs
    inputs  (B, m) int64: the input tokens the outputs are computed from
    """

    pred: torch.Tensor
    target: torch.Tensor
    inputs: torch.Tensor


class Task(Protocol):
    name: str
    # optional: its own settings, a dataclass with `#:` docs above each field (and optionally
    # `check(self, cfg)`): the configuration section `name`, read as `cfg.<name>.<field>`
    settings: type | None
    # the evaluation metric (a key of `evaluate`) that measures the task: the transition detector
    # reads its plateau and drop, the reports lead with it
    headline: str
    # what that metric is, in words, for figures and reports
    headline_label: str

    def describe(self, cfg: Config) -> str:
        """One line on what a run of `cfg` learns, for reports ("7x7 rank-2 matrices, ...")."""

    def provides(self, cfg: Config) -> frozenset[str]:
        """The analysis capabilities (CAPABILITIES) runs of `cfg` provide."""

    def check(self, cfg: Config) -> None:
        """Raise ValueError for a configuration this task cannot train (one line)."""

    def build_model(self, cfg: Config) -> HookedModule:
        """The untrained model, initialised from cfg.seed."""

    def batch(
        self, cfg: Config, count: int, gen: torch.Generator, step: int | None = None
    ) -> TaskBatch:
        """`count` examples drawn on gen's device: the training batch of `step` (1-based), or,
        with step None, the target distribution (evaluation)."""

    def seeded_batch(self, cfg: Config, count: int, seed: int) -> TaskBatch:
        """The analyses' batch: `count` examples of the target distribution on the CPU, drawn
        from `seed` alone (the same examples for every analysis and checkpoint)."""

    def inputs(self, model: HookedModule, batch: TaskBatch) -> tuple[tuple, dict[str, Any]]:
        """((tokens,), kwargs) of the model's teacher-forced forward pass on `batch`: the pass
        training differentiates, `hook_out` records and `run_with_cache(tokens, **kwargs)`
        caches."""

    def objective(
        self, model: HookedModule, out: torch.Tensor, batch: TaskBatch
    ) -> dict[str, torch.Tensor]:
        """The training loss ("loss") and metrics of the output of that pass."""

    def evaluate(
        self, model: HookedModule, batch: TaskBatch, fwd_hooks: Iterable = ()
    ) -> dict[str, float]:
        """The metrics (with `headline`) of `model` on `batch`, in evaluation mode without
        gradients, with optional forward hooks, in models.layers.CHUNK examples a pass."""

    def progress(self, model: HookedModule, batch: TaskBatch, cfg: Config) -> dict[str, float]:
        """The progress measures (`prog_*` keys) of `model` on an evaluation batch."""

    def evaluates_teacher_forced(self, cfg: Config) -> bool:
        """Whether `evaluate` is `objective_metrics`, the objective of the teacher-forced pass
        (`inputs`), as floats: then an analysis may score a cached or resumed teacher-forced pass
        with `objective` instead of calling `evaluate` (the BERT, a sequence task; not the GPT
        variant, whose evaluation scores greedy completions)."""

    def run_kind(self, cfg: Config) -> str:
        """What the metrics rows of a run configured by `cfg` are, one of
        `dynamics.transition.RUN_KINDS`: it names the headline loss the transition is read from
        (`transition.HEADLINE_LOSS`), the forecast's calibration family (`forecast.family`) and
        the loss figure's layout (plots.plot_losses)."""

    # --- optional: the analyses' capabilities, each named in `provides` ------------------------

    def regions(self, cfg: Config, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """"regions": {name: (B, P) bool} over the positions of `hook_out`."""

    def corrupt(self, cfg: Config, batch: TaskBatch, seed: int) -> TaskBatch:
        """"corrupt": the counterfactual batch (same shapes), drawn from `seed`."""

    def key_groups(
        self, cfg: Config, batch: TaskBatch, layer: int, layers: int
    ) -> dict[str, torch.Tensor]:
        """"key_groups": {name: (B, T, T) bool} of `layer` in a `layers`-layer model, over the
        positions the model reads (queries down, keys across); empty where it defines none."""

    def probe_targets(self, cfg: Config, batch: TaskBatch) -> dict[str, ProbeTarget]:
        """"probe_targets": over the positions the model reads."""

    def token_labels(self, cfg: Config) -> tuple[torch.Tensor, np.ndarray]:
        """"embeddings": (ids (N,), the number each token stands for (N,)) of the tokens the
        task's inputs use."""

    def position_labels(self, cfg: Config) -> dict[str, np.ndarray]:
        """"embeddings": {name: (T,) int} labels of the positions the model reads (a matrix's
        column and row; a sequence's segment and index in it)."""

    def outputs(self, model: HookedModule, cfg: Config, batch: TaskBatch) -> Outputs:
        """"outputs"."""

    def substitute(self, batch: TaskBatch, value: float | None) -> TaskBatch:
        """"substitute": hidden entries' tokens replaced by `value`'s (None keeps them)."""

    def entry_values(self, cfg: Config, out: torch.Tensor) -> torch.Tensor:
        """"matrices": (B, m*n) float, the entries that `out`, an output of the teacher-forced
        pass (`hook_out`), writes."""


@torch.no_grad()
def teacher_forced(
    task: Task,
    model: HookedModule,
    batch: TaskBatch,
    fwd_hooks: Iterable = (),
    chunk: int | None = None,
) -> torch.Tensor:
    """The output (`hook_out`, float) of the pass `task.inputs` gives, over the whole batch, in
    evaluation mode, `chunk` examples a pass (default models.layers.CHUNK), with optional forward
    hooks."""
    chunk = chunk or layers.CHUNK
    parts = []
    with mode(model), model.hooks(fwd_hooks):
        for i in range(0, len(batch), chunk):
            args, kwargs = task.inputs(model, batch[i : i + chunk])
            parts.append(model(*args, **kwargs).float())
    return torch.cat(parts)


def objective_metrics(
    task: Task, model: HookedModule, batch: TaskBatch, fwd_hooks: Iterable = ()
) -> dict[str, float]:
    """`task.objective` of the teacher-forced pass in evaluation mode, as floats: what training
    logs as `eval_*`."""
    return as_floats(task.objective(model, teacher_forced(task, model, batch, fwd_hooks), batch))
