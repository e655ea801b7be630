"""Run one trial of the CPU preset search: `python benchmarks/preset_search.py NAME MINUTES key=value ...`.

Each trial trains with one thread under runs/search/NAME for at most MINUTES of wall time (then
it is interrupted like Ctrl-C: a checkpoint is saved and the run can be resumed) and appends one row to
runs/search/results.jsonl: configuration, seconds per step, drop step and time, final L_mask.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from abrupt.config import apply_overrides, preset
from abrupt.train import read_metrics, train


def main() -> None:
    name, minutes, overrides = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    cfg = apply_overrides(preset("cpu"), ["train.stop_after_drop=500", "train.ckpt_every=100000", *overrides])
    out = Path("runs/search") / name
    # At the time limit, ask training to stop as SIGINT would: it saves a checkpoint and returns.
    signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    signal.alarm(int(minutes * 60))
    t0 = time.time()
    try:
        summary = train(cfg, out, progress=False)
    except KeyboardInterrupt:
        summary = json.loads((out / "summary.json").read_text())
    rows = read_metrics(out)
    drop = summary["drop_step"]
    drop_time = next((r["time"] for r in rows if r["step"] == drop), None) if drop else None
    row = {
        "name": name,
        "overrides": overrides,
        "steps_run": rows[-1]["step"],
        "sec_per_step": round(rows[-1]["time"] / rows[-1]["step"], 4),
        "plateau_loss_mask": summary["plateau_loss_mask"],
        "drop_step": drop,
        "drop_seconds": drop_time,
        "final_loss_mask": summary["final_loss_mask"],
        "wall": round(time.time() - t0),
    }
    with open("runs/search/results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
