"""Activation patching through nnsight: the number `abrupt analyze RUN --only patching` reports
for one head (its per-head table, hidden and observed entries), computed again by tracing the model
with nnsight instead of abrupt's hooks.

    abrupt analyze RUN --only patching --steps STEP   # RUN/analysis/patching/results.json
    python examples/nnsight_patching.py RUN --step STEP --layer 1 --head 0

Needs `pip install 'abrupt[nnsight]'`. docs/hooks.md explains it; tests/test_examples.py runs it
and holds it to the analysis.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from nnsight import NNsight

from abrupt.data import make_batch, seeded_batch
from abrupt.run.checkpoints import load_run


def patch_head(run: Path, step: int | None, layer: int, head: int, n: int = 256, seed: int = 0):
    """Recovery when head `head` of layer `layer` gets its clean output in the run on -X: the
    fraction of the way from the corrupted prediction to the clean one, at hidden and at observed
    entries (`abrupt.analysis.patching`, options n and seed; every position patched)."""
    cfg, model, ckpt = load_run(run, step)
    # the analysis's matrices: n seeded ones at the run's full size, and -X under the same mask
    batch = seeded_batch(dataclasses.replace(cfg.data, sizes=""), n, seed)
    corrupt = make_batch(-batch.matrix, batch.mask, clip=True)
    traced = NNsight(model)
    z_out = traced.blocks[layer].attn.hook_z  # per-head outputs (B, T, H, dh), before attn.o
    with torch.no_grad():
        with traced.trace(batch.tokens):
            clean_z = z_out.output.save()
            clean = traced.output.save()  # predictions (B, T)
        with traced.trace(corrupt.tokens):
            base = traced.output.save()
        with traced.trace(corrupt.tokens):
            z_out.output[:, :, head] = clean_z[:, :, head]  # the intervention: one head's output
            patched = traced.output.save()

    def recovery(where: torch.Tensor) -> float:
        d = (clean - base)[where]
        return (((patched - base)[where] * d).sum() / (d * d).sum()).item()

    return {
        "step": ckpt.step,
        "layer": layer,
        "head": head,
        "recovery_hidden": recovery(batch.mask),
        "recovery_observed": recovery(~batch.mask),
    }


def reported(run: Path, step: int, layer: int, head: int) -> dict[str, float] | None:
    """The same head's numbers as `abrupt analyze --only patching` wrote them, if it has."""
    path = Path(run) / "analysis" / "patching" / "results.json"
    entry = json.loads(path.read_text())["steps"].get(str(step)) if path.exists() else None
    if entry is None:
        return None
    return {
        f"recovery_{where}": entry[f"per_head_recovery_{where}"][layer][head]
        for where in ("hidden", "observed")
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--step", type=int, help="checkpoint step (default: the last)")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--head", type=int, default=0)
    p.add_argument("--n", type=int, default=256, help="matrices (the analysis's patching.n)")
    p.add_argument("--seed", type=int, default=0, help="their seed (patching.seed)")
    a = p.parse_args()
    ours = patch_head(a.run, a.step, a.layer, a.head, a.n, a.seed)
    theirs = reported(a.run, ours["step"], a.layer, a.head)
    print(json.dumps({"nnsight": ours, "abrupt analyze": theirs}))


if __name__ == "__main__":
    main()
