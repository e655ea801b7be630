"""Cost of logging the progress measures: the same run with train.progress off and on, alternated,
in one process. Prints seconds per run and the ratio on/off (target: at most 1.05 on `cpu`).

    python benchmarks/progress_overhead.py [--preset cpu] [--steps 400] [--repeats 2] [--threads 1]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from abrupt.config import apply_overrides, preset
from abrupt.train import train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seconds = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for on in (False, True):
                cfg = apply_overrides(preset(args.preset), [f"train.steps={args.steps}", f"train.progress={str(on).lower()}",
                                                            "train.ckpt_every=100000", "train.ckpt_log_points=0"])
                t0 = time.perf_counter()
                train(cfg, Path(tmp) / f"{i}-{on}", progress=False)
                seconds[on].append(time.perf_counter() - t0)
    off, on = min(seconds[False]), min(seconds[True])
    log_every = preset(args.preset).train.log_every
    print(f"{args.preset}, {args.steps} steps, log every {log_every}, {args.threads} thread(s): "
          f"progress off {off:.2f} s, on {on:.2f} s (best of {args.repeats}); ratio on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
