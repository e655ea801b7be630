"""switching on a sequence task, and the matrix batch it keeps drawing."""

import dataclasses

import torch

from abrupt import tasks
from abrupt.analysis import switching
from abrupt.analysis.common import Inputs
from abrupt.config import DataConfig, apply_overrides, preset
from abrupt.data import seeded_batch


def test_moving_every_parameter_swaps_the_models_and_absent_groups_are_skipped():
    cfg = apply_overrides(preset("mws"), ["task.length=6", "model.width=16", "model.mlp=32"])
    task = tasks.get("mws")
    pre = task.build_model(cfg)
    post = task.build_model(dataclasses.replace(cfg, seed=1))
    inputs = Inputs({10: pre, 20: post}, cfg.data, config=cfg)
    r = switching.run(inputs, n=32, groups=("all", "ln_embed", "attention")).numbers
    assert r["headline"] == "loss" and r["absent"] == ["ln_embed"]  # the decoder has none
    assert list(r["pre_with_post"]) == ["all", "attention"]
    assert r["pre_with_post"]["all"] == r["post"] and r["post_with_pre"]["all"] == r["pre"]
    assert r["pre"] == task.evaluate(pre, inputs.batch(32, 0))
    assert r["pre_with_post"]["attention"] != r["pre"]
    texts = [b.text for b in switching.render(r) if isinstance(b, switching.Text)]
    assert texts[0].startswith("cross-entropy on the outputs") and "ln_embed" in texts[1]
    table = switching.render(r)[-1]
    assert table.header == ["model", "loss", "acc", "seq_acc"]


def test_the_matrix_batch_is_the_seeded_batch_of_the_analyses_data():
    data = DataConfig()
    model = tasks.get("matrix").build_model(preset("tiny"))
    batch = Inputs({1: model}, data).batch(64, 3)
    expected = seeded_batch(data, 64, 3)
    assert torch.equal(batch.tokens, expected.tokens) and torch.equal(batch.mask, expected.mask)
