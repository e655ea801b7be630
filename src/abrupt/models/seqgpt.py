"""The decoder for the follow-up's sequence tasks (Gopalani & Hu 2025): GPT-2 blocks (pre-LayerNorm,
tanh GELU, learned absolute positions, a final LayerNorm, untied head without bias), as in
their minGPT-based code, with `model.attention=linear` for their linear attention.

Initialisation (GPT-2's, theirs): every weight N(0, init_std) (0.02), biases 0, LayerNorms 1, and
the residual output projections (attention output, MLP output) N(0, init_std / sqrt(2 layers)).
The blocks are `gpt.GPTBlock`, so hook names are those of MatrixGPT and the BERT (hooks.act_name).

Intervention (the follow-up's Sec. on attention): with `task.attn_scale` c != 1 the attention of
the chosen layers on each output query's correct keys is multiplied by c (`Attention.forward`'s
`scale`); `attn_scale_on` switches it (the trainer turns it on from `task.attn_scale_from`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..hooks import HookedModule, mode
from ..losses import as_floats
from . import layers
from .gpt import build_decoder
from .layers import init_weights


@dataclass
class SeqBatch:
    tokens: torch.Tensor  # (B, L) int64: inputs, separator(s), outputs
    out_start: int  # index of the first output token
    # (B, layers, L-1, L-1) bool: each layer's correct keys of each output query (False elsewhere)
    keys: torch.Tensor
    pad: None = None  # no padding and no size mixture (the trainer asks)
    size: None = None

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


class SequenceGPT(HookedModule):
    """tokens (B, T <= seq_len) ids in [0, vocab) -> next-token logits (B, T, vocab).

    `keys` (B, layers, >= T, >= T) bool: the task's correct keys, read only while the
    attention-score multiplier is on (`attn_scale` != 1 in `scale_layers`)."""

    def __init__(
        self,
        cfg: ModelConfig,
        vocab: int,
        seq_len: int,
        attn_scale: float = 1.0,
        scale_layers: list[int] | tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.seq_len = seq_len
        self.attn_scale = attn_scale
        self.scale_layers = set(scale_layers)
        self.attn_scale_on = attn_scale != 1.0 and bool(self.scale_layers)
        build_decoder(self, cfg, vocab, seq_len)

    def reset_parameters(self) -> None:
        init_weights(self)
        # GPT-2: residual projections shrink with depth so the residual stream's variance does not
        # grow
        std = self.cfg.init_std / math.sqrt(2 * self.cfg.layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.o.weight, std=std)
            nn.init.normal_(block.mlp_out.weight, std=std)

    def forward(self, tokens: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        t = tokens.shape[1]
        if not 1 <= t <= self.seq_len:
            raise ValueError(f"expected sequences of length 1..{self.seq_len}, got {t}")
        tok = self.hook_tok_embed(self.tok_embed(tokens.to(self.pos_embed.weight.device)))
        pos = self.hook_pos_embed(self.pos_embed.weight[:t].unsqueeze(0))
        x = self.hook_embed(tok + pos)
        for layer, block in enumerate(self.blocks):
            scale = None
            if self.attn_scale_on and keys is not None and layer in self.scale_layers:
                on = keys[:, layer, :t, :t].to(x.device)[:, None]  # (B, 1, T, T)
                scale = torch.where(on, self.attn_scale, 1.0).to(x.dtype)
            x = block(x, scale)
        return self.hook_out(self.head(self.ln_final(x)))

    # --- what training calls -------------------------------------------------------------------

    def train_inputs(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.tokens[:, :-1], batch.keys

    objective = staticmethod(sequence_losses)

    @torch.no_grad()
    def evaluate_batch(self, batch: SeqBatch, chunk: int | None = None) -> dict[str, float]:
        """Teacher-forced metrics on a batch (evaluation mode, `chunk` sequences a forward pass,
        default layers.CHUNK), as floats."""
        chunk = chunk or layers.CHUNK
        with mode(self):
            logits = torch.cat(
                [
                    self(*self.train_inputs(batch[i : i + chunk])).float()
                    for i in range(0, len(batch), chunk)
                ]
            )
        return as_floats(sequence_losses(logits, batch))
