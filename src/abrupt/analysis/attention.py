"""Attention maps (Fig. 4, 5, 22, 23) and per-head numbers that find row and column heads.

For each layer and head: the query x key pattern averaged over a seeded batch, under random masks
and under structured masks (chosen rows hidden but one entry, chosen columns hidden but one
entry). Per head: the attention mass on the query's own row and own column (itself excluded), on
itself, and on observed keys; a head whose row (column) mass reaches `head_threshold` is listed as
a row (column) head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..config import DataConfig  # noqa: E402
from ..data import Batch, generator, make_batch, sample_mask, sample_matrices  # noqa: E402
from ..model import MatrixBert  # noqa: E402


def structured_mask(data: DataConfig, count: int, mode: str, lines: tuple[int, ...], keep: int) -> torch.Tensor:
    """(count, m*n) hidden-mask: `lines` (rows or columns) hidden except entry `keep` of each."""
    hidden = torch.zeros(data.m, data.n, dtype=torch.bool)
    for line in lines:
        if mode == "rows":
            if not (0 <= line < data.m and 0 <= keep < data.n):
                raise ValueError(f"rows mask: row {line} / kept column {keep} outside {data.m}x{data.n}")
            hidden[line, :] = True
            hidden[line, keep] = False
        elif mode == "columns":
            if not (0 <= line < data.n and 0 <= keep < data.m):
                raise ValueError(f"columns mask: column {line} / kept row {keep} outside {data.m}x{data.n}")
            hidden[:, line] = True
            hidden[keep, line] = False
        else:
            raise ValueError(f"unknown structured mask '{mode}'; use rows or columns")
    return hidden.flatten().expand(count, -1).clone()


def relation_masks(m: int, n: int) -> dict[str, torch.Tensor]:
    """(T, T) boolean: key in the query's row / column (query itself excluded), or the query."""
    idx = torch.arange(m * n)
    row, col = idx // n, idx % n
    same = idx[:, None] == idx[None, :]
    return {
        "row": (row[:, None] == row[None, :]) & ~same,
        "column": (col[:, None] == col[None, :]) & ~same,
        "self": same,
    }


def patterns(model: MatrixBert, batch: Batch) -> torch.Tensor:
    """(layers, B, heads, T, T) attention patterns."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(len(model.blocks))]
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens, names=names)
    return torch.stack([cache[n] for n in names])


def head_masses(pats: torch.Tensor, hidden: torch.Tensor, m: int, n: int) -> dict[str, torch.Tensor]:
    """Mean attention mass per (layer, head) on own row / column / self / observed keys.

    Averaged over every query and, separately (suffix `_hidden`), over hidden queries only.
    """
    rel = relation_masks(m, n)
    out: dict[str, torch.Tensor] = {}
    observed_keys = (~hidden).float()[None, :, None, None, :]  # (1, B, 1, 1, Tk)
    per_query = {name: (pats * r.float()).sum(-1) for name, r in rel.items()}  # (L, B, H, Tq)
    per_query["observed"] = (pats * observed_keys).sum(-1)
    q_hidden = hidden.float()[None, :, None, :]  # (1, B, 1, Tq)
    for name, v in per_query.items():
        out[name] = v.mean(dim=(1, 3))
        out[f"{name}_hidden"] = (v * q_hidden).sum(dim=(1, 3)) / q_hidden.sum(dim=(1, 3)).clamp_min(1)
    return out


def classify(masses: dict[str, torch.Tensor], threshold: float) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"row_heads": [], "column_heads": []}
    layers, heads = masses["row"].shape
    for l in range(layers):
        for h in range(heads):
            if masses["row"][l, h] >= threshold:
                found["row_heads"].append(f"{l}:{h}")
            if masses["column"][l, h] >= threshold:
                found["column_heads"].append(f"{l}:{h}")
    return found


def run(
    models: dict[int, MatrixBert],
    data: DataConfig,
    seed: int = 0,
    n: int = 256,
    lines: tuple[int, ...] = (),
    keep: int = 0,
    head_threshold: float = 0.4,
    across: dict[int, MatrixBert] | None = None,
) -> dict[str, Any]:
    """`models`: the checkpoints drawn in full; `across`: checkpoints for the per-head curves.
    `lines`: rows (columns) hidden by the structured masks; default every other one, 1, 3, ..."""
    lines = lines or tuple(range(1, min(data.m, data.n), 2))
    g = generator(seed)
    matrices = sample_matrices(data, n, g)
    masks = {
        "random": sample_mask(data, n, g),
        "rows": structured_mask(data, n, "rows", lines, keep),
        "columns": structured_mask(data, n, "columns", lines, keep),
    }
    batches = {k: make_batch(matrices, v, clip=True) for k, v in masks.items()}
    result: dict[str, Any] = {"seed": seed, "n": n, "lines": list(lines), "keep": keep,
                              "head_threshold": head_threshold, "chance": {
                                  "row": (data.n - 1) / (data.m * data.n), "column": (data.m - 1) / (data.m * data.n),
                                  "observed": 1 - data.p_mask}, "steps": {}, "_maps": {}}
    for step, model in models.items():
        entry = {}
        for mode, batch in batches.items():
            pats = patterns(model, batch)
            result["_maps"][f"{mode}@{step}"] = pats.mean(dim=1)  # (L, H, T, T), kept for plotting
            masses = head_masses(pats, batch.mask, data.m, data.n)
            entry[mode] = {k: v.tolist() for k, v in masses.items()}
            if mode == "random":
                entry.update(classify(masses, head_threshold))
        result["steps"][step] = entry
    result["across"] = {}
    for step, model in (across or {}).items():
        pats = patterns(model, batches["random"])
        masses = head_masses(pats, batches["random"].mask, data.m, data.n)
        result["across"][step] = {k: masses[k].tolist() for k in ("row", "column", "observed")}
    return result


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    for key, maps in result["_maps"].items():
        mode, step = key.split("@")
        layers, heads = maps.shape[:2]
        fig, axes = plt.subplots(layers, heads, figsize=(1.6 * heads, 1.6 * layers), dpi=100, squeeze=False)
        for l in range(layers):
            for h in range(heads):
                ax = axes[l][h]
                ax.imshow(maps[l, h].numpy(), cmap="viridis", vmin=0)
                ax.set_xticks([])
                ax.set_yticks([])
                if l == 0:
                    ax.set_title(f"head {h}", fontsize=8)
                if h == 0:
                    ax.set_ylabel(f"layer {l}", fontsize=8)
        fig.suptitle(f"attention, {mode} masks, step {step} (query x key)", fontsize=9)
        fig.tight_layout()
        path = out / f"maps_{mode}_step{step}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    if result["across"]:
        steps = sorted(result["across"], key=int)
        row = torch.tensor([result["across"][s]["row"] for s in steps])  # (S, L, H)
        col = torch.tensor([result["across"][s]["column"] for s in steps])
        layers, heads = row.shape[1:]
        fig, axes = plt.subplots(1, layers, figsize=(3.6 * layers, 3.2), dpi=100, squeeze=False)
        xs = [max(int(s), 1) for s in steps]
        for l in range(layers):
            ax = axes[0][l]
            for h in range(heads):
                ax.plot(xs, row[:, l, h], color=plt.cm.tab10(h % 10), lw=1.2, label=f"h{h} row")
                ax.plot(xs, col[:, l, h], color=plt.cm.tab10(h % 10), lw=1.2, ls="--", label=f"h{h} column")
            ax.axhline(result["chance"]["row"], color="gray", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"layer {l}: row (solid) / column (dashed) mass", fontsize=8)
            ax.set_xlabel("step")
            ax.set_ylim(0, 1)
        axes[0][-1].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / "masses_across_training.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
