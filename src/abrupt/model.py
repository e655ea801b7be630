"""A small, readable BERT encoder with named hook points, and a scalar read-out at every position.

Numerically it is HuggingFace's `BertModel` (post-LayerNorm, erf GELU, learned absolute
positions, dropout 0) without token-type embeddings, followed by `Linear(hidden, 1)`; a test holds
it to that. Every intermediate activation analyses need passes through a `HookPoint`, an identity
module: read it with `run_with_cache`, overwrite it with `hooks(...)` (a forward hook that returns
a tensor replaces the activation); the plumbing lives in `hooks.py`. Hook names (`hooks.act_name`):

    hook_tok_embed, hook_pos_embed         (B, T, d), (1, T, d)  before the sum
    hook_embed                             (B, T, d)  after the embedding LayerNorm = resid_pre of layer 0
    blocks.{l}.hook_resid_pre              (B, T, d)
    blocks.{l}.attn.hook_q / hook_k / hook_v   (B, H, T, dh)
    blocks.{l}.attn.hook_pattern           (B, H, Tq, Tk) softmax attention (only computed when hooked);
                                           with model.attention=linear (GPT only) the linear scores
    blocks.{l}.attn.hook_z                 (B, T, H, dh) per-head output before the output projection
    blocks.{l}.hook_attn_out               (B, T, d)  after the output projection
    blocks.{l}.hook_resid_mid              (B, T, d)  LayerNorm(resid_pre + attn_out)
    blocks.{l}.hook_mlp_out                (B, T, d)
    blocks.{l}.hook_resid_post             (B, T, d)  LayerNorm(resid_mid + mlp_out)
    hook_out                               (B, T)     predictions

With `model.norm=pre` (a variant; the paper is post-LN) each sublayer reads LayerNorm(x) and adds
to the un-normalised stream, so resid_mid = resid_pre + attn_out and resid_post = resid_mid +
mlp_out, and a final LayerNorm (`ln_final`) precedes the read-out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .config import layer_list
from .data import MASK_ID, VOCAB_SIZE, Batch, id_to_value
from .hooks import HookedModule, HookPoint
from .losses import as_floats, losses

# Matrices per forward pass when a model predicts or evaluates a batch (a memory bound). No number
# may depend on it: a hook that needs a statistic of the batch gets it precomputed over the whole
# batch, and a test runs every analysis at two chunk sizes.
CHUNK = 512

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


def value_line_(tok_embed: torch.Tensor, std: float, scale: float) -> None:
    """Put the value-token rows on a number line in place: row of value v += v * d, with d one random
    direction (drawn after every other weight, so the rest of the model is unchanged) whose norm is
    `scale` times the expected norm of a random row, std * sqrt(hidden). tok_embed: (VOCAB_SIZE, d)."""
    hidden = tok_embed.shape[1]
    d = torch.randn(hidden)
    d = d * (scale * std * math.sqrt(hidden) / d.norm())
    values = id_to_value(torch.arange(1, VOCAB_SIZE))
    with torch.no_grad():
        tok_embed[1:] += values[:, None] * d.to(tok_embed)


def row_column_bias(t: int, cols: int, c: float, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) additive attention bias: log c where the key shares the query's row or column in a
    matrix of `cols` columns read row-major (the query itself included), 0 elsewhere."""
    p = torch.arange(t, device=device)
    same = (p[:, None] // cols == p[None, :] // cols) | (p[:, None] % cols == p[None, :] % cols)
    return same.float() * math.log(c)


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
        self.head_dim = cfg.hidden // cfg.heads
        self.temperature = cfg.attn_temperature
        self.linear = cfg.attention == "linear"
        self.q = nn.Linear(cfg.hidden, cfg.hidden)
        self.k = nn.Linear(cfg.hidden, cfg.hidden)
        self.v = nn.Linear(cfg.hidden, cfg.hidden)
        self.o = nn.Linear(cfg.hidden, cfg.hidden)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def _mask(self, keep: torch.Tensor | None, tq: int, tk: int, device: torch.device) -> torch.Tensor | None:
        """Keys each query may see, (B, 1, Tq, Tk) or (Tq, Tk) bool, or None for all: `keep`, and
        for a causal model keys up to the query, whose position is tk - tq + i (cached keys first)."""
        if not self.causal:
            return keep
        causal = torch.ones(tq, tk, dtype=torch.bool, device=device).tril(tk - tq)
        return causal if keep is None else keep & causal

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                scale: torch.Tensor | None = None, cache: "KVCache | None" = None) -> torch.Tensor:
        """`keep` (B, 1, 1, Tk) bool: keys that may be attended to (None: all; padding is not).
        `bias` (Tq, Tk) float: added to the logits (the row/column lever), None for none.
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
        elif bias is not None:  # BERT only (validated): no causal mask, no cache to combine
            mask = (bias if keep is None else bias.masked_fill(~keep, float("-inf"))).to(q.dtype)  # SDPA wants q's dtype (bf16 autocast)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / (math.sqrt(self.head_dim) * self.temperature))
        elif self.temperature == 1.0 and keep is None and tq == tk:  # the paper's attention, and SDPA's own default scale
            z = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        elif keep is None and tq == tk:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=1.0 / (math.sqrt(self.head_dim) * self.temperature))
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(keep, tq, tk, q.device),
                                               scale=1.0 / (math.sqrt(self.head_dim) * self.temperature))
        z = self.hook_z(z.transpose(1, 2))  # (B, T, H, dh)
        return self.o(z.reshape(z.shape[0], z.shape[1], -1))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = Attention(cfg)
        self.ln_attn = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.mlp_in = nn.Linear(cfg.hidden, cfg.mlp)
        self.mlp_out = nn.Linear(cfg.mlp, cfg.hidden)
        self.ln_mlp = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        if self.pre_norm:
            x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln_attn(x), keep, bias)))
            mlp = self.hook_mlp_out(self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)))))
            return self.hook_resid_post(x + mlp)
        x = self.hook_resid_mid(self.ln_attn(x + self.hook_attn_out(self.attn(x, keep, bias))))
        mlp = self.hook_mlp_out(self.mlp_out(F.gelu(self.mlp_in(x))))
        return self.hook_resid_post(self.ln_mlp(x + mlp))


class MatrixBert(HookedModule):
    """`cols`: the matrix's number of columns, needed only by the row/column attention bias
    (`model.attn_bias`); `attn_bias_on` switches that bias (the trainer turns it off after
    `model.attn_bias_until`)."""

    causal = False  # every position attends to every other

    def __init__(self, cfg: ModelConfig, seq_len: int, cols: int | None = None) -> None:
        super().__init__()
        if cfg.attn_bias != 1.0 and not cols:
            raise ValueError("model.attn_bias needs the matrix's number of columns (cols)")
        self.cfg = cfg
        self.seq_len = seq_len
        self.cols = cols
        self.attn_bias_on = cfg.attn_bias != 1.0
        self.bias_layers = set(layer_list(cfg.attn_bias_layers, cfg.layers, "model.attn_bias_layers")) if self.attn_bias_on else set()
        # padding_idx keeps the MASK row at zero and out of training, as in the reference
        # (HF BertModel with pad_token_id = 0): a hidden entry carries only its position.
        self.tok_embed = nn.Embedding(VOCAB_SIZE, cfg.hidden, padding_idx=MASK_ID)
        self.pos_embed = nn.Embedding(seq_len, cfg.hidden)
        self.ln_embed = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        if cfg.norm == "pre":
            self.ln_final = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.readout = nn.Linear(cfg.hidden, 1)
        self.hook_tok_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.hook_embed = HookPoint()
        self.hook_out = HookPoint()
        self.name_hook_points()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        if self.cfg.value_init == "line":
            value_line_(self.tok_embed.weight, self.cfg.init_std, self.cfg.value_init_scale)
        with torch.no_grad():
            self.tok_embed.weight[MASK_ID].zero_()

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) int64 -> predictions (B, T) float.

        T may be shorter than the trained length (fewer rows, or fewer columns read row-major):
        positions 0..T-1 are used, as in the reference model. `pad` (B, T) bool marks positions
        that no query attends to (a smaller matrix of a size mixture).
        """
        t = tokens.shape[1]
        if not 1 <= t <= self.seq_len:
            raise ValueError(f"expected sequences of length 1..{self.seq_len}, got {t}")
        tok = self.hook_tok_embed(self.tok_embed(tokens.to(self.pos_embed.weight.device)))
        pos = self.hook_pos_embed(self.pos_embed.weight[:t].unsqueeze(0))
        x = self.hook_embed(self.ln_embed(tok + pos))
        keep = None if pad is None else ~pad.to(x.device)[:, None, None, :]
        bias = row_column_bias(t, self.cols, self.cfg.attn_bias, x.device) if self.attn_bias_on else None
        for layer, block in enumerate(self.blocks):
            x = block(x, keep, bias if layer in self.bias_layers else None)
        if self.cfg.norm == "pre":
            x = self.ln_final(x)
        return self.hook_out(self.readout(x).squeeze(-1))

    # --- what training and the analyses call (the GPT variant answers the same calls) ----------

    def train_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return batch.tokens, batch.pad

    objective = staticmethod(losses)

    @staticmethod
    def encode(tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def evaluate_batch(self, batch: Batch) -> dict[str, float]:
        return as_floats(losses(self.predict(batch.tokens, pad=batch.pad), batch))

    def prediction_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The sequences (B, T) whose one forward pass `predict` makes: the tokens themselves."""
        return tokens

    @torch.no_grad()
    def predict(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions (B, T) in evaluation mode, without gradients, CHUNK matrices per forward pass."""
        was_training = self.training
        self.eval()
        out = torch.cat([self(tokens[i : i + CHUNK], None if pad is None else pad[i : i + CHUNK]).float().cpu()
                         for i in range(0, len(tokens), CHUNK)])
        self.train(was_training)
        return out


def build_model(cfg: ModelConfig, seq_len: int, seed: int, cols: int | None = None) -> HookedModule:
    """The model of `cfg.arch` (bert, or the gpt variant) for matrices of `seq_len` entries
    (`cols` columns: needed by model.attn_bias)."""
    torch.manual_seed(seed)
    if cfg.arch == "gpt":
        from .gpt import MatrixGPT

        return MatrixGPT(cfg, seq_len)
    return MatrixBert(cfg, seq_len, cols)
