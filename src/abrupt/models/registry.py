"""The models by `model.arch`: one line per architecture. A new one is a module of this package
defining a HookedModule class that takes (ModelConfig, seq_len, cols) for matrix completion, has
`run_from` (a pass from a layer's residual stream) and `predict` (masked matrix tokens ->
values), declares the options and tasks it serves in `supports` (checks.validate_run) and, with
"sequence_tasks" there, builds its sequence-task model with `for_sequences`; plus its line here
(docs/extending.md)."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..hooks import HookedModule
from .bert import MatrixBert
from .gpt import MatrixGPT

ARCHS: dict[str, type[HookedModule]] = {
    "bert": MatrixBert,  # the paper's encoder
    "gpt": MatrixGPT,  # the paper's decoder-only variant (Fig. 11/12)
}


def build_model(cfg: ModelConfig, seq_len: int, seed: int, cols: int | None = None) -> HookedModule:
    """The model of `cfg.arch`, initialised from `seed`, for matrices of `seq_len` entries in
    `cols` columns (read by attention edits that follow rows and columns). It is built with no
    intervention acting: `interventions.apply(model, cfg, step)` puts in what acts at `step`."""
    torch.manual_seed(seed)
    return ARCHS[cfg.arch](cfg, seq_len, cols)


def supports(arch: str, capability: str) -> bool:
    """Whether architecture `arch` declares `capability` (its class's `supports`; an unknown
    architecture declares none)."""
    return capability in getattr(ARCHS.get(arch), "supports", ())


def build_sequence_model(cfg: ModelConfig, vocab: int, seq_len: int, seed: int) -> HookedModule:
    """The sequence-task model of `cfg.arch` (one with "sequence_tasks" in `supports`),
    initialised from `seed`: `vocab` token ids, sequences of up to `seq_len` tokens."""
    torch.manual_seed(seed)
    return ARCHS[cfg.arch].for_sequences(cfg, vocab, seq_len)
