"""A small, readable BERT encoder with named hook points, and a scalar read-out at every position.

Numerically it is HuggingFace's `BertModel` (post-LayerNorm, erf GELU, learned absolute
positions, dropout 0) without token-type embeddings, followed by `Linear(width, 1)`; a test holds
it to that. Every intermediate activation analyses need passes through a `HookPoint`, an identity
module: read it with `run_with_cache`, overwrite it with `hooks(...)` (a forward hook that returns
a tensor replaces the activation); the plumbing lives in `hooks.py`. Hook names (`hooks.act_name`):

    hook_tok_embed, hook_pos_embed         (B, T, d), (1, T, d)  before the sum
    hook_embed                             (B, T, d)  after the embedding LayerNorm = layer 0's
                                                      resid_pre
    blocks.{l}.hook_resid_pre              (B, T, d)
    blocks.{l}.attn.hook_q / hook_k / hook_v   (B, H, T, dh)
    blocks.{l}.attn.hook_pattern           (B, H, Tq, Tk) softmax attention (only computed when
                                           hooked); with model.attention=linear (GPT only) the
                                           linear scores
    blocks.{l}.attn.hook_z                 (B, T, H, dh) per-head output before the output
                                           projection
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
from torch import nn

from ..config import ModelConfig
from ..data import MASK_ID, VOCAB_SIZE, id_to_value
from ..hooks import HookedModule, HookPoint, mode
from . import layers
from .layers import Block, init_weights


def value_line_(tok_embed: torch.Tensor, std: float, scale: float) -> None:
    """Put the value-token rows on a number line in place: row of value v += v * d, with d one
    random direction (drawn after every other weight, so the rest of the model is unchanged) whose
    norm is `scale` times the expected norm of a random row, std * sqrt(width).
    tok_embed: (VOCAB_SIZE, width)."""
    width = tok_embed.shape[1]
    d = torch.randn(width)
    d = d * (scale * std * math.sqrt(width) / d.norm())
    values = id_to_value(torch.arange(1, VOCAB_SIZE))
    with torch.no_grad():
        tok_embed[1:] += values[:, None] * d.to(tok_embed)


class MatrixBert(HookedModule):
    """`cols`: the matrix's number of columns (read by attention edits that follow the matrix's
    rows and columns). `attention_edits`: {name: edit} of the interventions acting now
    (`layers.AttentionSite`; set by src/abrupt/interventions/, empty by default)."""

    causal = False  # every position attends to every other
    # what model.* options and tasks this architecture serves (checks.validate_run)
    supports = frozenset(
        {
            "norm_pre",
            "value_init_line",
            "size_mixtures",
            "matrix_progress",
            "scalar_readout",
            "row_column_bias",
        }
    )

    def __init__(self, cfg: ModelConfig, seq_len: int, cols: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.seq_len = seq_len
        self.cols = cols
        self.attention_edits: dict[str, layers.AttentionEdit] = {}
        # padding_idx keeps the MASK row at zero and out of training, as in the reference
        # (HF BertModel with pad_token_id = 0): a hidden entry carries only its position.
        self.tok_embed = nn.Embedding(VOCAB_SIZE, cfg.width, padding_idx=MASK_ID)
        self.pos_embed = nn.Embedding(seq_len, cfg.width)
        self.ln_embed = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.blocks = nn.ModuleList(
            Block(cfg, causal=False, pre_norm=cfg.norm == "pre") for _ in range(cfg.layers)
        )
        if cfg.norm == "pre":
            self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.readout = nn.Linear(cfg.width, 1)
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
        return self.run_from(0, self.hook_embed(self.ln_embed(tok + pos)), pad)

    def run_from(
        self, layer: int, resid_pre: torch.Tensor, pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Finish a forward pass from `blocks.{layer}.hook_resid_pre` (TransformerLens's
        `start_at_layer`): resid_pre (B, T, d), as `run_with_cache` stored it there ->
        predictions (B, T). Equal, bit for bit, to the whole forward pass when no hook acts on
        the layers before `layer`: the analyses that intervene on one layer at a time (ablation,
        patching) skip the layers below it this way."""
        if not 0 <= layer < len(self.blocks):
            raise ValueError(f"layer {layer} out of range: the model has {len(self.blocks)}")
        x, t = resid_pre, resid_pre.shape[1]
        keep = None if pad is None else ~pad.to(x.device)[:, None, None, :]
        for l in range(layer, len(self.blocks)):
            bias = scale = None
            if self.attention_edits:
                site = layers.AttentionSite(l, t, x.device, x.dtype, cols=self.cols)
                bias, scale = layers.edit_terms(self.attention_edits, site)
            x = self.blocks[l](x, keep, bias, scale)
        if self.cfg.norm == "pre":
            x = self.ln_final(x)
        return self.hook_out(self.readout(x).squeeze(-1))

    # --- what the matrix task and the analyses call (the GPT variant answers the same) ---------

    def prediction_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The sequences (B, T) whose one forward pass `predict` makes: the tokens themselves."""
        return tokens

    @torch.no_grad()
    def predict(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions (B, T) in evaluation mode, without gradients, layers.CHUNK matrices per
        forward pass."""
        with mode(self):
            return torch.cat(
                [
                    self(
                        tokens[i : i + layers.CHUNK],
                        None if pad is None else pad[i : i + layers.CHUNK],
                    )
                    .float()
                    .cpu()
                    for i in range(0, len(tokens), layers.CHUNK)
                ]
            )
