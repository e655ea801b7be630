"""Shared by the overhead benchmarks: the same short run with one boolean `train.*` option off and
on, alternated in one process so that both see the same machine load."""

import tempfile
import time
from pathlib import Path

from abrupt.config import apply_overrides, preset
from abrupt.train.trainer import train


def time_off_on(preset_name: str, option: str, steps: int, repeats: int) -> tuple[float, float]:
    """(best seconds with `train.<option>=false`, best with `=true`) over `repeats` alternated
    pairs."""
    seconds = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for on in (False, True):
                cfg = apply_overrides(
                    preset(preset_name),
                    [
                        f"train.steps={steps}",
                        f"train.{option}={str(on).lower()}",
                        "train.ckpt_every=100000",
                        "train.ckpt_log_points=0",
                    ],
                )
                t0 = time.perf_counter()
                train(cfg, Path(tmp) / f"{i}-{on}", verbose=False)
                seconds[on].append(time.perf_counter() - t0)
    return min(seconds[False]), min(seconds[True])
