"""Attention ablation (Sec. 3 item 8): replace chosen heads' patterns and re-measure the losses.

Modes: `mean` replaces a head's pattern by its mean over the batch (an input-independent pattern,
what the authors' "uniform" ablation actually did), `uniform` by 1/T over all keys, `zero` zeroes
the head's output (its hook_z). A layer x head table ablates each head alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


from ..config import DataConfig
from ..data import Batch
from ..model import MatrixBert
from .common import evaluate_with_hooks, group_by_layer, parse_heads, plot_head_tables, seeded

MODES = ("mean", "uniform", "zero")


def ablation_hooks(heads: Sequence[tuple[int, int]], mode: str):
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode '{mode}'; use one of {', '.join(MODES)}")
    hooks = []
    for layer, hs in group_by_layer(heads).items():
        if mode == "zero":
            def fn(z, point, hs=hs):
                z = z.clone()
                z[:, :, hs] = 0
                return z
            hooks.append((f"blocks.{layer}.attn.hook_z", fn))
        else:
            def fn(p, point, hs=hs, mode=mode):
                p = p.clone()
                if mode == "mean":
                    p[:, hs] = p[:, hs].mean(dim=0, keepdim=True)
                else:
                    p[:, hs] = 1.0 / p.shape[-1]
                return p
            hooks.append((f"blocks.{layer}.attn.hook_pattern", fn))
    return hooks


def ablate(model: MatrixBert, batch: Batch, heads: Sequence[tuple[int, int]], mode: str) -> dict[str, float]:
    return evaluate_with_hooks(model, batch, ablation_hooks(heads, mode))


def run(
    models: dict[int, MatrixBert],
    data: DataConfig,
    seed: int = 0,
    n: int = 256,
    heads: str = "all",
    modes: tuple[str, ...] = MODES,
) -> dict[str, Any]:
    """`heads` ('all' or 'L:H,...') are ablated together; the tables ablate each head alone."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown ablation mode '{mode}'; use one of {', '.join(MODES)}")
    batch = seeded(data, n, seed)
    result: dict[str, Any] = {"seed": seed, "n": n, "heads": heads, "modes": list(modes), "steps": {}}
    for step, model in models.items():
        layers, nheads = len(model.blocks), model.cfg.heads
        entry: dict[str, Any] = {"none": evaluate_with_hooks(model, batch), "chosen": {}, "per_head_loss_mask": {}}
        chosen = parse_heads(heads, layers, nheads)
        for mode in modes:
            entry["chosen"][mode] = ablate(model, batch, chosen, mode)
            entry["per_head_loss_mask"][mode] = [
                [ablate(model, batch, [(l, h)], mode)["loss_mask"] for h in range(nheads)] for l in range(layers)
            ]
        result["steps"][step] = entry
    return result


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    tables = {}
    for step, entry in result["steps"].items():
        for mode, table in entry["per_head_loss_mask"].items():
            base = entry["none"]["loss_mask"]
            tables[f"step {step}, {mode}: L_mask / unablated"] = [[v / base for v in row] for row in table]
    return [plot_head_tables(tables, out / "ablation_per_head.png", "L_mask with one head ablated, relative to the intact model", center=1.0)]
