"""Export a checkpoint to HuggingFace `transformers`, so that tools built on it can load the model.

- The BERT (`model.arch=bert`) becomes a `transformers.BertModel` directory (config.json +
  model.safetensors: MASK's embedding row zero, one all-zero token type, no pooler) and
  `readout.safetensors` (`weight` (1, width), `bias` (1)): prediction = last_hidden_state @
  weight.T + bias, per position.
- The decoders (`model.arch=gpt`: the matrix GPT variant and the sequence tasks' decoder) become a
  `transformers.GPT2LMHeadModel` directory with an untied head.

A README.md in the directory says how to predict with it. What has no counterpart in those classes
is refused with one line (`ExportError`): linear attention, the pre-LayerNorm BERT, and the
attention interventions while they act at the exported step (the row/column bias, the
attention-score multiplier). The attention temperature is folded into the query weights.

Needs `transformers` (`pip install 'abrupt[hf]'`). `tests/test_export.py` loads each export with
transformers and holds its outputs to abrupt's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import interventions
from .data import MASK_ID
from .hooks import HookedModule
from .models.bert import MatrixBert
from .models.gpt import MatrixGPT
from .run import checkpoints
from .run.rundir import atomic_write_text, read_config

TARGETS = ("hf",)


class ExportError(ValueError):
    """A run, step or model that cannot be exported, or a destination that is in the way."""


# Our block's tensors under BertModel's names (encoder.layer.{l}.<theirs>); both use Linear (out,
# in) weights, so nothing is transposed.
_BERT_NAMES = {
    "attn.q": "attention.self.query",
    "attn.k": "attention.self.key",
    "attn.v": "attention.self.value",
    "attn.o": "attention.output.dense",
    "ln_attn": "attention.output.LayerNorm",
    "mlp_in": "intermediate.dense",
    "mlp_out": "output.dense",
    "ln_mlp": "output.LayerNorm",
}


def unmapped(model: HookedModule) -> str | None:
    """Why `model` (as loaded at its checkpoint's step) has no transformers counterpart, or None."""
    c = model.cfg
    if c.attention == "linear":
        return (
            "linear attention (model.attention=linear) has no counterpart in transformers' GPT-2, "
            "whose attention is softmax; train with model.attention=softmax to export"
        )
    if isinstance(model, MatrixBert):
        if c.norm == "pre":
            return "the pre-LayerNorm BERT (model.norm=pre) has no counterpart in BertModel"
    return interventions.unexported(model)


def _q_scaled(sd: dict[str, torch.Tensor], prefix: str, temperature: float) -> None:
    """Fold `logits / temperature` into the query: (q / t) . k / sqrt(dh) is the same logit."""
    if temperature != 1.0:
        for kind in ("weight", "bias"):
            sd[f"{prefix}attn.q.{kind}"] = sd[f"{prefix}attn.q.{kind}"] / temperature


def _bert(model: MatrixBert):
    from transformers import BertConfig, BertModel

    c = model.cfg
    config = BertConfig(
        vocab_size=model.tok_embed.num_embeddings,
        hidden_size=c.width,
        num_hidden_layers=c.layers,
        num_attention_heads=c.heads,
        intermediate_size=c.mlp,
        hidden_act="gelu",  # erf GELU, as F.gelu
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=model.seq_len,
        type_vocab_size=1,
        layer_norm_eps=c.ln_eps,
        pad_token_id=MASK_ID,
        initializer_range=c.init_std,
    )
    sd = dict(model.state_dict())
    word = sd["tok_embed.weight"].clone()
    word[MASK_ID] = 0.0  # padding_idx keeps it zero in training; said here, not assumed
    out = {
        "embeddings.word_embeddings.weight": word,
        "embeddings.position_embeddings.weight": sd["pos_embed.weight"],
        "embeddings.token_type_embeddings.weight": torch.zeros(1, c.width),
        "embeddings.LayerNorm.weight": sd["ln_embed.weight"],
        "embeddings.LayerNorm.bias": sd["ln_embed.bias"],
    }
    for layer in range(c.layers):
        _q_scaled(sd, f"blocks.{layer}.", c.attn_temperature)
        for ours, theirs in _BERT_NAMES.items():
            for kind in ("weight", "bias"):
                out[f"encoder.layer.{layer}.{theirs}.{kind}"] = sd[f"blocks.{layer}.{ours}.{kind}"]
    hf = BertModel(config, add_pooling_layer=False)
    _load(hf, out)
    readout = {
        "weight": sd["readout.weight"].detach().clone(),
        "bias": sd["readout.bias"].detach().clone(),
    }
    return hf, readout


def _gpt(model: HookedModule):
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.cfg
    config = GPT2Config(
        vocab_size=model.tok_embed.num_embeddings,
        n_positions=model.pos_embed.num_embeddings,
        n_embd=c.width,
        n_layer=c.layers,
        n_head=c.heads,
        n_inner=c.mlp,
        activation_function="gelu_new",  # tanh GELU, as the decoder's blocks
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=c.ln_eps,
        initializer_range=c.init_std,
        tie_word_embeddings=False,  # our head is untied from the token embedding
        # GPT-2's own 50256 is outside these vocabularies
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    sd = dict(model.state_dict())
    out = {
        "transformer.wte.weight": sd["tok_embed.weight"],
        "transformer.wpe.weight": sd["pos_embed.weight"],
        "transformer.ln_f.weight": sd["ln_final.weight"],
        "transformer.ln_f.bias": sd["ln_final.bias"],
        "lm_head.weight": sd["head.weight"],
    }
    for layer in range(c.layers):
        b, h = f"blocks.{layer}.", f"transformer.h.{layer}."
        _q_scaled(sd, b, c.attn_temperature)
        # GPT-2's Conv1D holds (in, out): our Linear weights transposed, with Q, K, V side by side
        out[h + "attn.c_attn.weight"] = torch.cat([sd[b + f"attn.{x}.weight"].T for x in "qkv"], 1)
        out[h + "attn.c_attn.bias"] = torch.cat([sd[b + f"attn.{x}.bias"] for x in "qkv"])
        for ours, theirs in (
            ("attn.o", "attn.c_proj"),
            ("mlp_in", "mlp.c_fc"),
            ("mlp_out", "mlp.c_proj"),
        ):
            out[h + f"{theirs}.weight"] = sd[b + f"{ours}.weight"].T
            out[h + f"{theirs}.bias"] = sd[b + f"{ours}.bias"]
        for ours, theirs in (("ln_attn", "ln_1"), ("ln_mlp", "ln_2")):
            for kind in ("weight", "bias"):
                out[h + f"{theirs}.{kind}"] = sd[b + f"{ours}.{kind}"]
    hf = GPT2LMHeadModel(config)
    _load(hf, out)
    return hf, None


def _load(hf: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Every weight of `hf` from `tensors` (buffers such as position ids and causal masks aside);
    a name left over on either side is a bug of the mapping above."""
    buffers = {name for name, _ in hf.named_buffers()}
    missing, unexpected = hf.load_state_dict(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()}, strict=False
    )
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")


def _readme(model: HookedModule, run: Path, step: int, has_readout: bool) -> str:
    head = f"# `abrupt export` of {run}, step {step}\n\n`DIR` below is this directory's path.\n\n"
    if has_readout:
        t = model.seq_len
        return head + (
            f"A `transformers.BertModel` (the paper's encoder, {model.cfg.layers} layers, width "
            f"{model.cfg.width}) and its read-out, one value per position. `tokens` (B, {t}) "
            "int64: the matrix read row-major, MASK = 0 where hidden, value x -> round(100 x) + "
            "1001 for x in [-10, 10] (`abrupt.data.value_to_id`). Predict the whole matrix:\n\n"
            "```python\n"
            "from safetensors.torch import load_file\n"
            "from transformers import BertModel\n"
            "bert = BertModel.from_pretrained(DIR, add_pooling_layer=False)\n"
            'out = load_file(f"{DIR}/readout.safetensors")\n'
            'pred = (bert(input_ids=tokens).last_hidden_state @ out["weight"].T + out["bias"])'
            ".squeeze(-1)  # (B, T)\n"
            "```\n\n"
            "There are no token types and no pooler (`BertModel.from_pretrained(DIR)` alone adds a "
            "random, unused one).\n"
        )
    if isinstance(model, MatrixGPT):
        t = model.seq_len
        return head + (
            f"A `transformers.GPT2LMHeadModel` (the paper's GPT variant, {model.cfg.layers} "
            f"layers, width {model.cfg.width}, untied head). `ids` (B, {t + 1}) int64: the masked "
            "matrix read row-major (MASK = 0, value x -> round(100 x) + 1002), then SEP = 1; "
            f"it writes the {t} entries of the full matrix greedily (`abrupt.models.gpt`):\n\n"
            "```python\n"
            "from transformers import GPT2LMHeadModel\n"
            "gpt = GPT2LMHeadModel.from_pretrained(DIR)\n"
            f"full = gpt.generate(ids, max_new_tokens={t}, do_sample=False, "
            f"suppress_tokens=[0, 1])[:, {t + 1}:]  # value ids (B, {t})\n"
            "```\n"
        )
    return head + (
        f"A `transformers.GPT2LMHeadModel` (the decoder of the sequence task "
        f"`{read_config(run).task.name}`, {model.cfg.layers} layers, width {model.cfg.width}, "
        f"vocabulary {model.vocab}, untied head). `ids` (B, <= {model.seq_len}) int64 in "
        "[0, vocabulary): the inputs, the separator, the outputs written so far "
        "(`abrupt.tasks`):\n\n"
        "```python\n"
        "from transformers import GPT2LMHeadModel\n"
        "gpt = GPT2LMHeadModel.from_pretrained(DIR)\n"
        "next_token = gpt(input_ids=ids).logits.argmax(-1)  # (B, L): each position's next token\n"
        "```\n"
    )


def export(run: Path, out: Path, step: int | None = None, to: str = "hf") -> Path:
    """Write checkpoint `step` (default: the last) of `run` into the new or empty directory `out`
    as `to` ("hf": a transformers model directory, see the module docstring); returns `out`.

    Raises ExportError (one line) for an unknown target, a run without that checkpoint, a model
    with no counterpart, or an `out` that exists and is not an empty directory; RunDirError for a
    path that is not a run; CheckpointError for a corrupt checkpoint."""
    if to not in TARGETS:
        raise ExportError(f"--to: unknown target '{to}'; one of {', '.join(TARGETS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; give a new one")
    cfg = read_config(run)
    saved = [c.step for c in checkpoints.list_checkpoints(Path(run) / "checkpoints", verify=False)]
    if not saved:
        raise ExportError(f"{run} has no checkpoints")
    if step is not None and step not in saved:
        raise ExportError(
            f"no checkpoint at step {step} in {run} (saved steps: {', '.join(map(str, saved))})"
        )
    ckpt = checkpoints.find(run, step)
    model = checkpoints.load_model(cfg, ckpt)
    why = unmapped(model)
    if why:
        raise ExportError(f"cannot export {run}: {why}")
    try:
        import transformers
    except ImportError:
        raise ExportError("--to hf needs transformers: pip install 'abrupt[hf]'") from None
    hf, readout = _bert(model) if isinstance(model, MatrixBert) else _gpt(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside `out`, then renamed: a stopped export leaves no half directory behind
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            hf.save_pretrained(tmp)
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        if readout is not None:
            save_file(readout, tmp / "readout.safetensors", metadata={"format": "pt"})
        readme = _readme(model, Path(run), ckpt.step, readout is not None)
        atomic_write_text(tmp / "README.md", readme)  # it names the run's path
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
