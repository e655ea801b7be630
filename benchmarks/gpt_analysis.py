"""Speed of the GPT variant's analyses: greedy completion with the key/value cache against the
original path that reruns the whole sequence and the full-vocabulary head for every token.

In one process, alternated, on seeded random models whose weights are spread (std 0.3 added:
logits far apart, so that no near-tie lets rounding flip a greedy choice; decoding costs the same
whatever the weights): (a) `predict` on --n matrices, both paths, best of --repeats, and a check
that they
write the same values; (b) the analyses that complete matrices greedily (copying, ablation,
switching) on --n matrices with each path; (c) with --defaults, those analyses at their default
sizes with the cache only (the issue measured 278 s, 793 s and > 15 min without it on `tiny`).

    python benchmarks/gpt_analysis.py [--preset tiny] [--n 32] [--repeats 3] [--threads 1]
    [--defaults]
"""

import argparse
import contextlib
import time

import torch

from abrupt.analysis import ablation, copying, switching
from abrupt.analysis.common import Inputs
from abrupt.config import apply_overrides, preset
from abrupt.data import seeded_batch
from abrupt.models.gpt import MatrixGPT
from abrupt.models.registry import build_model

ANALYSES = {"copying": copying, "ablation": ablation, "switching": switching}


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def spread(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


@contextlib.contextmanager
def with_cache(cache: bool):
    """Every greedy completion inside uses the key/value cache, or does not."""
    original = MatrixGPT.complete
    MatrixGPT.complete = lambda self, tokens, cache_=True: original(self, tokens, cache)
    try:
        yield
    finally:
        MatrixGPT.complete = original


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--defaults",
        action="store_true",
        help="also time the analyses at their default sizes (cache only)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = apply_overrides(preset(args.preset), ["model.arch=gpt"])
    t = cfg.data.m * cfg.data.n
    models = {s: spread(build_model(cfg.model, t, seed=s).eval(), s) for s in (0, 1)}
    tokens = seeded_batch(cfg.data, args.n, 0).tokens
    print(
        f"{args.preset} GPT (width {cfg.model.width}, {cfg.model.layers} layers, "
        f"{cfg.data.m}x{cfg.data.n}), "
        f"{args.n} matrices, {args.threads} thread(s)",
        flush=True,
    )

    best = {True: float("inf"), False: float("inf")}
    out = {}
    for _ in range(args.repeats):
        for cache in (False, True):
            best[cache] = min(
                best[cache],
                seconds(lambda: out.__setitem__(cache, models[1].predict(tokens, cache=cache))),
            )
    same = torch.equal(out[True], out[False])
    print(
        f"predict: rerun {best[False]:.3f} s, cached {best[True]:.3f} s: "
        f"{best[False] / best[True]:.1f}x faster; "
        f"same values: {same}",
        flush=True,
    )

    inputs = Inputs(models, cfg.data)
    for name, mod in ANALYSES.items():
        took, numbers = {}, {}
        for cache in (False, True):
            with with_cache(cache):
                took[cache] = seconds(
                    lambda: numbers.__setitem__(cache, mod.run(inputs, n=args.n).numbers)
                )
        print(
            f"{name:9s} n={args.n}: rerun {took[False]:.2f} s, cached {took[True]:.2f} s: "
            f"{took[False] / took[True]:.1f}x faster; same numbers: "
            f"{numbers[True] == numbers[False]}",
            flush=True,
        )
    if args.defaults:
        for name, mod in ANALYSES.items():
            print(
                f"{name:9s} at its defaults, cached: {seconds(lambda: mod.run(inputs)):.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
