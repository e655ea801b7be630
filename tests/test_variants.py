"""Training variants and interventions: each changes only what it names."""

import json

import pytest
import torch
from safetensors.torch import load_file

from abrupt import progress
from abrupt.cli import main
from abrupt.config import ModelConfig, apply_overrides, preset
from abrupt.models import groups
from abrupt.models.bert import MatrixBert
from abrupt.models.registry import build_model
from abrupt.run import checkpoints
from abrupt.run.rundir import read_metrics
from abrupt.train.trainer import eval_batch, train
from conftest import hand_set_row_head

TINY = ["--preset", "tiny", "--quiet", "--threads", "1"]


def tiny(*overrides):
    return apply_overrides(preset("tiny"), list(overrides))


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def last_weights(run):
    return load_file(str(checkpoints.find(run).weights))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    run = tmp_path_factory.mktemp("variants") / "source"
    train(tiny("train.steps=30"), run, verbose=False)
    return run


def test_training_one_group_leaves_every_other_tensor_bit_identical(source, tmp_path):
    run = tmp_path / "pos"
    train(
        tiny("train.steps=20", f"train.init_from={source}", "train.trainable=pos_embed"),
        run,
        verbose=False,
    )
    start, end = last_weights(source), last_weights(run)
    inside = set(groups.names(build_model(tiny().model, 49, 0), "pos_embed"))
    assert inside == {"pos_embed.weight"}
    for name, tensor in start.items():
        if name in inside:
            assert not torch.equal(tensor, end[name])
        else:
            assert torch.equal(tensor, end[name]), name


def test_reinit_restarts_a_group_from_step_zero_and_keeps_the_rest(source, tmp_path):
    run = tmp_path / "re"
    train(
        tiny(
            "train.steps=1",
            f"train.init_from={source}@20",
            "train.reinit=mlp",
            "train.trainable=readout",
        ),
        run,
        verbose=False,
    )
    fresh = build_model(tiny().model, 49, seed=0).state_dict()
    start = load_file(str(checkpoints.find(source, 20).weights))
    step0 = load_file(str(checkpoints.find(run, 0).weights))
    for name in step0:
        expected = (
            fresh[name]
            if name in groups.names(build_model(tiny().model, 49, 0), "mlp")
            else start[name]
        )
        assert torch.equal(step0[name], expected), name


def test_init_from_a_model_of_another_shape_is_one_line(source, tmp_path, capsys):
    out = tmp_path / "wide"
    assert (
        main(
            [
                "train",
                *TINY,
                "--out",
                str(out),
                f"train.init_from={source}",
                "model.width=16",
                "model.mlp=32",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tok_embed.weight" in err[0] and "(2002, 32)" in err[0]
    assert not out.exists()
    assert main(["train", *TINY, "--out", str(out), f"train.init_from={source}@7"]) == 2
    assert "no checkpoint at step 7" in capsys.readouterr().err


def test_group_learning_rates(tmp_path):
    from abrupt.train.trainer import Trainer

    trainer = Trainer(tiny("train.group_lr=pos_embed=10"), tmp_path / "t", verbose=False)
    trainer.step(1, False)
    lrs = {id(p): g["lr"] for g in trainer.optim.param_groups for p in g["params"]}
    assert lrs[id(trainer.model.pos_embed.weight)] == pytest.approx(
        10 * lrs[id(trainer.model.readout.weight)]
    )


def test_interventions_off_are_bit_identical_and_on_change_the_run(tmp_path):
    train(tiny("train.steps=20"), tmp_path / "plain", verbose=False)
    off = [
        "model.attn_temperature=1",
        "train.grokfast_alpha=0",
        "curriculum.rank=0",
        "curriculum.p_mask=-1",
        "train.group_lr=",
    ]
    train(tiny("train.steps=20", *off), tmp_path / "off", verbose=False)
    plain = strip_time(read_metrics(tmp_path / "plain"))
    assert plain == strip_time(read_metrics(tmp_path / "off"))
    for i, on in enumerate(
        (
            ["model.attn_temperature=2"],
            ["train.grokfast_alpha=0.9", "train.grokfast_lambda=2"],
            ["curriculum.rank=1", "curriculum.hold=10"],
            ["curriculum.p_mask=0.1", "curriculum.hold=10"],
        )
    ):
        train(tiny("train.steps=20", *on), tmp_path / f"on{i}", verbose=False)
        rows = strip_time(read_metrics(tmp_path / f"on{i}"))
        assert torch.equal(
            eval_batch(tiny(*on)).tokens, eval_batch(tiny()).tokens
        )  # evaluation: the target's data
        assert rows[-1]["loss"] != plain[-1]["loss"], on


def test_grokfast_state_resumes_exactly(tmp_path):
    knobs = ["train.grokfast_alpha=0.9", "train.grokfast_lambda=2"]
    train(tiny("train.steps=40", *knobs), tmp_path / "straight", verbose=False)
    train(tiny("train.steps=20", *knobs), tmp_path / "part", verbose=False)
    train(tiny("train.steps=40", *knobs), tmp_path / "part", resume=True, verbose=False)
    assert strip_time(read_metrics(tmp_path / "part")) == strip_time(
        read_metrics(tmp_path / "straight")
    )


def test_attention_temperature_on_both_attention_paths(small_model):
    torch.manual_seed(0)
    model = MatrixBert(
        ModelConfig(width=32, layers=2, heads=4, mlp=64, attn_temperature=3.0), seq_len=49
    ).eval()
    tokens = torch.randint(1, 2002, (4, 49))
    fused = model(tokens)
    exact, cache = model.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(fused, exact, rtol=1e-5, atol=1e-5)
    assert cache["blocks.0.attn.hook_pattern"].max() < 0.5  # a hot softmax flattens


def test_progress_measures_on_hand_set_weights():
    model = hand_set_row_head()
    tokens = torch.randint(1, 2002, (4, 49))
    m = progress.measures(model, tokens, torch.zeros(4, 49, dtype=torch.bool), 7, 7)
    assert m["prog_row_mass"] == pytest.approx(6 / 7, abs=1e-3)  # its 6 row-mates; 1/7 on itself
    assert m["prog_col_mass"] == pytest.approx(0.0, abs=1e-3)
    # positions one-hot by row: neighbours share the row, never (beyond chance) the column
    assert m["prog_pos_purity"] == pytest.approx(0.0)
    same = torch.ones(2, 5, 3)
    assert progress.collapse(same) == pytest.approx(1.0)
    assert progress.collapse(torch.eye(3).expand(2, 3, 3)) == pytest.approx(0.0)
    by_column = torch.nn.functional.one_hot(torch.arange(49) % 7, 7).float() + 0.01 * torch.randn(
        49, 7
    )
    assert progress.knn_purity(by_column, torch.arange(49) % 7, 4) == 1.0


def test_progress_measures_are_logged(tmp_path):
    train(tiny("train.steps=20", "train.progress=true"), tmp_path / "p", verbose=False)
    rows = read_metrics(tmp_path / "p")
    for key in (
        *progress.PROGRESS_KEYS,
        "grad_norm_pos_embed",
        "grad_norm_attention",
        "grad_norm_mlp",
    ):
        assert all(isinstance(r[key], float) for r in rows), key
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["train"]["progress"] is True and cfg["versions"]["threads"] >= 1


def test_progress_analysis_reads_the_logged_measures(tmp_path, capsys):
    run = tmp_path / "p"
    train(tiny("train.steps=40", "train.progress=true"), run, verbose=False)
    assert main(["analyze", str(run), "--only", "progress"]) == 0
    res = json.loads((run / "analysis" / "progress" / "results.json").read_text())
    measures = {r["measure"] for r in res["rows"]}
    assert set(progress.PROGRESS_KEYS) <= measures and "grad_norm_attention" in measures
    assert (run / "analysis" / "progress" / "progress.png").exists()
    plain = tmp_path / "plain"
    train(tiny("train.steps=10"), plain, verbose=False)
    capsys.readouterr()
    assert main(["analyze", str(plain), "--only", "progress,probe"]) == 0
    # logged none: computed at the checkpoints instead
    res = json.loads((plain / "analysis" / "progress" / "results.json").read_text())
    assert res["source"] == "checkpoints" and "skipped" not in capsys.readouterr().out


def test_halfway_step():
    from abrupt.analysis.progress import halfway

    assert halfway([0, 10, 20, 30], [0.2, 0.2, 0.8, 1.0], 0) == 20
    assert halfway([0, 10, 20, 30], [1.0, 0.9, 0.4, 0.0], 10) == 20


# over 20 s: `python3 -m pytest -m slow` (keeps the default suite under 10 minutes)
@pytest.mark.slow
def test_components_trains_each_group_alone(source, tmp_path):
    out = tmp_path / "comp"
    assert (
        main(
            [
                "components",
                str(source),
                "--steps",
                "5",
                "--workers",
                "2",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = (out / "components.md").read_text()
    for group in (
        "tok_embed",
        "pos_embed",
        "attn.0",
        "attn.1",
        "mlp.0",
        "mlp.1",
        "layernorm",
        "readout",
    ):
        assert f"| {group} |" in table
    assert (out / "components.png").exists()
    cfg = json.loads((out / "reinit=pos_embed" / "config.json").read_text())
    assert (
        cfg["train"]["trainable"] == cfg["train"]["reinit"] == "pos_embed"
        and cfg["model"]["width"] == 32
    )
    start, end = last_weights(source), last_weights(out / "reinit=pos_embed")
    assert all(torch.equal(start[k], end[k]) for k in start if k != "pos_embed.weight")


def test_size_mixture_layout_padding_and_per_size_metrics(tmp_path):
    from abrupt.data import generator, sample_batch
    from abrupt.losses import losses

    cfg = tiny("data.m=5", "data.n=5", "data.rank=1", "data.sizes=3x3,5x5")
    b = sample_batch(cfg.data, 4, generator(0))
    assert b.size.tolist() == [0, 1, 0, 1]  # equal shares
    grid = b.pad[0].reshape(5, 5)
    assert (
        not grid[:3, :3].any() and grid[3:, :].all() and grid[:, 3:].all()
    )  # top-left corner of the grid
    assert not (b.mask & b.pad).any() and not b.pad[1].any()
    assert torch.linalg.matrix_rank(b.matrix[0, :3, :3].double(), rtol=1e-5) == 1
    # padding is never attended: what stands there changes no prediction at a real position
    model = build_model(cfg.model, 25, seed=0).eval()
    other = b.tokens.masked_fill(b.pad, 1500)
    with torch.no_grad():
        a, c = model(b.tokens, b.pad), model(other, b.pad)
        _, cache = model.run_with_cache(b.tokens, names=["blocks.0.attn.hook_pattern"], pad=b.pad)
    torch.testing.assert_close(a[~b.pad], c[~b.pad])
    assert cache["blocks.0.attn.hook_pattern"][0][..., b.pad[0]].abs().max() == 0
    # and excluded from the loss
    assert losses(a.masked_fill(b.pad, 1e6), b)["loss"].item() == pytest.approx(
        losses(a, b)["loss"].item()
    )
    run = tmp_path / "mix"
    summary = train(
        tiny("data.m=5", "data.n=5", "data.rank=1", "data.sizes=3x3,5x5", "train.steps=20"),
        run,
        verbose=False,
    )
    assert {"drop_step_3x3", "drop_step_5x5"} <= set(summary)
    assert {"eval_loss_mask_3x3", "eval_loss_mask_5x5"} <= set(read_metrics(run)[-1])


@pytest.mark.parametrize(
    "sizes,message", [("5x5", "two or more"), ("3x3,4x4", "largest"), ("3x3,5x", "ROWSxCOLUMNS")]
)
def test_bad_size_mixtures(sizes, message):
    from abrupt.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny("data.m=5", "data.n=5", "data.rank=1", f"data.sizes={sizes}")
