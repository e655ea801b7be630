"""Run one trial of the CPU preset search: `python benchmarks/preset_search.py NAME MINUTES
key=value ...`.

Each trial trains with one thread under runs/search/NAME for at most MINUTES of wall time (then
it is interrupted like Ctrl-C: a checkpoint is saved and the run can be resumed) and appends one row
to
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
from abrupt.run.rundir import read_metrics
from abrupt.train.trainer import train


def table() -> None:
    """Print runs/search/results.jsonl as the markdown table kept in docs/preset-search.md."""
    print(
        "| trial | overrides of `cpu` | s/step | steps run | plateau L_mask | drop step (wall) | "
        "final L_mask |"
    )
    print("|---|---|---|---|---|---|---|")
    for line in Path("runs/search/results.jsonl").read_text().splitlines():
        r = json.loads(line)
        drop = (
            f"{r['drop_step']} ({r['drop_seconds'] / 60:.1f} min)"
            if r["drop_step"]
            else f"none by step {r['steps_run']}"
        )
        print(
            f"| {r['name']} | {' '.join(r['overrides'])} | {r['sec_per_step']:.3f} | "
            f"{r['steps_run']} | "
            f"{r['plateau_level']:.4f} | {drop} | {r['final_level']:.4f} |"
        )


def main() -> None:
    if sys.argv[1:] == ["--table"]:
        table()
        return
    name, minutes, overrides = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    cfg = apply_overrides(
        preset("cpu_plain"), ["train.stop_after_drop=500", "train.ckpt_every=100000", *overrides]
    )
    out = Path("runs/search") / name
    # At the time limit, ask training to stop as SIGINT would: it saves a checkpoint and returns.
    signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    signal.alarm(int(minutes * 60))
    t0 = time.time()
    try:
        summary = train(cfg, out, verbose=False)
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
        "plateau_level": summary["plateau_level"],
        "drop_step": drop,
        "drop_seconds": drop_time,
        "final_level": summary["final_level"],
        "wall": round(time.time() - t0),
    }
    with open("runs/search/results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
