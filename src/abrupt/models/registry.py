"""The matrix-completion models by `model.arch`: one line per architecture. A new one is a module
of this package defining a HookedModule class that takes (ModelConfig, seq_len, cols) and has
the calls training makes (`train_inputs`, `objective`, `evaluate_batch`, `predict`), plus its
line here (docs/extending.md)."""

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
    """The model of `cfg.arch`, initialised from `seed`, for matrices of `seq_len` entries
    (`cols` columns: needed by model.attn_bias)."""
    torch.manual_seed(seed)
    return ARCHS[cfg.arch](cfg, seq_len, cols)
