"""Activation patching (Sec. 3 item 7): which head, and at which position, carries the answer.

The task's seeded batch runs clean and as its counterfactual (`Task.corrupt`): on matrices -X
under the same mask, as the paper; on a sequence task one input token resampled, the outputs
answered again. The corrupted run then gets the clean run's per-head attention outputs (`hook_z`,
before the output projection) at the chosen layers, heads and positions. Recovery, in each of the
task's regions (`Task.regions`: hidden and observed entries of a matrix, the output-predicting
positions of a sequence), is the fraction of the way the output moves from the corrupted run's
toward the clean one,
    f = <o_patched - o_corrupt, o_clean - o_corrupt> / ||o_clean - o_corrupt||^2,
the inner products summed over the region's positions and over the output at each (one value
per entry for the BERT, a vector of logits for a decoder): 1 is the clean output, 0 unchanged.
A decoder's runs are teacher-forced, each on its own outputs (the corrupted run reads its own
answers, and the GPT variant -X in its written half): what a position reads directly, not through
attention, stays corrupted, so recovery falls short of 1 where the model uses it.
A layer x head table patches each head alone at the chosen positions. Where every position plays
one role in every example (a sequence task: inputs, separator, outputs), a layer x head x
position table patches each head alone at one position; a last-layer head's recoveries at its
positions then sum to its recovery at all of them (a query's output reads that head only at its
own position). On matrices (the `matrices` capability) the patched output's entries
(`Task.entry_values`: the GPT variant's most likely values, teacher-forced) are also compared
with X and with -X by their MSE.

The clean and corrupted passes are run once per checkpoint (the command's shared forward passes,
analysis/cache.py), and a patched pass starts at the first patched layer from the corrupted
run's residual stream (`run_from`). The numbers equal `patch`'s, which reruns all three passes
(a test holds them bit for bit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import tasks
from ..config import Config
from ..hooks import HookedModule, act_name, mode
from ..plots import figure
from ..tasks.base import Task, TaskBatch
from .common import (
    Count,
    Inputs,
    Result,
    Seed,
    Table,
    Text,
    group_by_layer,
    needs_hidden,
    number,
    parse_heads,
    plot_head_tables,
)

TITLE = "Activation patching"
PAPER = (
    "Writing clean attention-head outputs into the run on -X moves the output toward X: the "
    "attention heads carry the information that completes the matrix."
)
ORDER = 50
NEEDS = frozenset({"regions", "corrupt"})  # task capabilities (tasks/base.py)


def corrupted(task: Task, cfg: Config, batch: TaskBatch, seed: int) -> TaskBatch:
    """The counterfactual of the batch drawn from `seed`: its draws come from `seed + 1`, since
    the same seed's first draw would be the clean batch itself."""
    return task.corrupt(cfg, batch, seed + 1)


def position_selector(spec: str, regions: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, P) bool over the positions of the pass: 'all', a region's name (its positions in each
    example) or comma-separated position indices."""
    first = next(iter(regions.values()))
    if spec == "all":
        return torch.ones_like(first)
    if spec in regions:
        return regions[spec].clone()
    try:
        idx = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"positions '{spec}': use all, {', '.join(regions)} or indices like 0,8,16"
        ) from None
    t = first.shape[1]
    if any(not 0 <= i < t for i in idx):
        raise ValueError(f"positions '{spec}': indices must be in [0, {t})")
    sel = torch.zeros_like(first)
    sel[:, idx] = True
    return sel


def shared_positions(regions: dict[str, torch.Tensor], selected: torch.Tensor) -> list[int]:
    """The positions selected in every example, where every region holds in every example or in
    none (each position plays one role: a sequence's); [] where a region varies by example (a
    matrix's hidden entries), so that a position has no one role."""
    if not all(bool((w.all(0) | ~w.any(0)).all()) for w in regions.values()):
        return []
    return selected.all(0).nonzero().flatten().tolist()


def patch_hooks(
    clean_z: dict[int, torch.Tensor], heads: Sequence[tuple[int, int]], positions: torch.Tensor
):
    """Forward hooks writing clean hook_z values of (layer, head) pairs where `positions` (B, T)
    holds."""
    hooks = []
    for layer, hs in group_by_layer(heads).items():

        def fn(z, point, layer=layer, hs=hs):
            sel = torch.zeros(z.shape[:3], dtype=torch.bool, device=z.device)
            sel[:, :, hs] = True
            sel &= positions.to(z.device)[:, :, None]
            return torch.where(sel[..., None], clean_z[layer], z)

        hooks.append((act_name("z", layer), fn))
    return hooks


def recovery(
    patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor, sel: torch.Tensor
) -> float:
    """f over the positions `sel` (B, P) of outputs (B, P) or (B, P, V), summed over both."""
    d = (clean - corrupt)[sel]
    return (((patched - corrupt)[sel] * d).sum() / (d * d).sum().clamp_min(1e-12)).item()


def scores(
    task: Task,
    cfg: Config,
    batch: TaskBatch,
    regions: dict[str, torch.Tensor],
    patched: torch.Tensor,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
) -> dict[str, float]:
    """Recovery in each region of the patched outputs (on the CPU), and on matrices the MSE of
    the patched entries to X and to -X at hidden and at observed entries."""
    out = {f"recovery_{k}": recovery(patched, clean, corrupt, w) for k, w in regions.items()}
    if "matrices" in task.provides(cfg):
        values, x, hidden = task.entry_values(cfg, patched), batch.target, batch.mask
        for name, where in (("hidden", hidden), ("observed", ~hidden)):
            out[f"mse_to_X_{name}"] = ((values - x)[where] ** 2).mean().item()
            out[f"mse_to_minus_X_{name}"] = ((values + x)[where] ** 2).mean().item()
    return out


def patch(
    task: Task,
    cfg: Config,
    model: HookedModule,
    batch: TaskBatch,
    heads: Sequence[tuple[int, int]],
    positions: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Patch clean hook_z of `heads` into the corrupted run (`corrupted` of `seed`) at
    `positions` ((B, P) bool, default all), rerunning all three passes whole."""
    regions = task.regions(cfg, batch)
    positions = torch.ones_like(next(iter(regions.values()))) if positions is None else positions
    names = [act_name("z", l) for l in range(len(model.blocks))]
    (tokens,), kwargs = task.inputs(model, batch)
    (bad,), bad_kwargs = task.inputs(model, corrupted(task, cfg, batch, seed))
    with torch.no_grad(), mode(model):
        clean, cache = model.run_with_cache(tokens, names=names, **kwargs)
        corrupt = model(bad, **bad_kwargs)
        clean_z = {l: cache[names[l]] for l in range(len(names))}
        with model.hooks(patch_hooks(clean_z, heads, positions)):
            patched = model(bad, **bad_kwargs)
    return scores(task, cfg, batch, regions, patched.cpu(), clean.cpu(), corrupt.cpu())


def patch_from_streams(
    task: Task,
    cfg: Config,
    model: HookedModule,
    batch: TaskBatch,
    regions: dict[str, torch.Tensor],
    clean: dict[str, torch.Tensor],
    corrupt: dict[str, torch.Tensor],
    forward: dict[str, Any],
    heads: Sequence[tuple[int, int]],
    positions: torch.Tensor,
) -> dict[str, float]:
    """`patch`, from the cached "stream" passes of the clean and the corrupted batch; `forward`:
    the corrupted pass's other inputs (`Task.inputs`: the BERT's pad, a decoder's keys)."""
    first = min(l for l, _ in heads)
    clean_z = {l: clean[act_name("z", l)] for l in range(len(model.blocks))}
    # one pass over the whole batch, as `patch` makes: the hooks index it whole
    with torch.no_grad(), mode(model), model.hooks(patch_hooks(clean_z, heads, positions)):
        patched = model.run_from(first, corrupt[act_name("resid_pre", first)], **forward)
    out = act_name("out")
    return scores(task, cfg, batch, regions, patched.cpu(), clean[out].cpu(), corrupt[out].cpu())


def _regions_of(cfg: Config) -> dict[str, torch.Tensor]:
    """The task's regions on one seeded example: their names and the pass's length."""
    task = tasks.get(cfg.task.name)
    return task.regions(cfg, task.seeded_batch(cfg, 1, 0))


def check(options: dict[str, Any], cfg: Config) -> None:
    parse_heads(options.get("heads", "all"), cfg.model.layers, cfg.model.heads)
    position_selector(options.get("positions", "all"), _regions_of(cfg))


def unsupported(cfg: Config) -> str | None:
    # a matrix run without hidden entries has no answer to carry
    return needs_hidden(cfg)


def run(
    inputs: Inputs, seed: Seed = 0, n: Count = 256, heads: str = "all", positions: str = "all"
) -> Result:
    """`heads`: 'all' or 'L:H,...' ('*' wildcards) patched together; `positions`: 'all', a region
    of the task (matrices: 'hidden', 'observed'; sequences: 'outputs') or comma-separated indices.
    The per-head table patches each head alone at those positions, the per-position table (where
    positions have one role) each head alone at each of them."""
    task, cfg = inputs.task, inputs.cfg
    batch = inputs.batch(n, seed)
    corrupt_batch = corrupted(task, cfg, batch, seed)
    regions = task.regions(cfg, batch)
    numbers: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "heads": heads,
        "positions": positions,
        "steps": {},
    }
    pos = position_selector(positions, regions)
    each = shared_positions(regions, pos)
    for step, model in inputs.models.items():
        layers, nheads = len(model.blocks), model.cfg.heads
        clean = inputs.activations(step, batch)
        corrupt = inputs.activations(step, corrupt_batch)
        forward = task.inputs(model, corrupt_batch)[1]

        def measure(hs, where=pos, model=model, clean=clean, corrupt=corrupt, forward=forward):
            return patch_from_streams(
                task, cfg, model, batch, regions, clean, corrupt, forward, hs, where
            )

        single = [[measure([(l, h)]) for h in range(nheads)] for l in range(layers)]
        entry: dict[str, Any] = {"chosen": measure(parse_heads(heads, layers, nheads))}
        for name in regions:
            entry[f"per_head_recovery_{name}"] = [
                [r[f"recovery_{name}"] for r in row] for row in single
            ]
        if each:
            entry["per_position"] = per_position(measure, regions, each, layers, nheads)
        numbers["steps"][step] = entry
    return Result(numbers)


def per_position(
    measure, regions: dict[str, torch.Tensor], each: list[int], layers: int, nheads: int
) -> dict[str, Any]:
    """{"positions": each, "roles": the regions each lies in, "recovery_<region>": (layers,
    heads, positions)} with each head patched alone at one position of `each` at a time."""
    out: dict[str, Any] = {
        "positions": each,
        "roles": [[k for k, w in regions.items() if bool(w[0, p])] for p in each],
    }
    tables = {name: [[[] for _ in range(nheads)] for _ in range(layers)] for name in regions}
    for p in each:
        at = torch.zeros_like(next(iter(regions.values())))
        at[:, p] = True
        for l in range(layers):
            for h in range(nheads):
                r = measure([(l, h)], at)
                for name in regions:
                    tables[name][l][h].append(r[f"recovery_{name}"])
    out.update({f"recovery_{name}": t for name, t in tables.items()})
    return out


def _regions(entry: dict[str, Any]) -> list[str]:
    """The region names of a step's numbers, in the order the task gives them."""
    return [k.removeprefix("recovery_") for k in entry["chosen"] if k.startswith("recovery_")]


def plot(result: Result, out: Path) -> list[Path]:
    tables = {}
    for step, entry in result.numbers["steps"].items():
        for name in _regions(entry):
            tables[f"step {step}: {name}"] = entry[f"per_head_recovery_{name}"]
    figures = [
        plot_head_tables(
            tables,
            out / "patching_per_head.png",
            "fraction of the way from the corrupted output to the clean one when one head's clean "
            "output is patched in",
            center=0.0,
        )
    ]
    steps = {
        s: e["per_position"] for s, e in result.numbers["steps"].items() if "per_position" in e
    }
    if steps:
        figures.append(_plot_positions(steps, out / "patching_per_position.png"))
    return figures


def _plot_positions(steps: dict[Any, dict[str, Any]], path: Path) -> Path:
    """One (layer:head) x position heatmap per checkpoint and region."""
    panels = [
        (
            f"step {s}: {key.removeprefix('recovery_')}",
            np.array(e[key], dtype=float),
            e["positions"],
        )
        for s, e in steps.items()
        for key in e
        if key.startswith("recovery_")
    ]
    rows = max(a.shape[0] * a.shape[1] for _, a, _ in panels)
    size = (1.5 + 0.22 * max(len(p) for *_, p in panels), 1.2 + (0.35 * rows + 0.8) * len(panels))
    title = "recovery when one head's clean output is patched in at one position"
    with figure(path, len(panels), 1, title=title, figsize=size) as (fig, axes):
        for ax, (name, arr, positions) in zip(axes[:, 0], panels):
            flat = arr.reshape(-1, arr.shape[-1])
            spread = max(float(np.nanmax(np.abs(flat))), 1e-12)
            im = ax.imshow(flat, aspect="auto", cmap="RdBu_r", vmin=-spread, vmax=spread)
            fig.colorbar(im, ax=ax, fraction=0.03)
            ax.set_yticks(range(flat.shape[0]))
            ax.set_yticklabels(
                [f"{l}:{h}" for l in range(arr.shape[0]) for h in range(arr.shape[1])]
            )
            ax.set_xticks(range(len(positions)))
            ax.set_xticklabels(positions, fontsize=6)
            ax.set_xlabel("position patched")
            ax.set_ylabel("layer:head")
            ax.set_title(name, fontsize=8)
    return path


def render(r: dict[str, Any]) -> list[Table | Text]:
    steps = r["steps"]
    regions = _regions(next(iter(steps.values())))
    first = regions[0]
    distances = "mse_to_X_hidden" in next(iter(steps.values()))["chosen"]
    rows = []
    for step, e in steps.items():
        c = e["chosen"]
        best = max(
            (v, f"{l}:{h}")
            for l, row in enumerate(e[f"per_head_recovery_{first}"])
            for h, v in enumerate(row)
        )
        row = [step, r["heads"], r["positions"], *(c[f"recovery_{k}"] for k in regions)]
        if distances:
            row += [c["mse_to_X_hidden"], c["mse_to_minus_X_hidden"]]
        rows.append([*row, f"{best[1]} ({best[0]:.3f})"])
    header = ["step", "heads patched", "positions", *(f"recovery ({k})" for k in regions)]
    if distances:
        header += ["MSE to X (hidden)", "MSE to −X (hidden)"]
    out: list[Table | Text] = [Table([*header, f"best single head ({first})"], rows)]
    return out + _render_positions(steps, first)


def _render_positions(steps: dict[str, Any], region: str) -> list[Table | Text]:
    """Per checkpoint and head: its per-position recoveries of `region` summed over the positions
    of each role, and the position where it recovers most."""
    rows = []
    roles: list[str] = []
    for step, e in steps.items():
        if "per_position" not in e:
            continue
        pp = e["per_position"]
        named = [", ".join(r) or "other" for r in pp["roles"]]
        roles = roles or list(dict.fromkeys(named))
        for l, row in enumerate(pp[f"recovery_{region}"]):
            for h, values in enumerate(row):
                sums = [sum(v for v, n in zip(values, named) if n == role) for role in roles]
                best = max(zip(values, pp["positions"]))
                rows.append([step, f"{l}:{h}", *sums, f"{best[1]} ({best[0]:.3f})"])
    if not rows:
        return []
    return [
        Text(
            f"Each head alone, patched at one position at a time: its recoveries of the {region} "
            "summed over the positions of each role ('other': positions in no region, e.g. the "
            "inputs), and the position where it recovers most. A last-layer head's sum over all "
            "positions is its recovery at all of them."
        ),
        Table(
            ["step", "head", *(f"at {r}" for r in roles), "best position"],
            rows,
        ),
    ]


def findings(r: dict[str, Any]) -> list[list[str]]:
    """The report's story rows ([question, this run, the literature, verdict]): which head, and
    which position, carries the answer at the last chosen checkpoint."""
    steps = r["steps"]
    step = list(steps)[-1]
    e = steps[step]
    first = _regions(e)[0]
    value, head = max(
        (v, f"{l}:{h}")
        for l, row in enumerate(e[f"per_head_recovery_{first}"])
        for h, v in enumerate(row)
    )
    where = ""
    if "per_position" in e:
        pp = e["per_position"]
        l, h = (int(x) for x in head.split(":"))
        values = pp[f"recovery_{first}"][l][h]
        best, at = max(zip(values, pp["positions"]))
        outside = sum(v for v, roles in zip(values, pp["roles"]) if first not in roles)
        where = (
            f"; by position its recovery is {number(outside)} outside the {first} positions, "
            f"at most {number(best)} at position {at}"
        )
    return [
        [
            f"which head carries the answer (step {step})",
            f"head {head}: patching its clean output recovers {number(value)} of the clean "
            f"output on {first}" + where,
            "the attention heads carry the information that completes the output (paper)",
            "agrees" if value > 0.5 else "differs",
        ]
    ]
