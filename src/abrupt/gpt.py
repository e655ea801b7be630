"""The GPT variant (Fig. 11, 12): a decoder-only transformer that reads a masked matrix and then
writes the whole matrix, trained with next-token cross-entropy on the written half.

Sequence: [masked matrix tokens] [SEP] [full matrix tokens], row-major, T = m*n each side. The
model sees the first 2T tokens and predicts the next one at each position; the loss is on the
last T predictions (the full matrix). Architecture: GPT-2 (pre-LayerNorm blocks, tanh GELU,
learned absolute positions, a final LayerNorm) with an untied output head, so that the read-in
and read-out embeddings can differ; held to `transformers.GPT2Model` by a test. It shares hook
points and their names with the BERT (`hooks.act_name`), so hook-based analyses work on it.

Vocabulary: MASK = 0, SEP = 1, value x -> 2 + round(100 x) + 1000 over -10.00 ... 10.00
(ids 2 ... 2002). The authors' GPT tokens (x -> 1 + 100x + 200, MASK 0, SEP 404) collide just
outside the training range (x = 2.03 gives the SEP id, x = -2.01 the MASK id); here no value the
vocabulary admits can produce a special id, and a value outside it is refused (or clipped with
data.clip), never misread.

`model.attention=linear` gives it the follow-up's linear attention (model.Attention); it is
pre-LN already, so `model.norm` stays a BERT option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .data import MASK_ID, VOCAB_SIZE, Batch, id_to_value, value_to_id
from .hooks import HookedModule, HookPoint
from .model import Attention, init_weights

GPT_MASK, GPT_SEP = 0, 1
_SHIFT = 1  # a GPT value id is the BERT value id + 1 (room for SEP after MASK)
GPT_VOCAB = VOCAB_SIZE + _SHIFT  # 2003


def value_ids(values: torch.Tensor) -> torch.Tensor:
    """GPT token ids of values (a value outside the vocabulary is refused, as in data.value_to_id)."""
    return value_to_id(values) + _SHIFT


def id_values(ids: torch.Tensor) -> torch.Tensor:
    """Values of GPT value ids (special ids have no value: refused)."""
    return id_to_value(ids - _SHIFT)


def sequence(batch: Batch) -> torch.Tensor:
    """(B, 2T + 1): masked matrix, SEP, full matrix, from a BERT-tokenized batch."""
    full = value_ids(batch.target)
    masked = full.masked_fill(batch.mask, GPT_MASK)
    sep = torch.full((len(full), 1), GPT_SEP, dtype=torch.long, device=full.device)
    return torch.cat([masked, sep, full], dim=1)


def masked_prefix(tokens: torch.Tensor) -> torch.Tensor:
    """BERT tokens of a masked matrix as GPT ids."""
    return torch.where(tokens == MASK_ID, torch.full_like(tokens, GPT_MASK), tokens + _SHIFT)


def gpt_losses(logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """Cross-entropy on the written half, and per observed / hidden entry: cross-entropy, accuracy,
    and the MSE of the decoded value (argmax over value tokens) against the true value."""
    t = batch.target.shape[1]
    out = logits[:, t:, :].float()  # the predictions of the T full-matrix tokens
    target_ids = value_ids(batch.target).to(out.device)
    ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), target_ids.reshape(-1), reduction="none").view_as(target_ids)
    guess = out[..., 2:].argmax(-1) + 2
    sq = (id_values(guess) - batch.target.to(out.device)) ** 2
    hidden = batch.mask.to(out.device)
    correct = (guess == target_ids).float()

    def mean(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        n = where.sum()
        return torch.where(n > 0, (x * where).sum() / n.clamp_min(1), torch.full_like(n, float("nan"), dtype=x.dtype))

    return {"loss": ce.mean(), "ce_obs": mean(ce, ~hidden), "ce_mask": mean(ce, hidden),
            "acc_obs": mean(correct, ~hidden), "acc_mask": mean(correct, hidden),
            "loss_obs": mean(sq, ~hidden), "loss_mask": mean(sq, hidden), "mask_value": mean(id_values(guess).abs(), hidden)}


class GPTBlock(nn.Module):
    """GPT-2's pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.attn = Attention(cfg, causal=True)
        self.ln_mlp = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.mlp_in = nn.Linear(cfg.hidden, cfg.mlp)
        self.mlp_out = nn.Linear(cfg.mlp, cfg.hidden)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """`scale`: the attention-score multiplier (Attention.forward), None for none."""
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln_attn(x), scale=scale)))
        mlp = self.hook_mlp_out(self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh")))
        return self.hook_resid_post(x + mlp)


class MatrixGPT(HookedModule):
    """tokens (B, L <= 2T) GPT ids -> next-token logits (B, L, GPT_VOCAB)."""

    def __init__(self, cfg: ModelConfig, seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.seq_len = seq_len  # T = m*n; the model reads up to 2T tokens
        self.tok_embed = nn.Embedding(GPT_VOCAB, cfg.hidden)
        self.pos_embed = nn.Embedding(2 * seq_len, cfg.hidden)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.hidden, GPT_VOCAB, bias=False)
        self.hook_tok_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.hook_embed = HookPoint()
        self.hook_out = HookPoint()
        self.name_hook_points()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        if pad is not None:
            raise ValueError("the GPT variant does not take size mixtures")
        length = tokens.shape[1]
        if not 1 <= length <= 2 * self.seq_len:
            raise ValueError(f"expected sequences of length 1..{2 * self.seq_len}, got {length}")
        tok = self.hook_tok_embed(self.tok_embed(tokens.to(self.pos_embed.weight.device)))
        pos = self.hook_pos_embed(self.pos_embed.weight[:length].unsqueeze(0))
        x = self.hook_embed(tok + pos)
        for block in self.blocks:
            x = block(x)
        return self.hook_out(self.head(self.ln_final(x)))

    # --- what training and the analyses call --------------------------------------------------

    def train_inputs(self, batch: Batch) -> tuple[torch.Tensor]:
        return (sequence(batch)[:, :-1],)

    @staticmethod
    def encode(tokens: torch.Tensor) -> torch.Tensor:
        """The model's input ids for BERT-tokenized masked matrices: the masked prefix."""
        return masked_prefix(tokens)

    objective = staticmethod(gpt_losses)

    @torch.no_grad()
    def evaluate_batch(self, batch: Batch, chunk: int = 512) -> dict[str, float]:
        """Teacher-forced losses on a batch (evaluation mode), as floats."""
        was_training = self.training
        self.eval()
        logits = torch.cat([self(*self.train_inputs(batch[i : i + chunk])).float() for i in range(0, len(batch), chunk)])
        self.train(was_training)
        return {k: v.item() for k, v in gpt_losses(logits, batch).items()}

    @torch.no_grad()
    def predict(self, tokens: torch.Tensor, chunk: int = 512, pad: torch.Tensor | None = None) -> torch.Tensor:
        """The completed matrix (B, T) for masked BERT tokens: SEP, then T values written greedily
        (argmax over value tokens), each fed back in."""
        if pad is not None:
            raise ValueError("the GPT variant does not take size mixtures")
        was_training = self.training
        self.eval()
        outs = []
        for i in range(0, len(tokens), chunk):
            prefix = masked_prefix(tokens[i : i + chunk].to(self.pos_embed.weight.device))
            seq = torch.cat([prefix, torch.full((len(prefix), 1), GPT_SEP, dtype=torch.long, device=prefix.device)], dim=1)
            t = prefix.shape[1]
            for _ in range(t):
                logits = self(seq)[:, -1, 2:]
                seq = torch.cat([seq, logits.argmax(-1, keepdim=True) + 2], dim=1)
            outs.append(id_values(seq[:, t + 1 :]).cpu())
        self.train(was_training)
        return torch.cat(outs)
