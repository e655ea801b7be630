"""The package's layout changed without changing a number: every preset resolves to the values it
had, and every sequence task's first steps are those it took, before the change.

tests/data/pre_layout.json was written by the code of commit ceed688 (the last before the
layout change), one thread, on an AMD EPYC (AVX2): `presets` holds each preset's every key under
the names of then, `steps` each sequence task's metrics.jsonl rows (time dropped) of `STEPS`. The
matrix task's own pin is tests/test_tasks.py's."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from abrupt import config
from abrupt.config.schema import PLUGIN_SECTIONS, RENAMED
from abrupt.train.trainer import train

PINNED = json.loads((Path(__file__).parent / "data" / "pre_layout.json").read_text())
# the run of each sequence task the rows are of (model.hidden: model.width's name then)
STEPS = [
    "train.steps=6",
    "train.log_every=1",
    "train.batch_size=32",
    "train.eval_size=64",
    "model.hidden=32",
    "model.mlp=64",
    "train.ckpt_every=100",
    "train.progress=false",  # the pinned rows were logged without the progress measures
]
# keys added since, by other changes: each must be at its default in every preset
ADDED = {"train.log_to"}
# values changed since, on purpose: the sequence presets log the follow-up's progress measures
# (issue: the main job explained by `abrupt analyze` without an extra flag)
CHANGED = {"train.progress": True}


def flat(cfg: config.Config) -> dict[str, object]:
    """{section.key or top-level field: value} of every key, the plugin sections' included."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(
                {f"{f.name}.{g.name}": getattr(value, g.name) for g in dataclasses.fields(value)}
            )
        else:
            out[f.name] = value
    for section in PLUGIN_SECTIONS:
        value = getattr(cfg, section)
        out.update(
            {f"{section}.{g.name}": getattr(value, g.name) for g in dataclasses.fields(value)}
        )
    return out


def test_every_preset_resolves_to_its_values_of_before_the_layout_change():
    assert set(config.PRESETS) == set(PINNED["presets"])
    default = flat(config.Config())
    for name, before in PINNED["presets"].items():
        now = flat(config.preset(name))
        renamed = {RENAMED.get(key, key): value for key, value in before.items()}
        if renamed["task.name"] != "matrix":
            renamed.update(CHANGED)
        assert set(now) - set(renamed) == ADDED, name
        assert {key: now[key] for key in renamed} == renamed, name
        assert {key: now[key] for key in ADDED} == {key: default[key] for key in ADDED}, name


@pytest.mark.parametrize("task", sorted(PINNED["steps"]))
def test_each_sequence_task_takes_the_first_steps_it_took_before(tmp_path, one_thread, task):
    cfg = config.apply_overrides(config.preset(task), STEPS)
    train(cfg, tmp_path / "run", verbose=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    got = [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]
    rel = 1e-6 if torch.backends.cpu.get_cpu_capability() == "AVX2" else 1e-5
    assert got == [pytest.approx(row, rel=rel) for row in PINNED["steps"][task]]
