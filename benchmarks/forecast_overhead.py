"""Cost of forecasting the escape during training (issue 19; target: under 2%).

(a) The same run with train.forecast off and on, alternated in one process (best of --repeats).
(b) The forecast's cost grows with the metrics history (it reads every row at each log): the time of
    one forecast on a history of --rows rows (a synthetic plateau-then-escape curve), against the
    training time between two logs measured in (a): the worst-case share at that run length.

    python benchmarks/forecast_overhead.py [--preset small] [--steps 300] [--repeats 2] [--rows
    1000]
"""

import argparse
import math
import time

import torch
from onoff import time_off_on

from abrupt.config import preset
from abrupt.dynamics.forecast import forecast


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--rows",
        type=int,
        default=1000,
        help="history length for (b): 1 000 rows = 50 000 steps at log_every 50",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    off, on = time_off_on(args.preset, "forecast", args.steps, args.repeats)
    log_every = preset(args.preset).train.log_every
    print(
        f"(a) {args.preset}, {args.steps} steps, log every {log_every}: forecast off {off:.2f} s, "
        f"on {on:.2f} s "
        f"(best of {args.repeats}); ratio on/off {on / off:.3f}"
    )
    rows = [
        {
            "step": 50 * i,
            "eval_loss_mask": 0.2 * (1 - min(0.9, 0.2 * math.exp((i - 0.8 * args.rows) / 40))),
        }
        for i in range(args.rows)
    ]
    t0 = time.perf_counter()
    for _ in range(5):
        forecast(rows)
    per_call = (time.perf_counter() - t0) / 5
    between_logs = off / args.steps * log_every
    print(
        f"(b) one forecast on {args.rows} rows: {per_call * 1e3:.1f} ms; training between two "
        "logs: "
        f"{between_logs * 1e3:.0f} ms; share {per_call / between_logs:.2%}"
    )


if __name__ == "__main__":
    main()
