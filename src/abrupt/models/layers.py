"""What the models share: the attention (softmax or linear, bidirectional or causal, with a KV
cache), the channel through which interventions edit it (`AttentionSite`, `edit_terms`), the weight
initialisation and the chunk size of batched prediction. Hook points inside
the attention: hook_q / hook_k / hook_v (B, H, T, dh), hook_pattern (B, H, Tq, Tk), hook_z
(B, T, H, dh) (see bert.py for the full list)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..hooks import HookPoint

# Matrices per forward pass when a model predicts or evaluates a batch (a memory bound). No number
# may depend on it: a hook that needs a statistic of the batch gets it precomputed over the whole
# batch, and a test runs every analysis at two chunk sizes.
CHUNK = 512


@dataclass(frozen=True)
class AttentionSite:
    """Where a model asks its attention edits for their terms: one layer of one forward pass.

    layer   the block's index
    t       positions of the pass, queries and keys alike (a decoder refuses terms on a pass
            with a KV cache)
    device  where the terms must be
    dtype   the activations' dtype (a multiplier is cast to it)
    cols    the matrix's number of columns (matrix models; None elsewhere)
    keys    the task's correct keys (B, layers, >= t, >= t) bool (sequence tasks; None elsewhere)
    """

    layer: int
    t: int
    device: torch.device
    dtype: torch.dtype
    cols: int | None = None
    keys: torch.Tensor | None = None


# An attention edit: called at every layer of every forward pass while it is in a model's
# `attention_edits`, it returns ("bias", (Tq, Tk) float added to the logits) or ("scale", (B or 1,
# 1, Tq, Tk) float > 0 multiplying the attention weights; see Attention.forward), or None where it
# does not act. Interventions (src/abrupt/interventions/) put edits there and take them out.
AttentionEdit = Callable[[AttentionSite], "tuple[str, torch.Tensor] | None"]


def edit_terms(
    edits: dict[str, AttentionEdit], site: AttentionSite
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(bias, scale) for one layer from every edit in `edits`: biases add, multipliers multiply,
    None where no edit acts (so a model without edits runs exactly as one without the channel)."""
    bias = scale = None
    for edit in edits.values():
        term = edit(site)
        if term is None:
            continue
        kind, value = term
        if kind == "bias":
            bias = value if bias is None else bias + value
        elif kind == "scale":
            scale = value if scale is None else scale * value
        else:
            raise ValueError(f"an attention edit returned '{kind}'; expected bias or scale")
    return bias, scale


def init_weights(model: nn.Module) -> None:
    """BERT's initialisation (normal(0, init_std) weights, zero biases, unit LayerNorms; position
    embeddings at pos_init_std when set), in a fixed order so that one seed gives one model."""
    std = model.cfg.init_std
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.normal_(model.tok_embed.weight, std=std)
    nn.init.normal_(model.pos_embed.weight, std=model.cfg.pos_init_std or std)


class KVCache:
    """One attention layer's keys and values of the positions a causal model has already read, so
    that decoding one more token costs that token, not the whole sequence again (the GPT variant's
    greedy completion). Held in buffers of `capacity` positions, (B, H, capacity, dh), allocated
    on the first write: a token's keys are written once, never copied again."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0  # positions read so far
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' keys and values (B, H, new, dh); returns every position's."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"a KV cache of {self.capacity} positions cannot take {end}")
        if self.k is None:
            self.k = k.new_empty(*k.shape[:2], self.capacity, k.shape[3])
            self.v = v.new_empty(*v.shape[:2], self.capacity, v.shape[3])
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    """Multi-head self-attention; `causal` (the GPT variant) lets a query see only earlier keys."""

    def __init__(self, cfg: ModelConfig, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.heads = cfg.heads
        self.head_dim = cfg.width // cfg.heads
        self.temperature = cfg.attn_temperature
        self.linear = cfg.attention == "linear"
        self.q = nn.Linear(cfg.width, cfg.width)
        self.k = nn.Linear(cfg.width, cfg.width)
        self.v = nn.Linear(cfg.width, cfg.width)
        self.o = nn.Linear(cfg.width, cfg.width)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def _mask(
        self, keep: torch.Tensor | None, tq: int, tk: int, device: torch.device
    ) -> torch.Tensor | None:
        """Keys each query may see, (B, 1, Tq, Tk) or (Tq, Tk) bool, or None for all: `keep`, and
        for a causal model keys up to the query, whose position is tk - tq + i (cached keys
        first)."""
        if not self.causal:
            return keep
        causal = torch.ones(tq, tk, dtype=torch.bool, device=device).tril(tk - tq)
        return causal if keep is None else keep & causal

    def forward(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        cache: "KVCache | None" = None,
    ) -> torch.Tensor:
        """`keep` (B, 1, 1, Tk) bool: keys that may be attended to (None: all; padding is not).
        `bias` (Tq, Tk) float: added to the logits (an attention edit), None for none.
        `scale` (B or 1, 1, Tq, Tk) float > 0: the follow-up's attention-score multiplier (c on a
        task's correct keys, 1 elsewhere): linear attention multiplies its scores by it; softmax
        multiplies its weights and renormalises (log scale added to the logits).
        `cache`: `x` holds new positions after those the cache has read (their keys and values come
        from it, and the new ones are added to it); hooks then see the new positions only."""
        q = self.hook_q(self._split(self.q(x)))
        k = self.hook_k(self._split(self.k(x)))
        v = self.hook_v(self._split(self.v(x)))
        if cache is not None:
            k, v = cache.extend(k, v)
        tq, tk = q.shape[2], k.shape[2]
        if self.linear:
            # The follow-up's linear attention: the scaled scores themselves are the pattern
            # (future keys 0, no softmax, no normalisation).
            scores = q @ k.transpose(-1, -2) / (math.sqrt(self.head_dim) * self.temperature)
            mask = self._mask(None, tq, tk, q.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, 0.0)
            z = self.hook_pattern(scores if scale is None else scores * scale) @ v
        elif self.hook_pattern.active or scale is not None:
            # Exact path: materialise the pattern so hooks can read or replace it.
            scores = q @ k.transpose(-1, -2) / (math.sqrt(self.head_dim) * self.temperature)
            if bias is not None:
                scores = scores + bias
            if scale is not None:
                scores = scores + scale.log()
            mask = self._mask(keep, tq, tk, q.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = pattern @ v
        elif bias is not None:
            allowed = self._mask(keep, tq, tk, q.device)
            # SDPA wants q's dtype (bf16 autocast)
            mask = (bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))).to(
                q.dtype
            )
            z = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=1.0 / (math.sqrt(self.head_dim) * self.temperature)
            )
        # the paper's attention, and SDPA's own default scale
        elif self.temperature == 1.0 and keep is None and tq == tk:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        elif keep is None and tq == tk:
            z = F.scaled_dot_product_attention(
                q,
                k,
                v,
                is_causal=self.causal,
                scale=1.0 / (math.sqrt(self.head_dim) * self.temperature),
            )
        else:
            z = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=self._mask(keep, tq, tk, q.device),
                scale=1.0 / (math.sqrt(self.head_dim) * self.temperature),
            )
        z = self.hook_z(z.transpose(1, 2))  # (B, T, H, dh)
        return self.o(z.reshape(z.shape[0], z.shape[1], -1))


class Block(nn.Module):
    """One transformer layer: attention, then a GELU MLP of width `cfg.mlp`, each with a residual
    connection and a LayerNorm. Post-norm (BERT): LayerNorm(x + sublayer(x)); pre-norm (GPT-2, or
    the BERT with model.norm=pre): x + sublayer(LayerNorm(x)). `gelu`: "none" (erf, BERT) or
    "tanh" (GPT-2). Hook points: hook_resid_pre, hook_attn_out, hook_resid_mid, hook_mlp_out,
    hook_resid_post, all (B, T, width).

    The sublayers register in the order they run (a pre-norm block's LayerNorms first): the
    order of `parameters()`, which a seed's weights and the gradient norm's sum follow."""

    def __init__(
        self, cfg: ModelConfig, *, causal: bool, pre_norm: bool, gelu: str = "none"
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.gelu = gelu
        if pre_norm:
            self.ln_attn = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = Attention(cfg, causal=causal)
        if not pre_norm:
            self.ln_attn = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        else:
            self.ln_mlp = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp_in = nn.Linear(cfg.width, cfg.mlp)
        self.mlp_out = nn.Linear(cfg.mlp, cfg.width)
        if not pre_norm:
            self.ln_mlp = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_mlp_out(self.mlp_out(F.gelu(self.mlp_in(x), approximate=self.gelu)))

    def forward(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, width) -> (B, T, width). `keep`, `bias`, `scale`, `cache`: as
        Attention.forward takes them (None: none)."""
        x = self.hook_resid_pre(x)
        if self.pre_norm:
            attn = self.attn(self.ln_attn(x), keep, bias, scale, cache)
            x = self.hook_resid_mid(x + self.hook_attn_out(attn))
            return self.hook_resid_post(x + self._mlp(self.ln_mlp(x)))
        attn = self.attn(x, keep, bias, scale, cache)
        x = self.hook_resid_mid(self.ln_attn(x + self.hook_attn_out(attn)))
        return self.hook_resid_post(self.ln_mlp(x + self._mlp(x)))
