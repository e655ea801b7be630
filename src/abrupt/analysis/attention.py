"""Attention maps (Fig. 4, 5, 22, 23) and per-head numbers on the task's key groups.

For each layer and head: the query x key pattern averaged (as |pattern|) over the analyses' seeded
batch, at the chosen checkpoints, and per head the attention each key group (`Task.key_groups`)
receives, at the chosen checkpoints and at every checkpoint; a head whose number for a group
reaches `head_threshold` is listed as a head of that group.

On matrices (capability `matrices`; the paper's numbers): the groups are the query's own row and
own column (itself excluded); the maps and masses are also taken under structured masks (chosen
rows hidden but one entry, chosen columns hidden but one entry); per head the mean attention mass
on row, column, itself and observed keys, over every query and over hidden queries; row (column)
heads. The GPT variant's are over the masked matrix's positions.

On a sequence task: the group is each output query's correct keys (the keys its answer needs),
and a head's number is the follow-up's attention progress for that head (`key_share`): the share
of its |attention| from the queries that have correct keys that falls on them (|pattern|, since
linear attention's are signed); "correct-key heads" reach the threshold. Chance: the share that
uniform attention over the keys a query reads (itself and earlier ones) would give.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from .. import tasks
from ..config import Config, DataConfig
from ..data import make_batch
from ..hooks import HookedModule, act_name
from ..plots import figure, plt
from ..progress import head_masses
from ..tasks.base import TaskBatch
from ..tasks.sequence import key_share
from .cache import run_chunked
from .common import Count, Inputs, Result, Seed, Table, Text, at_least, between, number

TITLE = "Attention maps (Fig. 4, 5)"
PAPER = (
    "After the drop some heads attend to the query's row (e.g. layer 2 head 1) or column "
    "(layer 2 head 2) and to observed entries; before it the patterns are trivial (Fig. 4, 5). "
    "On sequence tasks the follow-up (Gopalani & Hu, 2025) finds attention to the correct keys "
    "rising before the loss drops."
)
ORDER = 20
# task capabilities (tasks/base.py); `matrices` where provided: the structured masks and masses
NEEDS = frozenset({"key_groups"})


def _matrices(cfg: Config) -> bool:
    return "matrices" in tasks.get(cfg.task.name).provides(cfg)


def unsupported(cfg: Config) -> str | None:
    return (
        "a row/column analysis needs at least a 2x2 matrix"
        if _matrices(cfg) and min(cfg.data.m, cfg.data.n) < 2
        else None
    )


def check(options: dict[str, Any], cfg: Config) -> None:
    if not _matrices(cfg):
        if options.get("lines") or options.get("keep"):
            raise ValueError("lines and keep choose matrix rows and columns: matrices only")
        return
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


def patterns(
    inputs: Inputs, step: int, model: HookedModule, batch: TaskBatch, t: int | None
) -> torch.Tensor:
    """(layers, B, heads, t, t) attention patterns of the task's teacher-forced pass over its
    first `t` positions (the shared pass of the chosen checkpoints; a pass of its own for any
    other)."""
    chosen = inputs.models.get(step) is model
    acts = (
        inputs.activations(step, batch, "patterns")
        if chosen
        else run_chunked(inputs.task, model, batch, "patterns")
    )
    pats = [acts[act_name("pattern", l)][..., :t, :t] for l in range(len(model.blocks))]
    return torch.stack(pats).cpu()


def key_groups(inputs: Inputs, batch: TaskBatch, layers: int) -> list[dict[str, torch.Tensor]]:
    """Each layer's key groups {name: (B, T, T) bool}."""
    return [inputs.task.key_groups(inputs.cfg, batch, l, layers) for l in range(layers)]


def group_names(groups: list[dict[str, torch.Tensor]]) -> list[str]:
    return list(dict.fromkeys(name for g in groups for name in g))


def group_shares(
    pats: torch.Tensor, groups: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """{group: (layers, heads)} the share of each head's |attention| (patterns (L, B, H, T, T)),
    from the queries that have keys in the group, that falls on them (`key_share` of one head,
    averaged over the batch); NaN in a layer without that group."""
    layers, _, heads = pats.shape[:3]
    out = {}
    for name in group_names(groups):
        share = torch.full((layers, heads), math.nan)
        for l, by_name in enumerate(groups):
            if name not in by_name:
                continue
            keys = by_name[name]
            att = pats[l].abs().float() * keys.any(-1)[:, None, :, None]  # its queries only
            for h in range(heads):
                share[l, h] = key_share(att[:, h : h + 1], keys).mean()
        out[name] = share
    return out


def chance_shares(groups: list[dict[str, torch.Tensor]], causal: bool) -> dict[str, list]:
    """{group: per layer (None where undefined)} the share of uniform attention over the keys a
    query reads (itself and earlier ones in a `causal` model, every one otherwise) that falls on
    the group."""
    out: dict[str, list] = {}
    for name in group_names(groups):
        out[name] = []
        for by_name in groups:
            if name not in by_name:
                out[name].append(None)
                continue
            keys = by_name[name]
            t = keys.shape[-1]
            read = torch.ones(t, t).tril() if causal else torch.ones(t, t)
            read = read / read.sum(-1, keepdim=True)  # each query's attention sums to 1
            uniform = read[None, None] * keys.any(-1)[:, None, :, None]  # (B, 1, T, T)
            out[name].append(key_share(uniform, keys).mean().item())
    return out


def classify(
    masses: dict[str, torch.Tensor], threshold: float, groups: tuple[str, ...] = ("row", "column")
) -> dict[str, list[str]]:
    """{"<group>_heads": ["layer:head", ...]} of the heads whose number for a group reaches
    `threshold`."""
    found: dict[str, list[str]] = {f"{g}_heads": [] for g in groups}
    for g in groups:
        layers, heads = masses[g].shape
        for l in range(layers):
            for h in range(heads):
                if masses[g][l, h] >= threshold:
                    found[f"{g}_heads"].append(f"{l}:{h}")
    return found


def _table(x: torch.Tensor) -> list[list[float | None]]:
    """A (layers, heads) tensor as JSON rows, NaN (no such group in a layer) as None."""
    return [[None if math.isnan(v) else v for v in row] for row in x.tolist()]


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 256,
    lines: tuple[int, ...] = (),
    keep: Annotated[int, at_least(0)] = 0,
    head_threshold: Annotated[float, between(0, 1)] = 0.4,
) -> Result:
    """Maps and per-head numbers at the chosen checkpoints; the key groups' numbers at every
    checkpoint. Matrices only: `lines`, the rows (columns) hidden by the structured masks
    (default every other one, 1, 3, ...), and `keep`, the entry each keeps."""
    if _matrices(inputs.cfg):
        return _run_matrices(inputs, seed, n, lines, keep, head_threshold)
    batch = inputs.batch(n, seed)
    layers = len(next(iter(inputs.models.values())).blocks)
    groups = key_groups(inputs, batch, layers)
    names = group_names(groups)
    t = next((k.shape[-1] for g in groups for k in g.values()), None)  # None: the whole pass
    numbers: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "head_threshold": head_threshold,
        "groups": names,
        "chance": chance_shares(groups, next(iter(inputs.models.values())).causal),
        "steps": {},
        "across": {},
    }
    maps, shares = {}, {}
    for step, model in inputs.all_checkpoints().items():
        pats = patterns(inputs, step, model, batch, t)
        shares[step] = group_shares(pats, groups)
        numbers["across"][step] = {g: _table(v) for g, v in shares[step].items()}
        if step in inputs.models:
            maps[("random", step)] = pats.abs().mean(dim=1)
            numbers["steps"][step] = {
                "random": numbers["across"][step],
                **classify(shares[step], head_threshold, tuple(names)),
            }
    return Result(numbers, {"maps": maps, "grid": None, "groups": names})


def _run_matrices(
    inputs: Inputs, seed: int, n: int, lines: tuple[int, ...], keep: int, head_threshold: float
) -> Result:
    """The paper's: masses on row, column, self and observed keys under random and structured
    masks (progress.head_masses)."""
    data = dataclasses.replace(inputs.data, clip=True)
    t = data.m * data.n
    lines = lines or tuple(range(1, min(data.m, data.n), 2))
    random = inputs.batch(n, seed, data)
    names = tuple(inputs.task.key_groups(inputs.cfg, random, 0, 1))  # row, column
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
            pats = patterns(inputs, step, model, batch, t)
            maps[(mode, step)] = pats.abs().mean(dim=1)  # (L, H, T, T)
            masses = head_masses(pats, batch.mask, data.m, data.n)
            entry[mode] = {k: v.tolist() for k, v in masses.items()}
            if mode == "random":
                random_masses[step] = masses
                entry.update(classify(masses, head_threshold, names))
        numbers["steps"][step] = entry
    numbers["across"] = {}
    for step, model in inputs.all_checkpoints().items():
        if step not in random_masses:
            pats = patterns(inputs, step, model, random, t)
            random_masses[step] = head_masses(pats, random.mask, data.m, data.n)
        numbers["across"][step] = {
            k: random_masses[step][k].tolist() for k in ("row", "column", "observed")
        }
    return Result(numbers, {"maps": maps, "grid": (data.m, data.n), "groups": list(names)})


def plot(result: Result, out: Path) -> list[Path]:
    grid = result.figure_data["grid"]
    paths = [
        _plot_map(maps, mode, step, grid, out)
        for (mode, step), maps in result.figure_data["maps"].items()
    ]
    if result.numbers["across"]:
        paths.append(_plot_across(result.numbers, result.figure_data["groups"], out))
    return paths


def _plot_map(
    maps: torch.Tensor, mode: str, step: int, grid: tuple[int, int] | None, out: Path
) -> Path:
    """(layers, heads, T, T) mean |patterns| as one mosaic, a panel per head (query down, key
    across), drawn as a single image: one axes instead of layers x heads keeps a 16-panel map
    well under a second. A matrix's positions are row-major (`grid` (m, n)), so each matrix row is
    a block of n positions; thin lines mark where each row starts. A sequence's are in order."""
    layers, heads, t, _ = maps.shape
    gap = max(1, t // 12)
    cell = t + gap
    mosaic = np.full((layers * cell - gap, heads * cell - gap), np.nan)
    for l in range(layers):
        for h in range(heads):
            mosaic[l * cell : l * cell + t, h * cell : h * cell + t] = maps[l, h].numpy()
    path = out / f"maps_{mode}_step{step}.png"
    vmax = float(maps.max())
    where = (
        f"{mode} masks, step {step}\npositions row-major, lines where matrix rows start"
        if grid
        else f"step {step}\npositions in sequence order"
    )
    title = (
        f"attention (mean |pattern|), {where}\n"
        f"each panel query (down) x key (across); colour 0 to {vmax:.2f}"
    )
    size = (max(5.0, 1.0 + 1.5 * heads), 1.0 + 1.5 * layers)  # room for the title
    with figure(path, title=title, figsize=size, dpi=100) as (fig, axes):
        ax = axes[0][0]
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        if grid:
            m, n = grid
            starts = [
                o * cell + r * n - 0.5 for o in range(max(layers, heads)) for r in range(1, m)
            ]
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


def _plot_across(numbers: dict[str, Any], groups: list[str], out: Path) -> Path:
    """Each head's number for each key group at every checkpoint, a panel per layer."""
    steps = sorted(numbers["across"], key=int)
    xs = [max(int(s), 1) for s in steps]
    styles = ("-", "--", ":", "-.")
    first = numbers["across"][steps[0]][groups[0]]
    layers, heads = len(first), len(first[0])
    path = out / "masses_across_training.png"
    what = " / ".join(f"{g} ({styles[i % 4]})" for i, g in enumerate(groups))
    with figure(path, 1, layers, figsize=(3.6 * layers, 3.2), dpi=100) as (fig, axes):
        for l in range(layers):
            ax = axes[0][l]
            for i, g in enumerate(groups):
                ys = np.array(
                    [
                        [np.nan if v is None else v for v in numbers["across"][s][g][l]]
                        for s in steps
                    ]
                )
                for h in range(heads):
                    ax.plot(
                        xs,
                        ys[:, h],
                        color=plt.cm.tab10(h % 10),
                        lw=1.2,
                        ls=styles[i % 4],
                        label=f"h{h} {g}",
                    )
                chance = numbers["chance"].get(g)
                chance = chance[l] if isinstance(chance, list) else chance
                if chance is not None:
                    ax.axhline(chance, color="gray", lw=0.6, ls=styles[i % 4])
            ax.set_xscale("log")
            ax.set_title(f"layer {l}: {what}; gray: chance", fontsize=8)
            ax.set_xlabel("step")
            ax.set_ylim(0, 1)
        axes[0][-1].legend(fontsize=6, ncol=2)
    return path


def render(r: dict[str, Any]) -> list[Table | Text]:
    return _render_matrices(r) if "lines" in r else _render_groups(r)


def _render_groups(r: dict[str, Any]) -> list[Table | Text]:
    """A task's key groups (a sequence task's correct keys): shares per head, at the chosen
    checkpoints and across every one."""
    groups = r["groups"]
    if not groups:
        return [Text("The task defines no key groups in any layer of this model.")]
    chance = "; ".join(
        f"{g}: "
        + ", ".join(f"layer {l} {v:.3f}" for l, v in enumerate(r["chance"][g]) if v is not None)
        for g in groups
    )
    out: list[Table | Text] = [
        Text(
            "Per head, the share of the |attention| of the queries that have keys in a group that "
            "falls on them (the follow-up's attention progress, head by head; a sequence task's "
            f"group `correct` is each output's correct keys). Chance (uniform attention over the "
            f"keys a query reads): {chance}. A head with share ≥ {r['head_threshold']} is listed "
            "as a head of the group (a correct-key head)."
        )
    ]
    rows = []
    for step, e in r["steps"].items():
        heads = "; ".join(f"{g}-key heads: {', '.join(e[f'{g}_heads']) or 'none'}" for g in groups)
        out.append(Text(f"Step {step}: {heads}."))
        first = e["random"][groups[0]]
        for l in range(len(first)):
            for h in range(len(first[l])):
                rows.append([int(step), f"{l}:{h}", *(e["random"][g][l][h] for g in groups)])
    out.append(Table(["step", "layer:head", *(f"{g} share" for g in groups)], rows))
    across = r["across"]
    steps = sorted(across, key=int)
    cols = [
        (g, l, h)
        for g in groups
        for l, row in enumerate(across[steps[0]][g])
        for h, v in enumerate(row)
        if v is not None
    ]
    out.append(
        Table(
            ["step", *(f"{g} {l}:{h}" for g, l, h in cols)],
            [[int(s), *(across[s][g][l][h] for g, l, h in cols)] for s in steps],
        )
    )
    return out


def _render_matrices(r: dict[str, Any]) -> list[Table | Text]:
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


def findings(r: dict[str, Any]) -> list[list[str]]:
    """The report's story rows ([question, this run, the literature, verdict]): where attention
    goes at the first and the last chosen checkpoint."""
    steps = list(r["steps"])
    if not steps:
        return []
    pre, post = r["steps"][steps[0]], r["steps"][steps[-1]]
    if "correct_heads" in post:
        best = [
            max(v for row in e["random"]["correct"] for v in row if v is not None)
            for e in (pre, post)
        ]
        chance = max(v for v in r["chance"]["correct"] if v is not None)
        return [
            [
                "does attention move to the correct keys",
                f"the best head's share on the correct keys {number(best[0])} at step "
                f"{steps[0]}, {number(best[1])} at step {steps[-1]} (chance {number(chance)}); "
                f"correct-key heads after: {', '.join(post['correct_heads']) or 'none'}",
                "attention to the correct keys is what is learnt (follow-up)",
                "agrees" if post["correct_heads"] else "differs",
            ]
        ]
    if "row_heads" not in post:
        return []
    return [
        [
            "row and column heads",
            f"at step {steps[-1]}: row heads {', '.join(post['row_heads']) or 'none'}, column "
            f"heads {', '.join(post['column_heads']) or 'none'} (at step {steps[0]}: "
            f"{len(pre['row_heads'])} and {len(pre['column_heads'])})",
            "after the drop some heads attend to the query's row or column (Fig. 4, 5)",
            "agrees" if post["row_heads"] and post["column_heads"] else "differs",
        ]
    ]
