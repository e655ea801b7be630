"""Sweep overhead: the same one-thread trials one after another in this process, on the local pool
(2 workers) and on a local Ray cluster. Prints wall times and ratios against the sequential run.

    python benchmarks/sweep_overhead.py [--trials 4] [--steps 300] [--preset tiny] [--ray]

On an otherwise idle 2-core machine the pool should approach 2x for one-thread trials; the
per-trial training time inside a sweep against the same trial trained directly shows that the
runner adds nothing to training speed.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from abrupt.sweep.runner import Sweep, config_of, spec_from_args
from abrupt.train.trainer import train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--ray", action="store_true", help="also the Ray backend (needs abrupt[ray])")
    args = p.parse_args()
    items = [f"seed={','.join(map(str, range(args.trials)))}", f"train.steps={args.steps}"]
    spec = spec_from_args(args.preset, items)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        direct = []
        for s in range(args.trials):
            t = time.perf_counter()
            train(
                config_of(args.preset, {"seed": str(s), "train.steps": str(args.steps)}),
                tmp / f"seq{s}",
                verbose=False,
            )
            direct.append(time.perf_counter() - t)
        sequential = time.perf_counter() - t0
        print(f"{args.trials} trials of {args.preset}, {args.steps} steps, one thread each")
        print(
            f"sequential, in process : {sequential:7.1f} s  (per trial "
            f"{sum(direct) / len(direct):.2f} s)"
        )
        backends = ["local"] + (["ray"] if args.ray else [])
        for backend in backends:
            sweep = Sweep.create(tmp / backend, spec, threads=1)
            t0 = time.perf_counter()
            rows = sweep.run(backend, workers=2, verbose=False)
            wall = time.perf_counter() - t0
            per_trial = sum(r["seconds"] for r in rows.values()) / len(rows)
            print(
                f"{backend:6s} backend, 2 workers: {wall:7.1f} s  speed-up "
                f"{sequential / wall:4.2f}x;  "
                f"per trial {per_trial:.2f} s = {per_trial / (sum(direct) / len(direct)):.2f}x "
                "the direct trial "
                "(process start and imports included)"
            )


if __name__ == "__main__":
    main()
