"""Train the default preset (or another) and print the drop step, its wall time and the final
L_mask.

    python benchmarks/time_to_drop.py                      # default preset, seed 0
    python benchmarks/time_to_drop.py --preset small --threads 1     # the README's run
    python benchmarks/time_to_drop.py --preset cpu --seed 1 train.steps=30000

Training stops 1000 steps after L_mask first falls 10x below its plateau (train.stop_after_drop).
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

from abrupt.config import DEFAULT_PRESET, apply_overrides, preset
from abrupt.run.rundir import read_metrics
from abrupt.train.trainer import train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="keep the run here (default: a temporary folder)")
    p.add_argument(
        "--threads", type=int, help="torch threads (1 reproduces the README's small run)"
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    cfg.seed = args.seed
    apply_overrides(cfg, ["train.stop_after_drop=1000", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        summary = train(cfg, out, verbose=True)
        rows = read_metrics(out)
    drop = summary["drop_step"]
    drop_time = (
        next((r["time"] for r in rows if r["step"] == drop), None) if drop is not None else None
    )
    print(
        json.dumps(
            {
                "preset": args.preset,
                "seed": args.seed,
                "plateau_level": summary["plateau_level"],
                "drop_step": drop,
                "drop_seconds": drop_time,
                "final_level": summary["final_level"],
                "dropped_10x": summary["dropped"],
                "steps": summary["steps"],
                "seconds": round(summary["seconds"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
