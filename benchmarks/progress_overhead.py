"""Cost of logging the progress measures: the same run with train.progress off and on, alternated,
in one process. Prints seconds per run and the ratio on/off (target: at most 1.05 on `cpu`).

    python benchmarks/progress_overhead.py [--preset cpu] [--steps 400] [--repeats 2] [--threads 1]
"""

import argparse

import torch
from onoff import time_off_on

from abrupt.config import preset


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    off, on = time_off_on(args.preset, "progress", args.steps, args.repeats)
    log_every = preset(args.preset).train.log_every
    print(
        f"{args.preset}, {args.steps} steps, log every {log_every}, {args.threads} thread(s): "
        f"progress off {off:.2f} s, on {on:.2f} s (best of {args.repeats}); ratio on/off "
        f"{on / off:.3f}"
    )


if __name__ == "__main__":
    main()
