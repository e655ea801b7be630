"""Attention ablation (Sec. 3 item 8): replace chosen heads' patterns and re-measure the losses.

Modes: `mean` replaces a head's pattern by its mean over the batch (an input-independent pattern,
what the authors' "uniform" ablation actually did), `uniform` by 1/T over all keys, `zero` zeroes
the head's output (its hook_z). A layer x head table ablates each head alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Sequence

from ..config import Config
from ..data import Batch, seeded_batch
from ..hooks import act_name
from ..losses import evaluate
from ..model import MatrixBert
from .common import (needs_hidden, Count, Inputs, Result, Seed, Table, Text, each, group_by_layer, loss_cells, one_of, parse_heads,
                     plot_head_tables)

TITLE = "Attention ablation"
PAPER = ("Replacing attention patterns by input-independent (batch-mean) or uniform ones raises the "
         "loss after the drop: the model needs input-dependent attention.")
ORDER = 60

MODES = ("mean", "uniform", "zero")


def check_modes(modes: Sequence[str]) -> None:
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"ablation modes {list(modes)}: use one or more of {', '.join(MODES)}")


def ablation_hooks(heads: Sequence[tuple[int, int]], mode: str):
    check_modes([mode])
    hooks = []
    for layer, hs in group_by_layer(heads).items():
        if mode == "zero":
            def fn(z, point, hs=hs):
                z = z.clone()
                z[:, :, hs] = 0
                return z
            hooks.append((act_name("z", layer), fn))
        else:
            def fn(p, point, hs=hs, mode=mode):
                p = p.clone()
                if mode == "mean":
                    p[:, hs] = p[:, hs].mean(dim=0, keepdim=True)
                else:
                    p[:, hs] = 1.0 / p.shape[-1]
                return p
            hooks.append((act_name("pattern", layer), fn))
    return hooks


def ablate(model: MatrixBert, batch: Batch, heads: Sequence[tuple[int, int]], mode: str) -> dict[str, float]:
    return evaluate(model, batch, ablation_hooks(heads, mode))


def check(options: dict[str, Any], cfg: Config) -> None:
    parse_heads(options.get("heads", "all"), cfg.model.layers, cfg.model.heads)


def unsupported(cfg: Config) -> str | None:
    return needs_hidden(cfg)


def run(inputs: Inputs, seed: Seed = 0, n: Count = 256, heads: str = "all",
        modes: Annotated[tuple[str, ...], each(one_of(*MODES))] = MODES) -> Result:
    """`heads` ('all' or 'L:H,...') are ablated together; the tables ablate each head alone."""
    batch = seeded_batch(inputs.data, n, seed)
    numbers: dict[str, Any] = {"seed": seed, "n": n, "heads": heads, "modes": list(modes), "steps": {}}
    for step, model in inputs.models.items():
        layers, nheads = len(model.blocks), model.cfg.heads
        entry: dict[str, Any] = {"none": evaluate(model, batch), "chosen": {}, "per_head_loss_mask": {}}
        chosen = parse_heads(heads, layers, nheads)
        for mode in modes:
            entry["chosen"][mode] = ablate(model, batch, chosen, mode)
            entry["per_head_loss_mask"][mode] = [
                [ablate(model, batch, [(l, h)], mode)["loss_mask"] for h in range(nheads)] for l in range(layers)
            ]
        numbers["steps"][step] = entry
    return Result(numbers)


def plot(result: Result, out: Path) -> list[Path]:
    tables = {}
    for step, entry in result.numbers["steps"].items():
        for mode, table in entry["per_head_loss_mask"].items():
            base = entry["none"]["loss_mask"]
            tables[f"step {step}, {mode}: L_mask / unablated"] = [[v / base for v in row] for row in table]
    return [plot_head_tables(tables, out / "ablation_per_head.png", "L_mask with one head ablated, relative to the intact model", center=1.0)]


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = []
    for step, e in r["steps"].items():
        rows.append([step, "none", *loss_cells(e["none"])])
        for mode, v in e["chosen"].items():
            rows.append([step, f"{mode} ({r['heads']})", *loss_cells(v)])
    return [Table(["step", "ablation", "L", "L_obs", "L_mask"], rows)]
