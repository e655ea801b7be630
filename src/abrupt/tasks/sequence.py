"""What the follow-up's sequence tasks share (Gopalani & Hu 2025, "What happens during the loss
plateau?"): the batch, the objective, the progress measures and the analyses' capabilities.

A sequence is `inputs, separator(s), outputs` as token ids, (B, L). The decoder reads the first
L - 1 tokens and predicts the next one at each position; only the predictions of the outputs
(query positions out_start - 1 .. L - 2) enter the loss. A task module subclasses `SequenceTask`
and defines its vocabulary, its sampler, its answer (the outputs of given inputs) and its
"correct keys": for each output query, the input positions the attention of a layer must read to
compute that output (the follow-up's attention progress measure and the target of its
intervention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..data import generator
from ..hooks import HookedModule, act_name, mode
from ..models.registry import build_sequence_model, supports
from ..progress import collapse
from .base import Outputs, ProbeTarget, objective_metrics, teacher_forced

PROGRESS_BATCH = 256  # progress measures use the first sequences of the evaluation batch
# a corrupted sequence's resampled token is drawn again up to this many times until the correct
# outputs differ from the clean ones (a sequence whose outputs never change keeps its last draw)
CORRUPT_TRIES = 8


@dataclass
class SeqBatch:
    tokens: torch.Tensor  # (B, L) int64: inputs, separator(s), outputs
    out_start: int  # index of the first output token
    # (B, layers, L-1, L-1) bool: each layer's correct keys of each output query (False elsewhere)
    keys: torch.Tensor
    size: None = None  # no size mixture

    def to(self, device: torch.device | str) -> "SeqBatch":
        return dataclasses.replace(self, tokens=self.tokens.to(device), keys=self.keys.to(device))

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, rows: slice) -> "SeqBatch":
        return dataclasses.replace(self, tokens=self.tokens[rows], keys=self.keys[rows])


def sequence_losses(logits: torch.Tensor, batch: SeqBatch) -> dict[str, torch.Tensor]:
    """logits (B, L-1, V) -> cross-entropy over the outputs (nats per output token; the training
    objective), token accuracy and whole-sequence accuracy of the argmax (teacher-forced)."""
    out = logits[:, batch.out_start - 1 :].float()
    target = batch.tokens[:, batch.out_start :].to(out.device)
    ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
    right = out.argmax(-1) == target
    return {"loss": ce, "acc": right.float().mean(), "seq_acc": right.all(-1).float().mean()}


class SequenceTask:
    """Base of a sequence task: subclasses set `name` and `about` and define `vocab`, `sample`,
    `answer` and `key_map` (and `value_tokens`, `free_positions` where the defaults do not fit)."""

    name = ""
    about = ""  # one line: what the task computes
    settings: type | None = None
    headline = "loss"
    headline_label = "cross-entropy on the outputs (nats per token)"

    # --- what a task module defines ------------------------------------------------------------

    def vocab(self, cfg: Config) -> int:
        """Number of token ids."""
        raise NotImplementedError

    def sample(self, cfg: Config, count: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        """(tokens (B, L) on gen's device, out_start)."""
        raise NotImplementedError

    def answer(self, cfg: Config, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` (B, L) with the outputs (from out_start on) computed from the inputs: the
        task's function itself (a corrupted input gets its own correct outputs)."""
        raise NotImplementedError

    def key_map(
        self, tokens: torch.Tensor, out_start: int, cfg: Config, layer: int, layers: int
    ) -> torch.Tensor | None:
        """(B, n_out, L-1) bool: the keys output query j (at position out_start - 1 + j) should
        attend to in `layer` of a `layers`-layer model; None where the task defines none there."""
        raise NotImplementedError

    def value_tokens(self, cfg: Config) -> tuple[torch.Tensor, np.ndarray]:
        """(ids, numbers) of the input tokens: by default the integers low..high, each its own
        id."""
        ids = torch.arange(cfg.task.low, cfg.task.high + 1)
        return ids, ids.numpy().astype(float)

    def free_positions(self, cfg: Config) -> list[int]:
        """Input positions whose tokens are drawn independently of the others, so that one
        taken from another sequence keeps the input in distribution: by default the first
        `task.length`."""
        return list(range(cfg.task.length))

    # --- what training asks (base.Task) --------------------------------------------------------

    def describe(self, cfg: Config) -> str:
        return f"{self.name}: {self.about}"

    def provides(self, cfg: Config) -> frozenset[str]:
        """Every capability but the matrices'; `corrupt` only where the task module defines
        `answer` (a counterfactual input needs its own correct outputs)."""
        found = {"regions", "key_groups", "probe_targets", "embeddings", "outputs"}
        if type(self).answer is not SequenceTask.answer:
            found.add("corrupt")
        return frozenset(found)

    def check(self, cfg: Config) -> None:
        name = cfg.task.name
        if not supports(cfg.model.arch, "sequence_tasks"):
            raise ValueError(
                f"task.name={name}: a sequence task needs the decoder, model.arch=gpt "
                f"(not {cfg.model.arch})"
            )
        if cfg.curriculum.end():
            raise ValueError(f"curriculum: built for task.name=matrix, not {name}")
        if cfg.data.sizes.strip():
            raise ValueError(f"data.sizes: built for task.name=matrix, not {name}")

    def build_model(self, cfg: Config) -> HookedModule:
        tokens, _ = self.sample(cfg, 1, torch.Generator().manual_seed(0))
        return build_sequence_model(cfg.model, self.vocab(cfg), tokens.shape[1] - 1, cfg.seed)

    def batch(
        self, cfg: Config, count: int, gen: torch.Generator, step: int | None = None
    ) -> SeqBatch:
        tokens, out_start = self.sample(cfg, count, gen)
        return self._with_keys(cfg, tokens, out_start)

    def _with_keys(self, cfg: Config, tokens: torch.Tensor, out_start: int) -> SeqBatch:
        layers = cfg.model.layers
        t = tokens.shape[1] - 1
        keys = torch.zeros((len(tokens), layers, t, t), dtype=torch.bool, device=tokens.device)
        for layer in range(layers):
            m = self.key_map(tokens, out_start, cfg, layer, layers)
            if m is not None:
                keys[:, layer, out_start - 1 :] = m
        return SeqBatch(tokens, out_start, keys)

    def seeded_batch(self, cfg: Config, count: int, seed: int) -> SeqBatch:
        return self.batch(cfg, count, generator(seed))

    def inputs(self, model: HookedModule, batch: SeqBatch) -> tuple[tuple, dict]:
        return (batch.tokens[:, :-1],), {"keys": batch.keys}

    def objective(self, model: HookedModule, out: torch.Tensor, batch: SeqBatch):
        return sequence_losses(out, batch)

    def evaluate(
        self, model: HookedModule, batch: SeqBatch, fwd_hooks: Iterable = ()
    ) -> dict[str, float]:
        """Teacher-forced cross-entropy (`loss`), token and sequence accuracy of the outputs."""
        return objective_metrics(self, model, batch, fwd_hooks)

    @torch.no_grad()
    def progress(self, model: HookedModule, batch: SeqBatch, cfg: Config) -> dict[str, float]:
        """The follow-up's measures on the first PROGRESS_BATCH evaluation sequences (one
        teacher-forced pass, in evaluation mode, the intervention as in training at this step):

            prog_repetition   share of consecutive output predictions (argmax) that are equal
            prog_collapse     mean pairwise cosine of the final hidden states (after the last
                              LayerNorm) over the output-predicting positions of one sequence
            prog_attn_l{l}    attention progress of layer l: the share of |attention| of output
                              queries on their correct keys (layers with correct keys only)
        """
        b = batch[:PROGRESS_BATCH]
        layers = len(model.blocks)
        names = [act_name("pattern", l) for l in range(layers)] + [
            act_name("resid_post", layers - 1)
        ]
        with mode(model):
            logits, cache = model.run_with_cache(b.tokens[:, :-1], names=names, keys=b.keys)
        q0 = b.out_start - 1
        pred = logits[:, q0:].argmax(-1)
        out = {
            "prog_repetition": (pred[:, 1:] == pred[:, :-1]).float().mean().item(),
            "prog_collapse": collapse(model.ln_final(cache[names[-1]])[:, q0:]),
        }
        for layer in range(layers):
            keys = b.keys[:, layer, q0:]
            if keys.any():
                att = cache[names[layer]][:, :, q0:].abs().float()  # (B, H, n_out, Tk)
                keys = keys.to(att.device)  # an analysis's CPU batch on a model elsewhere
                out[f"prog_attn_l{layer}"] = key_share(att, keys).mean().item()
        return out

    def evaluates_teacher_forced(self, cfg: Config) -> bool:
        return True

    def run_kind(self, cfg: Config) -> str:
        return "sequence"

    # --- the analyses' capabilities (base.Task) ------------------------------------------------

    def regions(self, cfg: Config, batch: SeqBatch) -> dict[str, torch.Tensor]:
        """The positions that predict an output (out_start - 1 .. L - 2 of the pass)."""
        b, t = len(batch), batch.tokens.shape[1] - 1
        where = torch.zeros(b, t, dtype=torch.bool)
        where[:, batch.out_start - 1 :] = True
        return {"outputs": where}

    def corrupt(self, cfg: Config, batch: SeqBatch, seed: int) -> SeqBatch:
        """Each sequence with one input token (at a uniformly chosen `free_positions` place)
        taken from another sequence drawn from `seed`, and its outputs answered again: drawn
        again, up to CORRUPT_TRIES times, until some correct output differs."""
        gen = generator(seed)
        free = torch.tensor(self.free_positions(cfg))
        clean = batch.tokens.cpu()
        tokens = clean.clone()
        todo = torch.ones(len(clean), dtype=torch.bool)
        rows = torch.arange(len(clean))
        for _ in range(CORRUPT_TRIES):
            other, _ = self.sample(cfg, len(clean), gen)
            at = free[torch.randint(len(free), (len(clean),), generator=gen)]
            trial = clean.clone()
            trial[rows, at] = other[rows, at].cpu()
            trial = self.answer(cfg, trial)
            tokens[todo] = trial[todo]
            todo &= (tokens[:, batch.out_start :] == clean[:, batch.out_start :]).all(1)
            if not todo.any():
                break
        return self._with_keys(cfg, tokens, batch.out_start)

    def key_groups(
        self, cfg: Config, batch: SeqBatch, layer: int, layers: int
    ) -> dict[str, torch.Tensor]:
        """The correct keys of `layer` (the follow-up's attention progress), where it has any."""
        keys = batch.keys[:, layer].cpu()
        return {"correct": keys} if keys.any() else {}

    def probe_targets(self, cfg: Config, batch: SeqBatch) -> dict[str, ProbeTarget]:
        """At the output-predicting positions, as classes over the vocabulary: `answer`, the
        correct next output; `key_first` / `key_last`, the input tokens at the first / last
        correct key of the last layer (what its attention must bring to the query)."""
        tokens = batch.tokens.cpu()
        b, t = len(tokens), tokens.shape[1] - 1
        v = self.vocab(cfg)
        q0 = batch.out_start - 1
        where = self.regions(cfg, batch)["outputs"]
        answer = torch.zeros(b, t, dtype=torch.long)
        answer[:, q0:] = tokens[:, q0 + 1 :]
        out = {"answer": ProbeTarget(F.one_hot(answer, v).float(), where, "class")}
        keys = batch.keys[:, -1].cpu()  # (B, T, T)
        has = keys.any(-1) & where
        if has.any():
            pos = torch.arange(t)
            first = torch.where(keys, pos, t).min(-1).values.clamp(max=t - 1)
            last = torch.where(keys, pos, -1).max(-1).values.clamp(min=0)
            for name, at in (("key_first", first), ("key_last", last)):
                y = tokens[:, :t].gather(1, at)
                out[name] = ProbeTarget(F.one_hot(y, v).float(), has, "class")
        return out

    def token_labels(self, cfg: Config) -> tuple[torch.Tensor, np.ndarray]:
        return self.value_tokens(cfg)

    def token_modulus(self, cfg: Config) -> int | None:
        """The modulus the task computes in (None by default: a task that does says so)."""
        return None

    def position_labels(self, cfg: Config) -> dict[str, np.ndarray]:
        """`segment` (0 the inputs, 1 the output-predicting positions, from the separator before
        the outputs on) and `index` (the place within its segment) of the L - 1 positions read."""
        tokens, out_start = self.sample(cfg, 1, torch.Generator().manual_seed(0))
        pos = np.arange(tokens.shape[1] - 1)
        segment = (pos >= out_start - 1).astype(int)
        return {"segment": segment, "index": pos - segment * (out_start - 1)}

    @torch.no_grad()
    def outputs(self, model: HookedModule, cfg: Config, batch: SeqBatch) -> Outputs:
        q0 = batch.out_start - 1
        pred = teacher_forced(self, model, batch)[:, q0:].argmax(-1).cpu()
        tokens = batch.tokens.cpu()
        return Outputs(pred, tokens[:, q0 + 1 :], tokens[:, :q0])


def key_share(att: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B,) the share of |attention| (B, H, Tq, Tk) that falls on `keys` (B, Tq, Tk), summed
    over heads and queries: the follow-up's attention progress."""
    on_keys = (att * keys[:, None]).sum(dim=(1, 2, 3))
    return on_keys / att.sum(dim=(1, 2, 3)).clamp_min(1e-30)


def randint(low: int, high: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Uniform integers in low..high (inclusive) on gen's device."""
    return torch.randint(low, high + 1, shape, generator=gen, device=gen.device)


def output_rows(n_out: int, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(j, key) index grids of an (n_out, t) key map: j the output index, key the key position."""
    j = torch.arange(n_out, device=device)[:, None]
    key = torch.arange(t, device=device)[None, :]
    return j, key
