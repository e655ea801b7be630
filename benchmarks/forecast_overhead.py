"""Cost of forecasting the escape during training (target: at most 5%).

(a) The same run with train.forecast off and on, alternated in one process (best of --repeats).
    On: the dense signal (the training batch's loss at every step, kept on the device and read
    back at log steps into signal.jsonl) and the forecast at every log.
(b) The forecast's cost grows with the history (it reads every row and every step's loss at each
    log): the time of one forecast on --rows rows logged every 50 steps and their dense signal (a
    synthetic plateau-then-escape curve), against the training time between two logs measured in
    (a): the worst-case share at that run length.

    python benchmarks/forecast_overhead.py [--preset mws] [--steps 400] [--repeats 3] [--rows 400]
"""

import argparse
import math
import random
import time

import torch
from onoff import time_off_on

from abrupt.config import preset
from abrupt.dynamics.forecast import forecast


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="mws")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--rows",
        type=int,
        default=400,
        help="history length for (b): 400 rows = 20 000 steps at log_every 50 (the cpu presets)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    off, on = time_off_on(args.preset, "forecast", args.steps, args.repeats)
    log_every = preset(args.preset).train.log_every
    print(
        f"(a) {args.preset}, {args.steps} steps, log every {log_every}: forecast off {off:.2f} s, "
        f"on {on:.2f} s (best of {args.repeats}); ratio on/off {on / off:.3f}"
    )
    rng = random.Random(0)
    steps = list(range(1, 50 * args.rows))

    def loss(t: int) -> float:
        return 0.2 * (1 - min(0.9, 0.2 * math.exp((t / 50 - 0.8 * args.rows) / 40)))

    dense = (steps, [loss(t) * (1 + 0.02 * rng.gauss(0, 1)) for t in steps])
    rows = [{"step": 50 * i, "eval_loss_mask": loss(50 * i)} for i in range(args.rows)]
    t0 = time.perf_counter()
    for _ in range(5):
        forecast(rows, dense=dense)
    per_call = (time.perf_counter() - t0) / 5
    between_logs = off / args.steps * log_every
    print(
        f"(b) one forecast on {args.rows} rows and {len(steps)} steps' losses: "
        f"{per_call * 1e3:.1f} ms; training between two logs ({args.preset}): "
        f"{between_logs * 1e3:.0f} ms; share {per_call / between_logs:.2%}"
    )


if __name__ == "__main__":
    main()
