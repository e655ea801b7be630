"""Patching and ablation on every task family, driven by the task protocol alone: a sequence task
(mws, 1 layer; histogram, 2 layers) and the GPT variant on matrices, with numbers whose right
value is known (recovery exactly 1 where the patched heads are all the clean run differs by,
per-position recoveries adding up to the head's), and the shared-pass shortcuts equal to the
reference implementations bit for bit."""

import functools

import pytest
import torch

from abrupt import tasks
from abrupt.analysis import ablation, patching
from abrupt.analysis.common import Inputs, Table
from abrupt.analysis.registry import plan
from abrupt.config import apply_overrides, preset


def sequence_config(name: str, *extra: str):
    small = ["model.width=16", "model.mlp=16", "task.length=6", *extra]
    return apply_overrides(preset(name), small)


def inputs_of(cfg, models):
    return Inputs(models, cfg.data, config=cfg)


def report_text(parts) -> str:
    return "\n".join(p.text() if isinstance(p, Table) else p.text for p in parts)


def random_model(cfg, seed: int):
    model = tasks.get(cfg.task.name).build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def answer_in_attention(cfg):
    """A 1-layer model whose residual stream after the attention is the attention's output alone:
    that output is ~2^33 in every coordinate, so the embeddings (|x| < 10) vanish below its float
    resolution (1024), and the MLP writes exactly 0. Its outputs are then a function of the head's
    output alone, which patching restores exactly."""
    model = random_model(cfg, 0)
    block = model.blocks[0]
    with torch.no_grad():
        block.attn.o.weight.mul_(1e3)
        block.attn.o.bias.fill_(2.0**33)
        block.mlp_out.weight.zero_()
        block.mlp_out.bias.zero_()
    return model


@pytest.fixture(scope="module")
def mws():
    cfg = sequence_config("mws")
    return cfg, inputs_of(cfg, {1: random_model(cfg, 1), 2: answer_in_attention(cfg)})


def test_both_run_on_every_sequence_task_and_the_gpt_variant():
    for name in ("mws", "prefix_sum", "histogram", "permutation", "addition"):
        assert plan(preset(name), ["patching", "ablation"], {})[1] == {}, name
    gpt = apply_overrides(preset("tiny"), ["model.arch=gpt"])
    assert plan(gpt, ["patching", "ablation"], {})[1] == {}
    _, skipped = plan(apply_overrides(preset("tiny"), ["data.p_mask=0"]), ["patching"], {})
    assert "hidden entries" in skipped["patching"]


def test_patching_every_head_everywhere_recovers_the_clean_outputs_exactly(mws):
    cfg, inputs = mws
    entry = patching.run(inputs, n=32).numbers["steps"][2]
    assert entry["chosen"] == {"recovery_outputs": 1.0}
    assert entry["per_head_recovery_outputs"] == [[1.0]]
    pp = entry["per_position"]
    # the pass reads 2 * 6 + 1 - 1 positions: 6 inputs, then the 6 that predict the outputs
    assert pp["positions"] == list(range(12))
    assert pp["roles"] == [[]] * 6 + [["outputs"]] * 6
    row = pp["recovery_outputs"][0][0]
    # a last-layer head at an input position changes no output; at an output position it gives
    # back that position's share of the difference; the shares add up to the whole
    assert row[:6] == [0.0] * 6 and all(v > 0 for v in row[6:])
    assert sum(row) == pytest.approx(1.0, abs=1e-6)
    patched = patching.patch(inputs.task, cfg, inputs.models[2], inputs.batch(32, 0), [(0, 0)])
    assert patched == entry["chosen"]


def test_a_last_layer_heads_position_recoveries_add_up_to_its_recovery():
    cfg = sequence_config("mws", "model.heads=2")
    inputs = inputs_of(cfg, {3: random_model(cfg, 3)})
    entry = patching.run(inputs, n=64).numbers["steps"][3]
    for h in range(2):
        whole = entry["per_head_recovery_outputs"][0][h]
        parts = entry["per_position"]["recovery_outputs"][0][h]
        assert 0.05 < abs(whole) and sum(parts) == pytest.approx(whole, rel=1e-4, abs=1e-6)
    # patching only the outputs' positions: the per-position table has those alone
    entry = patching.run(inputs, n=64, positions="outputs").numbers["steps"][3]
    assert entry["per_position"]["positions"] == list(range(6, 12))


def test_patching_a_two_layer_task_equals_rerunning_every_pass(tmp_path):
    cfg = sequence_config("histogram", "model.heads=2")
    inputs = inputs_of(cfg, {5: random_model(cfg, 5)})
    numbers = patching.run(inputs, n=24, heads="1:*").numbers
    entry = numbers["steps"][5]
    patch = functools.partial(
        patching.patch, inputs.task, cfg, inputs.models[5], inputs.batch(24, 0)
    )
    assert entry["chosen"] == patch([(1, 0), (1, 1)])
    for l in range(2):
        for h in range(2):
            assert entry["per_head_recovery_outputs"][l][h] == patch([(l, h)])["recovery_outputs"]
    table = entry["per_position"]["recovery_outputs"]
    assert [len(table), len(table[0]), len(table[0][0])] == [2, 2, 12]
    # a first-layer head at an input position reaches the outputs through the second layer
    assert any(abs(v) > 1e-3 for v in table[0][0][:6])
    text = report_text(patching.render(numbers))
    assert "recovery (outputs)" in text and "at outputs" in text and "MSE" not in text
    drawn = patching.plot(patching.Result(numbers), tmp_path)
    assert [p.name for p in drawn] == ["patching_per_head.png", "patching_per_position.png"]


def test_patching_the_gpt_variant_on_matrices_teacher_forced():
    cfg = apply_overrides(
        preset("tiny"),
        ["model.arch=gpt", "model.width=16", "model.mlp=32", "data.m=3", "data.n=3"],
    )
    inputs = inputs_of(cfg, {4: random_model(cfg, 4)})
    entry = patching.run(inputs, n=16).numbers["steps"][4]
    assert set(entry["chosen"]) == {
        "recovery_hidden",
        "recovery_observed",
        "mse_to_X_hidden",
        "mse_to_minus_X_hidden",
        "mse_to_X_observed",
        "mse_to_minus_X_observed",
    }
    # the written half's hidden entries differ between X and -X: the patched heads move them
    assert entry["chosen"]["recovery_hidden"] != 0
    assert "per_position" not in entry  # an entry is hidden in some matrices, observed in others
    patch = functools.partial(
        patching.patch, inputs.task, cfg, inputs.models[4], inputs.batch(16, 0)
    )
    assert entry["chosen"] == patch([(l, h) for l in range(2) for h in range(2)])


def test_ablation_scores_the_headline_and_equals_rerunning_the_evaluation(mws, tmp_path):
    cfg, inputs = mws
    numbers = ablation.run(inputs, n=32).numbers
    batch = inputs.batch(32, 0)
    for step, model in inputs.models.items():
        entry = numbers["steps"][step]
        assert entry["none"] == inputs.task.evaluate(model, batch)
        ablate = functools.partial(ablation.ablate, inputs.task, cfg, model, batch)
        for mode in ablation.MODES:
            assert entry["chosen"][mode] == ablate([(0, 0)], mode)
            assert entry["per_head_loss"][mode] == [[ablate([(0, 0)], mode)["loss"]]]
    # zeroing the head that carries everything leaves a constant output: the loss moves
    entry = numbers["steps"][2]
    assert abs(entry["chosen"]["zero"]["loss"] - entry["none"]["loss"]) > 0.1
    text = report_text(ablation.render(numbers))
    assert "cross-entropy on the outputs" in text and "L_mask" not in text
    assert ablation.plot(ablation.Result(numbers), tmp_path)[0].exists()
