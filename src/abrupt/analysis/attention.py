"""Attention maps (Fig. 4, 5, 22, 23) and per-head numbers that find row and column heads.

For each layer and head: the query x key pattern averaged over a seeded batch, under random masks
and under structured masks (chosen rows hidden but one entry, chosen columns hidden but one
entry). Per head: the attention mass on the query's own row and own column (itself excluded), on
itself, and on observed keys; a head whose row (column) mass reaches `head_threshold` is listed as
a row (column) head.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from ..config import Config, DataConfig
from ..data import Batch, make_batch, seeded_batch
from ..hooks import act_name
from ..models.bert import MatrixBert
from ..plots import figure, plt
from ..progress import head_masses
from .common import Count, Inputs, Result, Seed, Table, Text, at_least, between

TITLE = "Attention maps (Fig. 4, 5)"
PAPER = (
    "After the drop some heads attend to the query's row (e.g. layer 2 head 1) or column "
    "(layer 2 head 2) and to observed entries; before it the patterns are trivial (Fig. 4, 5)."
)
ORDER = 20
NEEDS = frozenset({"key_groups", "matrices"})  # task capabilities (tasks/base.py)


def unsupported(cfg: Config) -> str | None:
    return (
        "a row/column analysis needs at least a 2x2 matrix"
        if min(cfg.data.m, cfg.data.n) < 2
        else None
    )


def check(options: dict[str, Any], cfg: Config) -> None:
    lines = options.get("lines") or tuple(range(1, min(cfg.data.m, cfg.data.n), 2))
    for mode in ("rows", "columns"):
        structured_mask(cfg.data, 1, mode, lines, options.get("keep", 0))


def structured_mask(
    data: DataConfig, count: int, mode: str, lines: tuple[int, ...], keep: int
) -> torch.Tensor:
    """(count, m*n) hidden-mask: `lines` (rows or columns) hidden except entry `keep` of each."""
    hidden = torch.zeros(data.m, data.n, dtype=torch.bool)
    for line in lines:
        if mode == "rows":
            if not (0 <= line < data.m and 0 <= keep < data.n):
                raise ValueError(
                    f"rows mask: row {line} / kept column {keep} outside {data.m}x{data.n}"
                )
            hidden[line, :] = True
            hidden[line, keep] = False
        elif mode == "columns":
            if not (0 <= line < data.n and 0 <= keep < data.m):
                raise ValueError(
                    f"columns mask: column {line} / kept row {keep} outside {data.m}x{data.n}"
                )
            hidden[:, line] = True
            hidden[keep, line] = False
        else:
            raise ValueError(f"unknown structured mask '{mode}'; use rows or columns")
    return hidden.flatten().expand(count, -1).clone()


def patterns(model: MatrixBert, batch: Batch) -> torch.Tensor:
    """(layers, B, heads, T, T) attention patterns."""
    names = [act_name("pattern", l) for l in range(len(model.blocks))]
    with torch.no_grad():
        _, cache = model.run_with_cache(model.encode(batch.tokens), names=names)
    return torch.stack([cache[n] for n in names]).cpu()


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
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 256,
    lines: tuple[int, ...] = (),
    keep: Annotated[int, at_least(0)] = 0,
    head_threshold: Annotated[float, between(0, 1)] = 0.4,
) -> Result:
    """Maps and masses at the chosen checkpoints; row/column masses at every checkpoint.
    `lines`: rows (columns) hidden by the structured masks; default every other one, 1, 3, ..."""
    data = dataclasses.replace(inputs.data, clip=True)
    lines = lines or tuple(range(1, min(data.m, data.n), 2))
    random = seeded_batch(data, n, seed)
    batches = {"random": random}
    for mode in ("rows", "columns"):
        batches[mode] = make_batch(
            random.matrix, structured_mask(data, n, mode, lines, keep), clip=True
        )
    numbers: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "lines": list(lines),
        "keep": keep,
        "head_threshold": head_threshold,
        "chance": {
            "row": (data.n - 1) / (data.m * data.n),
            "column": (data.m - 1) / (data.m * data.n),
            "observed": 1 - data.p_mask,
        },
        "steps": {},
    }
    maps, random_masses = {}, {}
    for step, model in inputs.models.items():
        entry = {}
        for mode, batch in batches.items():
            pats = patterns(model, batch)
            maps[(mode, step)] = pats.mean(dim=1)  # (L, H, T, T)
            masses = head_masses(pats, batch.mask, data.m, data.n)
            entry[mode] = {k: v.tolist() for k, v in masses.items()}
            if mode == "random":
                random_masses[step] = masses
                entry.update(classify(masses, head_threshold))
        numbers["steps"][step] = entry
    numbers["across"] = {}
    for step, model in inputs.all_checkpoints().items():
        if step not in random_masses:
            random_masses[step] = head_masses(patterns(model, random), random.mask, data.m, data.n)
        numbers["across"][step] = {
            k: random_masses[step][k].tolist() for k in ("row", "column", "observed")
        }
    return Result(numbers, {"maps": maps, "grid": (data.m, data.n)})


def plot(result: Result, out: Path) -> list[Path]:
    grid = result.figure_data["grid"]
    paths = [
        _plot_map(maps, mode, step, grid, out)
        for (mode, step), maps in result.figure_data["maps"].items()
    ]
    if result.numbers["across"]:
        paths.append(_plot_across(result.numbers, out))
    return paths


def _plot_map(maps: torch.Tensor, mode: str, step: int, grid: tuple[int, int], out: Path) -> Path:
    """(layers, heads, T, T) mean patterns as one mosaic, a panel per head (query down, key
    across), drawn as a single image: one axes instead of layers x heads keeps a 16-panel map
    well under a second. Positions are row-major, so each matrix row is a block of n positions;
    thin lines mark where each row starts."""
    layers, heads, t, _ = maps.shape
    m, n = grid
    gap = max(1, t // 12)
    cell = t + gap
    mosaic = np.full((layers * cell - gap, heads * cell - gap), np.nan)
    for l in range(layers):
        for h in range(heads):
            mosaic[l * cell : l * cell + t, h * cell : h * cell + t] = maps[l, h].numpy()
    path = out / f"maps_{mode}_step{step}.png"
    vmax = float(maps.max())
    title = (
        f"attention, {mode} masks, step {step}: each panel query (down) x key (across),\n"
        f"positions row-major, lines where matrix rows start; colour 0 to {vmax:.2f}"
    )
    size = (1.0 + 1.5 * heads, 1.0 + 1.5 * layers)
    with figure(path, title=title, figsize=size, dpi=100) as (fig, axes):
        ax = axes[0][0]
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        starts = [o * cell + r * n - 0.5 for o in range(max(layers, heads)) for r in range(1, m)]
        height, width = mosaic.shape
        for lines, extent, across in ((ax.vlines, width, height), (ax.hlines, height, width)):
            at = [s for s in starts if s < extent]
            lines(at, -0.5, across - 0.5, colors="white", linewidths=0.3, alpha=0.5)
        ax.set_xticks(
            [h * cell + (t - 1) / 2 for h in range(heads)],
            [f"head {h}" for h in range(heads)],
            fontsize=8,
        )
        ax.set_yticks(
            [l * cell + (t - 1) / 2 for l in range(layers)],
            [f"layer {l}" for l in range(layers)],
            fontsize=8,
        )
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    return path


def _plot_across(numbers: dict[str, Any], out: Path) -> Path:
    steps = sorted(numbers["across"], key=int)
    row = torch.tensor([numbers["across"][s]["row"] for s in steps])  # (S, L, H)
    col = torch.tensor([numbers["across"][s]["column"] for s in steps])
    layers, heads = row.shape[1:]
    xs = [max(int(s), 1) for s in steps]
    path = out / "masses_across_training.png"
    with figure(path, 1, layers, figsize=(3.6 * layers, 3.2), dpi=100) as (fig, axes):
        for l in range(layers):
            ax = axes[0][l]
            for h in range(heads):
                ax.plot(xs, row[:, l, h], color=plt.cm.tab10(h % 10), lw=1.2, label=f"h{h} row")
                ax.plot(
                    xs,
                    col[:, l, h],
                    color=plt.cm.tab10(h % 10),
                    lw=1.2,
                    ls="--",
                    label=f"h{h} column",
                )
            ax.axhline(numbers["chance"]["row"], color="gray", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"layer {l}: row (solid) / column (dashed) mass", fontsize=8)
            ax.set_xlabel("step")
            ax.set_ylim(0, 1)
        axes[0][-1].legend(fontsize=6, ncol=2)
    return path


def render(r: dict[str, Any]) -> list[Table | Text]:
    out: list[Table | Text] = [
        Text(
            f"Chance masses: row {r['chance']['row']:.3f}, column {r['chance']['column']:.3f}, "
            f"observed {r['chance']['observed']:.2f}. "
            f"A head with mass ≥ {r['head_threshold']} on the query's row (column) is listed as a "
            "row (column) head."
        )
    ]
    rows = []
    for step, e in r["steps"].items():
        masses = e["random"]
        for l, (row_l, col_l, obs_l) in enumerate(
            zip(masses["row"], masses["column"], masses["observed"])
        ):
            for h in range(len(row_l)):
                rows.append(
                    [
                        step,
                        f"{l}:{h}",
                        row_l[h],
                        col_l[h],
                        obs_l[h],
                        masses["row_hidden"][l][h],
                        masses["column_hidden"][l][h],
                    ]
                )
        out.append(
            Text(
                f"Step {step}: row heads {', '.join(e['row_heads']) or 'none'}; "
                f"column heads {', '.join(e['column_heads']) or 'none'}."
            )
        )
    out.append(
        Table(
            [
                "step",
                "layer:head",
                "row mass",
                "column mass",
                "observed mass",
                "row (hidden q)",
                "column (hidden q)",
            ],
            rows,
        )
    )
    return out
