"""What the follow-up's sequence tasks share (Gopalani & Hu 2025, "What happens during the loss
plateau?"): the batch, the objective, the progress measures and the attention-score multiplier.

A sequence is `inputs, separator(s), outputs` as token ids, (B, L). The decoder reads the first
L - 1 tokens and predicts the next one at each position; only the predictions of the outputs
(query positions out_start - 1 .. L - 2) enter the loss. A task module subclasses `SequenceTask`
and defines its vocabulary, its sampler and its "correct keys": for each output query, the input
positions the attention of a layer must read to compute that output (the follow-up's attention
progress measure and the target of its intervention).
"""

from __future__ import annotations

import torch

from ..config import Config
from ..hooks import HookedModule, act_name, mode
from ..models.registry import build_sequence_model, supports
from ..models.seqgpt import SeqBatch
from ..progress import collapse

PROGRESS_BATCH = 256  # progress measures use the first sequences of the evaluation batch


class SequenceTask:
    """Base of a sequence task: subclasses set `name` and define `vocab`, `sample` and `key_map`."""

    name = ""
    # the others read matrices (rows, columns, values)
    analyses: tuple[str, ...] | None = ("progress", "llc")

    # --- what a task module defines ------------------------------------------------------------

    def vocab(self, cfg: Config) -> int:
        """Number of token ids."""
        raise NotImplementedError

    def sample(self, cfg: Config, count: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        """(tokens (B, L) on gen's device, out_start)."""
        raise NotImplementedError

    def key_map(
        self, tokens: torch.Tensor, out_start: int, cfg: Config, layer: int, layers: int
    ) -> torch.Tensor | None:
        """(B, n_out, L-1) bool: the keys output query j (at position out_start - 1 + j) should
        attend to in `layer` of a `layers`-layer model; None where the task defines none there."""
        raise NotImplementedError

    # --- what training asks (base.Task) --------------------------------------------------------

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
        layers = cfg.model.layers
        t = tokens.shape[1] - 1
        keys = torch.zeros((count, layers, t, t), dtype=torch.bool, device=tokens.device)
        for layer in range(layers):
            m = self.key_map(tokens, out_start, cfg, layer, layers)
            if m is not None:
                keys[:, layer, out_start - 1 :] = m
        return SeqBatch(tokens, out_start, keys)

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
                on_keys = (att * keys[:, None]).sum(dim=(1, 2, 3))
                out[f"prog_attn_l{layer}"] = (
                    (on_keys / att.sum(dim=(1, 2, 3)).clamp_min(1e-30)).mean().item()
                )
        return out

    def run_kind(self, cfg: Config) -> str:
        return "sequence"


def randint(low: int, high: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Uniform integers in low..high (inclusive) on gen's device."""
    return torch.randint(low, high + 1, shape, generator=gen, device=gen.device)


def output_rows(n_out: int, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(j, key) index grids of an (n_out, t) key map: j the output index, key the key position."""
    j = torch.arange(n_out, device=device)[:, None]
    key = torch.arange(t, device=device)[None, :]
    return j, key
