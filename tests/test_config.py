import dataclasses

import pytest

from abrupt.config import PRESETS, Config, ConfigError, apply_overrides, preset, schema


def test_presets_resolve_and_validate():
    for name in PRESETS:
        cfg = preset(name)
        assert Config.from_dict(cfg.to_dict()) == cfg


def test_paper_preset_is_the_paper():
    c = preset("paper")
    assert (c.model.layers, c.model.heads, c.model.width, c.model.mlp) == (4, 8, 768, 3072)
    assert (c.train.lr, c.train.batch_size, c.train.steps, c.train.warmup) == (1e-4, 256, 50_000, 0)
    assert (c.data.m, c.data.n, c.data.rank, c.data.p_mask) == (7, 7, 2, 0.3)
    assert c.model.init_std == 0.02


def test_overrides_are_typed():
    c = apply_overrides(
        preset("cpu"), ["data.m=5", "train.lr=3e-3", "data.clip=true", "train.steps=1e3"]
    )
    assert c.data.m == 5 and c.train.lr == 3e-3 and c.data.clip is True and c.train.steps == 1000


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.bogus=1", "unknown key 'data.bogus'"),
        ("nonsense=1", "unknown key 'nonsense'"),
        ("data.m=seven", "data.m: expected an integer"),
        ("data.m=2.5", "data.m: expected an integer"),
        ("data.rank=8", r"data.rank: must be in \[1, min\(m, n\)\]"),
        ("data.p_mask=1.0", r"data.p_mask: must be in \[0, 1\)"),
        ("data.p_mask=-0.1", r"data.p_mask: must be in \[0, 1\)"),
        ("data.high=3", "beyond the vocabulary"),
        ("data.distribution=cauchy", "data.distribution: must be one of"),
        ("model.heads=3", "model.heads: must divide model.width"),
        ("train.steps=0", "train.steps: must be >= 1"),
        ("train.lr=-1", "train.lr: must be a positive number"),
        ("train.bf16=maybe", "train.bf16: expected true/false"),
        ("train.device=tpu", "train.device"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(preset("cpu"), [override])


def test_clip_allows_wide_ranges():
    c = apply_overrides(preset("cpu"), ["data.high=3", "data.clip=true"])
    assert c.data.high == 3.0


def test_sudden_preset_is_the_measured_recipe():
    """`sudden` is the sweep docs/plateau/small_bias3_b256_eps.yaml's trial (sudden on 5 of 5 seeds)
    with a longer step cap; with a constant lr the cap does not change the trajectory."""
    from pathlib import Path

    from abrupt.sweep.runner import config_of, expand, spec_from_file

    spec = spec_from_file(
        Path(__file__).resolve().parents[1] / "docs" / "plateau" / "small_bias3_b256_eps.yaml"
    )
    trial = config_of(spec.preset, expand(spec)[0].overrides).to_dict()
    sudden = preset("sudden").to_dict()
    assert sudden["train"]["warmup"] == 0 and sudden["train"]["steps"] > trial["train"]["steps"]
    for cfg in (trial, sudden):
        cfg["train"]["steps"] = cfg["seed"] = 0
        cfg["preset"] = ""  # the preset's name is recorded
    assert sudden == trial


def test_renamed_keys_are_read_under_their_new_names_in_overrides_and_config_json():
    """The interventions' settings moved to their own sections: the old keys still set them."""
    old = [
        "model.attn_bias=3",
        "model.attn_bias_layers=0,1",
        "model.attn_bias_until=50",
        "task.name=mws",
        "model.arch=gpt",
        "task.attn_scale=2",
        "task.attn_scale_from=7",
        "task.attn_scale_layers=1",
    ]
    cfg = apply_overrides(preset("tiny"), old)
    assert (cfg.attn_bias.factor, cfg.attn_bias.layers, cfg.attn_bias.until) == (3.0, "0,1", 50)
    assert (cfg.attn_scale.factor, cfg.attn_scale.start, cfg.attn_scale.layers) == (2.0, 7, "1")
    raw = cfg.to_dict()
    del raw["attn_bias"], raw["attn_scale"]
    raw["model"].update(attn_bias=3.0, attn_bias_layers="0,1", attn_bias_until=50)
    raw["task"].update(attn_scale=2.0, attn_scale_from=7, attn_scale_layers="1")
    assert Config.from_dict(raw) == cfg


def test_a_config_json_section_nothing_declares_is_an_error():
    raw = Config().to_dict()
    raw["nudge"] = {"factor": 2.0}
    with pytest.raises(ConfigError, match="unknown section 'nudge'; sections are: data, model"):
        Config.from_dict(raw)


def test_a_plugin_section_of_an_unsupported_type_is_refused(monkeypatch):
    @dataclasses.dataclass
    class Odd:
        values: list = dataclasses.field(default_factory=list)

    monkeypatch.setattr(schema, "PLUGIN_SECTIONS", dict(schema.PLUGIN_SECTIONS))
    with pytest.raises(ValueError, match="odd.values: its type must be one of int, float"):
        schema.register_section("odd", Odd)
    with pytest.raises(ValueError, match="'model' is declared twice"):
        schema.register_section("model", Odd)
