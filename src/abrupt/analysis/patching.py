"""Activation patching (Sec. 3 item 7): clean X against corrupted -X under the same mask.

The corrupted run gets the clean run's per-head attention outputs (`hook_z`, before the output
projection) at the chosen layers, heads and positions. Recovery is measured per entry as the
fraction of the way the output moves from the corrupted prediction toward the clean one,
    f = <p_patched - p_corrupt, p_clean - p_corrupt> / ||p_clean - p_corrupt||^2,
reported at hidden and at observed entries (1: the clean output, 0: unchanged), with the
distances of the patched output to X and to -X. A layer x head table patches each head alone.

The clean and corrupted passes are run once per checkpoint (the command's shared forward passes,
analysis/cache.py), and a patched pass starts at the first patched layer from the corrupted
run's residual stream (`MatrixBert.run_from`). The numbers equal `patch`'s, which reruns all
three passes (a test holds them bit for bit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import Config
from ..data import Batch, make_batch, sample_batch
from ..hooks import act_name, mode
from ..models.bert import MatrixBert
from .common import (
    Count,
    Inputs,
    Result,
    Seed,
    Table,
    Text,
    bert_only,
    group_by_layer,
    needs_hidden,
    parse_heads,
    plot_head_tables,
)

TITLE = "Activation patching"
PAPER = (
    "Writing clean attention-head outputs into the run on -X moves the output toward X: the "
    "attention heads carry the information that completes the matrix."
)
ORDER = 50
NEEDS = frozenset({"regions", "corrupt", "matrices"})  # task capabilities (tasks/base.py)


def negated(batch: Batch) -> Batch:
    return make_batch(-batch.matrix, batch.mask, clip=True)


def position_selector(spec: str, batch: Batch) -> torch.Tensor:
    """(B, T) bool: 'all', 'hidden', 'observed' (per example) or comma-separated position
    indices."""
    if spec == "all":
        return torch.ones_like(batch.mask)
    if spec == "hidden":
        return batch.mask.clone()
    if spec == "observed":
        return ~batch.mask
    try:
        idx = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"positions '{spec}': use all, hidden, observed or indices like 0,8,16"
        ) from None
    t = batch.tokens.shape[1]
    if any(not 0 <= i < t for i in idx):
        raise ValueError(f"positions '{spec}': indices must be in [0, {t})")
    sel = torch.zeros_like(batch.mask)
    sel[:, idx] = True
    return sel


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
    d = (clean - corrupt)[sel]
    return (((patched - corrupt)[sel] * d).sum() / (d * d).sum().clamp_min(1e-12)).item()


def patch(
    model: MatrixBert,
    batch: Batch,
    heads: Sequence[tuple[int, int]],
    positions: torch.Tensor | None = None,
) -> dict[str, float]:
    """Patch clean hook_z of `heads` into the -X run at `positions` ((B, T) bool, default all)."""
    positions = torch.ones_like(batch.mask) if positions is None else positions
    corrupt_batch = negated(batch)
    names = [act_name("z", l) for l in range(len(model.blocks))]
    with torch.no_grad():
        clean, cache = model.run_with_cache(batch.tokens, names=names)
        corrupt = model(corrupt_batch.tokens)
        clean_z = {l: cache[names[l]] for l in range(len(names))}
        with model.hooks(patch_hooks(clean_z, heads, positions)):
            patched = model(corrupt_batch.tokens)
    return scores(patched.cpu(), clean.cpu(), corrupt.cpu(), batch)


def scores(
    patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor, batch: Batch
) -> dict[str, float]:
    """Recovery and distances of the patched predictions (B, T) on `batch`'s entries."""
    x = batch.target
    hidden = batch.mask
    return {
        "recovery_hidden": recovery(patched, clean, corrupt, hidden),
        "recovery_observed": recovery(patched, clean, corrupt, ~hidden),
        "mse_to_X_hidden": ((patched - x)[hidden] ** 2).mean().item(),
        "mse_to_minus_X_hidden": ((patched + x)[hidden] ** 2).mean().item(),
        "mse_to_X_observed": ((patched - x)[~hidden] ** 2).mean().item(),
        "mse_to_minus_X_observed": ((patched + x)[~hidden] ** 2).mean().item(),
    }


def patch_from_streams(
    model: MatrixBert,
    batch: Batch,
    clean: dict[str, torch.Tensor],
    corrupt: dict[str, torch.Tensor],
    heads: Sequence[tuple[int, int]],
    positions: torch.Tensor,
) -> dict[str, float]:
    """`patch`, from the cached "stream" passes of the clean and the corrupted batch."""
    first = min(l for l, _ in heads)
    clean_z = {l: clean[act_name("z", l)] for l in range(len(model.blocks))}
    # one pass over the whole batch, as `patch` makes: the hooks index it whole
    with torch.no_grad(), mode(model), model.hooks(patch_hooks(clean_z, heads, positions)):
        patched = model.run_from(first, corrupt[act_name("resid_pre", first)])
    out = act_name("out")
    return scores(patched.cpu(), clean[out].cpu(), corrupt[out].cpu(), batch)


def check(options: dict[str, Any], cfg: Config) -> None:
    parse_heads(options.get("heads", "all"), cfg.model.layers, cfg.model.heads)
    position_selector(
        options.get("positions", "all"), sample_batch(cfg.data, 1, torch.Generator().manual_seed(0))
    )


def unsupported(cfg: Config) -> str | None:
    return bert_only(cfg) or needs_hidden(cfg)


def run(
    inputs: Inputs, seed: Seed = 0, n: Count = 256, heads: str = "all", positions: str = "all"
) -> Result:
    """`heads`: 'all' or 'L:H,...' ('*' wildcards) patched together; `positions`: 'all', 'hidden',
    'observed' or comma-separated indices. The per-head table always patches each head alone."""
    batch = inputs.batch(n, seed)
    corrupt_batch = negated(batch)
    numbers: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "heads": heads,
        "positions": positions,
        "steps": {},
    }
    pos = position_selector(positions, batch)
    for step, model in inputs.models.items():
        layers, nheads = len(model.blocks), model.cfg.heads
        clean = inputs.activations(step, batch)
        corrupt = inputs.activations(step, corrupt_batch)

        def measure(hs, model=model, clean=clean, corrupt=corrupt):
            return patch_from_streams(model, batch, clean, corrupt, hs, pos)

        table_hidden = [[0.0] * nheads for _ in range(layers)]
        table_observed = [[0.0] * nheads for _ in range(layers)]
        for l in range(layers):
            for h in range(nheads):
                r = measure([(l, h)])
                table_hidden[l][h] = r["recovery_hidden"]
                table_observed[l][h] = r["recovery_observed"]
        numbers["steps"][step] = {
            "chosen": measure(parse_heads(heads, layers, nheads)),
            "per_head_recovery_hidden": table_hidden,
            "per_head_recovery_observed": table_observed,
        }
    return Result(numbers)


def plot(result: Result, out: Path) -> list[Path]:
    tables = {}
    for step, entry in result.numbers["steps"].items():
        tables[f"step {step}: hidden entries"] = entry["per_head_recovery_hidden"]
        tables[f"step {step}: observed entries"] = entry["per_head_recovery_observed"]
    return [
        plot_head_tables(
            tables,
            out / "patching_per_head.png",
            "fraction of the way from the -X output to the X output when one head's clean output "
            "is patched in",
            center=0.0,
        )
    ]


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = []
    for step, e in r["steps"].items():
        c = e["chosen"]
        best = max(
            (
                (v, f"{l}:{h}")
                for l, row in enumerate(e["per_head_recovery_hidden"])
                for h, v in enumerate(row)
            )
        )
        rows.append(
            [
                step,
                r["heads"],
                r["positions"],
                c["recovery_hidden"],
                c["recovery_observed"],
                c["mse_to_X_hidden"],
                c["mse_to_minus_X_hidden"],
                f"{best[1]} ({best[0]:.3f})",
            ]
        )
    return [
        Table(
            [
                "step",
                "heads patched",
                "positions",
                "recovery (hidden)",
                "recovery (observed)",
                "MSE to X (hidden)",
                "MSE to −X (hidden)",
                "best single head (hidden)",
            ],
            rows,
        )
    ]
