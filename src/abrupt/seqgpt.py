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

import math

import torch
from torch import nn

from .config import ModelConfig
from .gpt import build_decoder
from .hooks import HookedModule
from .losses import as_floats
from .model import init_weights
from .tasks.sequence import SeqBatch, sequence_losses


class SequenceGPT(HookedModule):
    """tokens (B, T <= seq_len) ids in [0, vocab) -> next-token logits (B, T, vocab).

    `keys` (B, layers, >= T, >= T) bool: the task's correct keys, read only while the
    attention-score multiplier is on (`attn_scale` != 1 in `scale_layers`)."""

    def __init__(self, cfg: ModelConfig, vocab: int, seq_len: int, attn_scale: float = 1.0,
                 scale_layers: list[int] | tuple[int, ...] = ()) -> None:
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
        # GPT-2: residual projections shrink with depth so the residual stream's variance does not grow
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
    def evaluate_batch(self, batch: SeqBatch, chunk: int = 512) -> dict[str, float]:
        """Teacher-forced metrics on a batch (evaluation mode), as floats."""
        was_training = self.training
        self.eval()
        logits = torch.cat([self(*self.train_inputs(batch[i : i + chunk])).float() for i in range(0, len(batch), chunk)])
        self.train(was_training)
        return as_floats(sequence_losses(logits, batch))
