"""Bridge to HuggingFace `transformers.BertModel`, the reference implementation the paper used.

Only tests and benchmarks import this (transformers is not a run-time dependency).
"""

from __future__ import annotations

import torch
from torch import nn

from .data import MASK_ID, VOCAB_SIZE
from .model import MatrixBert


def hf_config(model: MatrixBert):
    from transformers import BertConfig

    c = model.cfg
    return BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=c.hidden,
        num_hidden_layers=c.layers,
        num_attention_heads=c.heads,
        intermediate_size=c.mlp,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=model.seq_len,
        type_vocab_size=1,
        layer_norm_eps=c.ln_eps,
        pad_token_id=MASK_ID,
        initializer_range=c.init_std,
    )


def hf_state_dict(model: MatrixBert) -> dict[str, torch.Tensor]:
    """Our weights under BertModel's names; token types get a zero embedding (we have none)."""
    sd = model.state_dict()
    out = {
        "embeddings.word_embeddings.weight": sd["tok_embed.weight"],
        "embeddings.position_embeddings.weight": sd["pos_embed.weight"],
        "embeddings.token_type_embeddings.weight": torch.zeros(1, model.cfg.hidden),
        "embeddings.LayerNorm.weight": sd["ln_embed.weight"],
        "embeddings.LayerNorm.bias": sd["ln_embed.bias"],
    }
    names = {
        "attn.q": "attention.self.query",
        "attn.k": "attention.self.key",
        "attn.v": "attention.self.value",
        "attn.o": "attention.output.dense",
        "ln_attn": "attention.output.LayerNorm",
        "mlp_in": "intermediate.dense",
        "mlp_out": "output.dense",
        "ln_mlp": "output.LayerNorm",
    }
    for layer in range(model.cfg.layers):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"encoder.layer.{layer}.{theirs}.{kind}"] = sd[f"blocks.{layer}.{ours}.{kind}"]
    return out


class HFMatrixBert(nn.Module):
    """BertModel + Linear(hidden, 1) read-out: the paper's model as the authors built it."""

    def __init__(self, model: MatrixBert) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(hf_config(model), add_pooling_layer=False)
        missing, unexpected = self.bert.load_state_dict(hf_state_dict(model), strict=False)
        # position_ids / token_type_ids are buffers, not weights
        if [k for k in missing if "position_ids" not in k and "token_type_ids" not in k] or unexpected:
            raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
        self.readout = nn.Linear(model.cfg.hidden, 1)
        self.readout.load_state_dict(model.readout.state_dict())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=tokens, token_type_ids=torch.zeros_like(tokens)).last_hidden_state
        return self.readout(hidden).squeeze(-1)
