"""progress: computed at every checkpoint where training logged no measures, and the half-way
steps the report's story is told with."""

import dataclasses

import torch

from abrupt import tasks
from abrupt.analysis import progress
from abrupt.analysis.common import Inputs
from abrupt.config import apply_overrides, preset


def small(name, *overrides):
    return apply_overrides(
        preset(name), ["task.length=6", "model.width=16", "model.mlp=32", *overrides]
    )


def test_measures_are_computed_at_each_checkpoint_without_logged_ones():
    cfg = small("histogram", "train.progress=false")
    task = tasks.get("histogram")
    models = {}
    for step in (0, 10, 20):
        torch.manual_seed(step)
        models[step] = task.build_model(dataclasses.replace(cfg, seed=step))
    rows = [{"step": s, "eval_loss": 2.0 - s / 20} for s in (0, 10, 20)]
    inputs = Inputs(models, cfg.data, metrics=rows, summary={"drop_step": 15}, config=cfg)
    res = progress.run(inputs, n=32)
    assert res.numbers["source"] == "checkpoints" and res.numbers["steps"] == [0, 10, 20]
    batch = inputs.batch(32, 0)
    for step, model in models.items():
        expected = task.progress(model, batch, cfg)
        got = {k: v[[0, 10, 20].index(step)] for k, v in res.figure_data["series"].items()}
        assert got == expected  # prog_repetition, prog_collapse, prog_attn_l0 and _l1
    assert {r["measure"] for r in res.numbers["rows"]} == {
        "prog_repetition",
        "prog_collapse",
        "prog_attn_l0",
        "prog_attn_l1",
    }
    assert res.figure_data["loss"] == [2.0, 1.5, 1.0]
    assert "computed at the checkpoints (steps 0, 10, 20" in progress.render(res.numbers)[0].text


def test_logged_measures_are_read_and_the_untrainable_are_refused():
    assert progress.unsupported(small("mws", "train.progress=true")) is None
    assert progress.unsupported(small("mws", "train.progress=false")) is None  # computed then
    gpt = apply_overrides(preset("tiny"), ["model.arch=gpt"])
    assert "cannot be computed" in progress.unsupported(gpt)
    rows = [{"step": s, "eval_loss": 1.0, "prog_attn_l0": s / 10} for s in range(0, 11)]
    res = progress.run(Inputs({0: None}, small("mws").data, metrics=rows, config=small("mws")))
    assert res.numbers["source"] == "logged" and res.numbers["rows"][0]["halfway_step"] == 5


def test_a_rise_and_fall_is_half_way_where_it_falls():
    steps = list(range(0, 110, 10))
    collapse = [0.1, 0.5, 0.8, 0.9, 0.9, 0.8, 0.5, 0.2, 0.1, 0.05, 0.05]
    # from the plateau's start (0.1) to the end (0.05): half-way at 0.075, after the fall
    assert progress.halfway(steps, collapse, 0) == 90
    # from the peak (0.9 at step 30) to the end: half-way at 0.475, where it falls (step 70)
    assert progress.extreme_halfway(steps, collapse, 0) == (30, 0.9, 70)
    rows = [
        {"measure": "prog_collapse", "halfway_after_extreme": 70, "after_extreme_before_drop": 10},
        {"measure": "prog_attn_l0", "halfway_after_extreme": 90, "after_extreme_before_drop": -10},
    ]
    told = progress.story({"drop_step": 80, "rows": rows})
    assert "the end of collapse: prog_collapse half-way at step 70 (10 steps before the drop)" in (
        told
    )
    assert "prog_attn_l0 half-way at step 90 (10 steps after it), not before the drop" in told
    assert progress.story({"drop_step": None, "rows": rows}) == ""
