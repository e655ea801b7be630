"""Named groups of parameters, defined once: what switching moves between checkpoints, what
training can freeze, re-initialise or give its own learning rate, and what the per-group
gradient norms are logged for.

A group name is one of GROUPS, or a per-layer group `attn.L` / `mlp.L` (layer L's attention:
Q, K, V, O; layer L's MLP). Names are matched against `model.state_dict()` keys.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
from torch import nn

from .registry import build_model

GROUPS = {
    "tok_embed": r"^tok_embed\.",
    "pos_embed": r"^pos_embed\.",
    "ln_embed": r"^ln_embed\.",
    "qkv": r"^blocks\.\d+\.attn\.[qkv]\.",
    "attn_out": r"^blocks\.\d+\.attn\.o\.",
    "mlp": r"^blocks\.\d+\.mlp_(in|out)\.",
    "layernorm": r"^blocks\.\d+\.ln_",
    "embeddings": r"^(tok_embed|pos_embed|ln_embed)\.",
    # the BERT's read-out; the GPT's final LayerNorm and head
    "readout": r"^(readout|head|ln_final)\.",
}
GROUPS["attention"] = f"({GROUPS['qkv']})|({GROUPS['attn_out']})"
GROUPS["rest"] = f"^(?!({GROUPS['attention']}))"
GROUPS["all"] = r"."

# The parts a model is made of (a partition of its parameters), for per-group gradient norms.
PARTS = ("tok_embed", "pos_embed", "ln_embed", "attention", "mlp", "layernorm", "readout")
# Switching moves these between a plateau and a final model (the last two are complementary halves).
SWITCHING = ("qkv", "attn_out", "mlp", "layernorm", "embeddings", "readout", "attention", "rest")

_PER_LAYER = re.compile(r"^(attn|mlp)\.(\d+)$")


def pattern(group: str) -> str:
    m = _PER_LAYER.match(group)
    if m:
        kind, layer = m.groups()
        return (
            rf"^blocks\.{layer}\.attn\." if kind == "attn" else rf"^blocks\.{layer}\.mlp_(in|out)\."
        )
    if group not in GROUPS:
        raise ValueError(
            f"unknown parameter group '{group}'; use one of {', '.join(GROUPS)}, attn.L or mlp.L"
        )
    return GROUPS[group]


def names(model: nn.Module, group: str) -> list[str]:
    """State-dict keys of `group` in `model` (a per-layer group must name an existing layer)."""
    regex = re.compile(pattern(group))
    found = [n for n in model.state_dict() if regex.search(n)]
    if not found:
        raise ValueError(f"parameter group '{group}' matches nothing in this model")
    return found


def check(groups: list[str], layers: int) -> None:
    """Refuse unknown groups or layers beyond the model, before anything is built."""
    for g in groups:
        pattern(g)
        m = _PER_LAYER.match(g)
        if m and not int(m.group(2)) < layers:
            raise ValueError(f"parameter group '{g}': the model has layers 0..{layers - 1}")


def absent(groups: list[str], model_cfg: Any) -> list[str]:
    """The groups that match no parameter of the model `model_cfg` describes (the GPT has no
    `ln_embed`, for one): read from a model built without memory, on the meta device."""
    names = _parameter_names(model_cfg)
    return [g for g in groups if not any(re.search(pattern(g), n) for n in names)]


_NAMES: dict[str, tuple[str, ...]] = {}


def _parameter_names(model_cfg: Any) -> tuple[str, ...]:
    # Width never changes which tensors exist: the smallest model is built, once per kind, and the
    # global RNG (which build_model seeds) is restored.
    # no data-dependent init on meta
    small = dataclasses.replace(model_cfg, width=model_cfg.heads, mlp=1, value_init="random")
    if repr(small) not in _NAMES:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            _NAMES[repr(small)] = tuple(build_model(small, 2, seed=0, cols=1).state_dict())
    return _NAMES[repr(small)]


def split(spec: str) -> list[str]:
    return [g.strip() for g in spec.split(",") if g.strip()]
