"""Activation patching through nnsight: the number `abrupt analyze RUN --only patching` reports
for one head (its per-head table, hidden and observed entries), computed again by tracing the model
with nnsight instead of abrupt's hooks.

    abrupt analyze RUN --only patching --steps STEP   # RUN/analysis/patching/results.json
    python examples/nnsight_patching.py RUN --step STEP --layer 1 --head 0

It patches the analysis's own matrices: the sample size n and seed its results.json records
(`--quick` makes n smaller), unless --n/--seed say otherwise; then, or when the analysis patched
only some positions, the output says the two numbers are not comparable ("comparable": false,
and a line on standard error naming both settings).

Needs `pip install 'abrupt[nnsight]'`. docs/hooks.md explains it; tests/test_examples.py runs it
and holds it to the analysis.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from nnsight import NNsight

from abrupt.data import make_batch, seeded_batch
from abrupt.models.registry import supports
from abrupt.run.checkpoints import load_run
from abrupt.run.rundir import read_config


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


def analysis_results(run: Path) -> dict | None:
    """RUN/analysis/patching/results.json, if `abrupt analyze --only patching` has written it."""
    path = Path(run) / "analysis" / "patching" / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def reported(results: dict | None, step: int, layer: int, head: int) -> dict | None:
    """The same head's numbers as the analysis wrote them, with the settings they were measured
    at (n, seed, positions); None where it has no such step."""
    entry = results["steps"].get(str(step)) if results else None
    if entry is None:
        return None
    return {
        **{k: results[k] for k in ("n", "seed", "positions")},
        **{
            f"recovery_{where}": entry[f"per_head_recovery_{where}"][layer][head]
            for where in ("hidden", "observed")
        },
    }


def unlike(ours: dict, theirs: dict) -> str | None:
    """Why the two recoveries are not the same measurement, or None when they are."""
    if theirs["positions"] != "all":  # this example patches every position
        return f"abrupt analyze patched positions={theirs['positions']}, this example all"
    if (ours["n"], ours["seed"]) != (theirs["n"], theirs["seed"]):
        return (
            f"nnsight at n {ours['n']} seed {ours['seed']}, abrupt analyze at n {theirs['n']} "
            f"seed {theirs['seed']}; leave out --n and --seed to use the analysis's"
        )
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--step", type=int, help="checkpoint step (default: the last)")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--head", type=int, default=0)
    p.add_argument("--n", type=int, help="matrices (default: the analysis's n, else 256)")
    p.add_argument("--seed", type=int, help="their seed (default: the analysis's, else 0)")
    a = p.parse_args()
    cfg = read_config(a.run)
    if cfg.task.name != "matrix" or not supports(cfg.model.arch, "scalar_readout"):
        # this example patches the paper's -X run; `abrupt analyze RUN --only patching` serves
        # every task (its corrupted run is the task's own)
        sys.exit(
            f"nnsight_patching.py: {a.run} is a {cfg.task.name} run of model.arch="
            f"{cfg.model.arch}; this example needs a BERT matrix run (e.g. runs/small)"
        )
    if not (0 <= a.layer < cfg.model.layers and 0 <= a.head < cfg.model.heads):
        sys.exit(
            f"nnsight_patching.py: head {a.layer}:{a.head} outside the model's "
            f"{cfg.model.layers} layers x {cfg.model.heads} heads"
        )
    results = analysis_results(a.run)
    measured = results or {"n": 256, "seed": 0}  # the analysis's defaults, where it has not run
    n = measured["n"] if a.n is None else a.n
    seed = measured["seed"] if a.seed is None else a.seed
    ours = {**patch_head(a.run, a.step, a.layer, a.head, n, seed), "n": n, "seed": seed}
    theirs = reported(results, ours["step"], a.layer, a.head)
    why = unlike(ours, theirs) if theirs else None
    if why:
        print(f"not comparable: {why}", file=sys.stderr)
    comparable = theirs is not None and why is None
    print(json.dumps({"nnsight": ours, "abrupt analyze": theirs, "comparable": comparable}))


if __name__ == "__main__":
    main()
