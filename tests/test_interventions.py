"""The interventions against the slow fall (issue 15): each validated, off = the paper's model and
data, on = a change of exactly the part it names."""

import math

import pytest
import torch

from abrupt.config import ConfigError, ModelConfig, apply_overrides, preset
from abrupt.data import VOCAB_SIZE, generator, id_to_value, sample_batch
from abrupt.interventions.attn_bias import RowColumnBias, row_column_bias
from abrupt.models.bert import MatrixBert
from abrupt.models.registry import build_model
from abrupt.run.rundir import read_metrics
from abrupt.train.trainer import Trainer, train


def tiny(*overrides):
    return apply_overrides(preset("tiny"), ["train.steps=20", *overrides])


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.norm=mid", "model.norm"),
        ("model.value_init=spiral", "model.value_init"),
        ("model.value_init_scale=0", "model.value_init_scale"),
        ("attn_bias.factor=0", "attn_bias.factor"),
        ("attn_bias.factor=-2", "attn_bias.factor"),
        ("attn_bias.layers=7", "attn_bias.layers"),
        ("attn_bias.layers=a", "attn_bias.layers"),
        ("attn_bias.until=-1", "attn_bias.until"),
        ("data.mag_low=1.5", "data.mag_low"),
        ("data.mag_low=-0.1", "data.mag_low"),
        ("train.lr_width_ref=-64", "train.lr_width_ref"),
        ("train.eps=0", "train.eps"),
        ("train.eps=2", "train.eps"),
    ],
)
def test_each_intervention_refuses_bad_values_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        tiny("data.distribution=signed" if override.startswith("data.mag") else "seed=0", override)
    assert "\n" not in str(err.value)


def test_interventions_off_explicitly_are_bit_identical(tmp_path):
    train(tiny(), tmp_path / "plain", verbose=False)
    train(
        tiny(
            "model.norm=post",
            "model.value_init=random",
            "model.value_init_scale=3",
            "attn_bias.factor=1",
            "attn_bias.layers=0",
            "attn_bias.until=5",
            "train.lr_width_ref=0",
            "data.mag_low=0.5",
            "train.eps=1e-8",
        ),
        tmp_path / "off",
        verbose=False,
    )
    assert strip_time(read_metrics(tmp_path / "plain")) == strip_time(
        read_metrics(tmp_path / "off")
    )


def test_each_intervention_on_changes_the_run(tmp_path):
    train(tiny(), tmp_path / "plain", verbose=False)
    plain = strip_time(read_metrics(tmp_path / "plain"))
    for i, intervention in enumerate(
        [
            "model.norm=pre",
            "model.value_init=line",
            "attn_bias.factor=3",
            "data.distribution=signed",
            "train.lr_width_ref=64",
            "train.eps=1e-3",
        ]
    ):
        train(tiny(intervention), tmp_path / str(i), verbose=False)
        last = strip_time(read_metrics(tmp_path / str(i)))[-1]
        assert last["loss"] != plain[-1]["loss"], intervention


def test_value_line_changes_only_value_rows_along_one_direction():
    cfg = ModelConfig(width=32, layers=1, heads=2, mlp=64, init_std=0.07)
    plain = build_model(cfg, 49, seed=3).state_dict()
    line = build_model(
        ModelConfig(**{**cfg.__dict__, "value_init": "line", "value_init_scale": 2.0}), 49, seed=3
    ).state_dict()
    assert all(torch.equal(plain[k], line[k]) for k in plain if k != "tok_embed.weight")
    diff = line["tok_embed.weight"] - plain["tok_embed.weight"]
    assert torch.equal(diff[0], torch.zeros(32))  # MASK stays zero
    values = id_to_value(torch.arange(1, VOCAB_SIZE))
    d = diff[1 + 1000 + 100]  # the value 1.00 holds d itself
    assert torch.allclose(diff[1:], values[:, None] * d, atol=1e-5)
    assert d.norm().item() == pytest.approx(2.0 * 0.07 * math.sqrt(32), rel=1e-5)


def test_row_column_bias_multiplies_attention_on_row_and_column_keys_by_c():
    bias = row_column_bias(6, 3, 2.5)  # a 2x3 matrix
    same = {(0, 0), (0, 1), (0, 2), (0, 3)}  # query 0: its row (0, 1, 2) and its column (0, 3)
    for k in range(6):
        assert bias[0, k].item() == pytest.approx(math.log(2.5) if (0, k) in same else 0.0)
    torch.manual_seed(0)
    model = MatrixBert(ModelConfig(width=16, layers=2, heads=2, mlp=32), 6, cols=3).eval()
    model.attention_edits["attn_bias"] = RowColumnBias(4.0, [1])
    tokens = torch.randint(1, VOCAB_SIZE, (2, 6))
    base = MatrixBert(ModelConfig(width=16, layers=2, heads=2, mlp=32), 6)
    base.load_state_dict(model.state_dict())
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens,
            names=[
                "blocks.0.attn.hook_pattern",
                "blocks.1.attn.hook_pattern",
                "blocks.1.attn.hook_q",
                "blocks.1.attn.hook_k",
            ],
        )
        _, ref = base.eval().run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
        fused = model(tokens)
        exact = model.run_with_cache(tokens, names=["blocks.1.attn.hook_pattern"])[0]
    assert torch.allclose(
        cache["blocks.0.attn.hook_pattern"], ref["blocks.0.attn.hook_pattern"], atol=1e-6
    )  # layer 0: no bias
    q, k = cache["blocks.1.attn.hook_q"], cache["blocks.1.attn.hook_k"]
    w = torch.exp(q @ k.transpose(-1, -2) / math.sqrt(8)) * torch.exp(row_column_bias(6, 3, 4.0))
    assert torch.allclose(
        cache["blocks.1.attn.hook_pattern"], w / w.sum(-1, keepdim=True), atol=1e-5
    )
    assert torch.allclose(fused, exact, atol=1e-5)  # the fused path adds the same bias


def test_attn_bias_until_switches_the_bias_off_in_training_and_in_loaded_checkpoints(tmp_path):
    from abrupt.run.checkpoints import load_run

    cfg = tiny(
        "attn_bias.factor=3",
        "attn_bias.until=10",
        "train.ckpt_every=5",
        "train.ckpt_log_points=0",
    )
    trainer = Trainer(cfg, tmp_path / "r", verbose=False)
    trainer.step(10, False)
    assert "attn_bias" in trainer.model.attention_edits
    trainer.step(11, False)
    assert "attn_bias" not in trainer.model.attention_edits
    train(cfg, tmp_path / "run", verbose=False)
    assert (
        "attn_bias" in load_run(tmp_path / "run", 10)[1].attention_edits
        and "attn_bias" not in load_run(tmp_path / "run", 15)[1].attention_edits
    )


def test_signed_factors_are_zero_mean_with_bounded_magnitude():
    cfg = apply_overrides(
        preset("cpu"), ["data.distribution=signed", "data.mag_low=0.3", "data.mag_high=1.0"]
    ).data
    from abrupt.data import sample_factors

    f = sample_factors(cfg, 4000, 7, generator(0))
    assert f.abs().min() >= 0.3 and f.abs().max() <= 1.0
    assert abs(f.mean().item()) < 0.01 and 0.45 < (f > 0).float().mean().item() < 0.55
    assert sample_batch(cfg, 8, generator(0)).target.abs().max() <= 2.0


def test_width_rule_scales_the_lr_by_reference_over_width(tmp_path):
    trainer = Trainer(tiny("train.lr_width_ref=64", "train.lr=1e-3"), tmp_path / "r", verbose=False)
    assert trainer.lr_at(10) == pytest.approx(1e-3 * 64 / 32)


def test_adam_eps_reaches_every_parameter_group(tmp_path):
    trainer = Trainer(
        tiny("train.eps=1e-4", "train.group_lr=mlp=0.5"), tmp_path / "r", verbose=False
    )
    groups = trainer.optim.param_groups
    assert len(groups) > 1 and all(g["eps"] == 1e-4 for g in groups)


def test_pre_norm_adds_a_final_layernorm_in_the_readout_group():
    from abrupt.models import groups

    model = build_model(ModelConfig(width=16, layers=1, heads=2, mlp=32, norm="pre"), 9, seed=0)
    assert "ln_final.weight" in groups.names(model, "readout")
    out = model(torch.randint(1, VOCAB_SIZE, (3, 9)))
    assert out.shape == (3, 9) and torch.isfinite(out).all()
