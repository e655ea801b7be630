"""Bridge to HuggingFace `transformers.BertModel`, the reference implementation the paper used.

Only tests and benchmarks import this (transformers is not a run-time dependency).
"""

from __future__ import annotations

import torch
from torch import nn

from abrupt.data import MASK_ID, VOCAB_SIZE
from abrupt.models.bert import MatrixBert


def hf_config(model: MatrixBert):
    from transformers import BertConfig

    c = model.cfg
    return BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=c.width,
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
        "embeddings.token_type_embeddings.weight": torch.zeros(1, model.cfg.width),
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
        if [
            k for k in missing if "position_ids" not in k and "token_type_ids" not in k
        ] or unexpected:
            raise RuntimeError(
                f"weight mapping incomplete: missing {missing}, unexpected {unexpected}"
            )
        self.readout = nn.Linear(model.cfg.width, 1)
        self.readout.load_state_dict(model.readout.state_dict())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(
            input_ids=tokens, token_type_ids=torch.zeros_like(tokens)
        ).last_hidden_state
        return self.readout(hidden).squeeze(-1)


class HFMatrixGPT(nn.Module):
    """transformers.GPT2Model + an untied linear head, with the weights of one of our MatrixGPTs."""

    def __init__(self, model) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        from abrupt.models.gpt import GPT_VOCAB

        c = model.cfg
        config = GPT2Config(
            vocab_size=GPT_VOCAB,
            n_positions=2 * model.seq_len,
            n_embd=c.width,
            n_layer=c.layers,
            n_head=c.heads,
            n_inner=c.mlp,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            layer_norm_epsilon=c.ln_eps,
        )
        self.gpt = GPT2Model(config)
        sd = model.state_dict()
        out = {
            "wte.weight": sd["tok_embed.weight"],
            "wpe.weight": sd["pos_embed.weight"],
            "ln_f.weight": sd["ln_final.weight"],
            "ln_f.bias": sd["ln_final.bias"],
        }
        for l in range(c.layers):
            b, h = f"blocks.{l}.", f"h.{l}."
            # GPT-2's Conv1D stores (in, out): our Linear weights transposed; Q, K, V side by side
            out[h + "attn.c_attn.weight"] = torch.cat(
                [sd[b + f"attn.{x}.weight"].T for x in "qkv"], dim=1
            )
            out[h + "attn.c_attn.bias"] = torch.cat([sd[b + f"attn.{x}.bias"] for x in "qkv"])
            out[h + "attn.c_proj.weight"], out[h + "attn.c_proj.bias"] = (
                sd[b + "attn.o.weight"].T,
                sd[b + "attn.o.bias"],
            )
            out[h + "mlp.c_fc.weight"], out[h + "mlp.c_fc.bias"] = (
                sd[b + "mlp_in.weight"].T,
                sd[b + "mlp_in.bias"],
            )
            out[h + "mlp.c_proj.weight"], out[h + "mlp.c_proj.bias"] = (
                sd[b + "mlp_out.weight"].T,
                sd[b + "mlp_out.bias"],
            )
            for ours, theirs in (("ln_attn", "ln_1"), ("ln_mlp", "ln_2")):
                out[h + f"{theirs}.weight"], out[h + f"{theirs}.bias"] = (
                    sd[b + f"{ours}.weight"],
                    sd[b + f"{ours}.bias"],
                )
        missing, unexpected = self.gpt.load_state_dict(out, strict=False)
        if [
            k for k in missing if not k.endswith(".attn.bias") and not k.endswith("masked_bias")
        ] or unexpected:
            raise RuntimeError(
                f"weight mapping incomplete: missing {missing}, unexpected {unexpected}"
            )
        self.head = nn.Linear(c.width, GPT_VOCAB, bias=False)
        self.head.load_state_dict(model.head.state_dict())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.gpt(input_ids=tokens).last_hidden_state)
