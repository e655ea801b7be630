"""Training steps/s against the torch thread count, on a quiet CPU and with other busy processes:
the measurement behind the command line's default of one thread (`cli.DEFAULT_THREADS`).

    PYTHONPATH=src python benchmarks/threads.py [--presets cpu,small] [--steps 40] [--busy 2]
    taskset -c 0,1 env PYTHONPATH=src python benchmarks/threads.py      # as on a 2-core machine

For each preset, each load (the machine as it is, its load average printed; then with `--busy`
processes spinning `while 1: pass`, started here and
killed after) and each thread count (1, 2 and torch's own default, one per core it may use), it
times `--steps` training steps after a short warm-up, in one process (the model, data and
optimizer of `abrupt train`), and prints steps/s and each count's ratio to one thread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TORCH_DEFAULT = torch.get_num_threads()  # read before anything changes it

from abrupt.config import apply_overrides, preset  # noqa: E402
from abrupt.train.trainer import Trainer  # noqa: E402


def steps_per_second(name: str, threads: int, steps: int, warmup: int = 5) -> float:
    torch.set_num_threads(threads)
    cfg = apply_overrides(preset(name), ["train.device=cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            cfg, Path(tmp), verbose=False
        )  # builds the model and optimizer; writes nothing
        for step in range(1, warmup + 1):
            trainer.step(step, want_norms=False)
        t0 = time.perf_counter()
        for step in range(warmup + 1, warmup + steps + 1):
            trainer.step(step, want_norms=False)
        return steps / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="cpu,small")
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--busy", type=int, default=2, help="busy processes in the loaded condition")
    args = p.parse_args()
    counts = sorted({1, 2, TORCH_DEFAULT})
    print(
        f"torch {torch.__version__}; torch's default here: {TORCH_DEFAULT} threads; {args.steps} "
        "steps per measurement; "
        f"{os.cpu_count()} cores, load average before: {os.getloadavg()[0]:.1f} (other jobs)"
    )
    print(f"{'preset':8s} {'load':8s} " + "  ".join(f"{t} thr steps/s (x1)" for t in counts))
    for name in args.presets.split(","):
        for busy in dict.fromkeys((0, args.busy)):
            spinners = [
                subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(busy)
            ]
            try:
                rates = {t: steps_per_second(name, t, args.steps) for t in counts}
            finally:
                for proc in spinners:
                    proc.kill()
                    proc.wait()
            load = f"+{busy} busy" if busy else "as is"
            print(
                f"{name:8s} {load:8s} "
                + "  ".join(f"{rates[t]:9.1f} ({rates[t] / rates[1]:.2f})" for t in counts),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
