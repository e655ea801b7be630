"""Training, run directory, determinism and resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from abrupt.config import apply_overrides, preset
from abrupt.run import checkpoints
from abrupt.run.rundir import read_metrics
from abrupt.train.trainer import TrainingError, checkpoint_at, train

RUN_FILES = {"config.json", "metrics.jsonl", "summary.json", "loss.png", "checkpoints"}
METRIC_KEYS = {
    "step",
    "loss",
    "loss_obs",
    "loss_mask",
    "mask_value",
    "eval_loss",
    "eval_loss_mask",
    "grad_norm",
    "time",
}


def tiny(*overrides):
    return apply_overrides(preset("tiny"), list(overrides))


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def test_run_directory_contract(tmp_path):
    summary = train(tiny(), tmp_path / "run", verbose=False)
    run = tmp_path / "run"
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    rows = read_metrics(run)
    assert METRIC_KEYS <= set(rows[0])
    assert [r["step"] for r in rows] == [1, 10, 20, 30, 40, 50, 60]
    assert set(json.loads((run / "summary.json").read_text())) >= {
        "plateau_level",
        "plateau_start",
        "drop_step",
        "final_loss",
        "final_level",
        "steps",
        "seconds",
    }
    assert summary["steps"] == 60
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["model"]["width"] == 32 and "torch" in cfg["versions"]
    steps = [c.step for c in checkpoints.list_checkpoints(run / "checkpoints")]
    assert steps == [0] + schedule(tiny())
    # training learned to copy the observed entries
    assert rows[-1]["eval_loss_obs"] < 0.5 * rows[0]["eval_loss_obs"]


def schedule(cfg):
    at = checkpoint_at(cfg)
    return [s for s in range(1, cfg.train.steps + 1) if at(s)]


def test_checkpoint_schedule():
    cfg = tiny("train.steps=5000", "train.ckpt_every=1000", "train.ckpt_log_points=3")
    assert schedule(cfg) == [1, 10, 100, 1000, 2000, 3000, 4000, 5000]
    cfg = tiny("train.steps=2500", "train.ckpt_every=1000", "train.ckpt_log_points=0")
    assert schedule(cfg) == [1000, 2000, 2500]
    cfg = tiny(
        "train.steps=50", "train.ckpt_every=1000", "train.ckpt_log_points=3"
    )  # early points past the end: none
    assert schedule(cfg) == [1, 10, 50]


def test_same_seed_same_metrics(tmp_path):
    train(tiny("train.steps=30"), tmp_path / "a", verbose=False)
    train(tiny("train.steps=30"), tmp_path / "b", verbose=False)
    other = tiny("train.steps=30")
    other.seed = 1
    train(other, tmp_path / "c", verbose=False)
    a, b, c = (strip_time(read_metrics(tmp_path / x)) for x in "abc")
    assert a == b
    assert a != c


def test_resume_gives_identical_metrics(tmp_path):
    train(tiny(), tmp_path / "full", verbose=False)
    # A run that stopped at step 40 (as if killed after its checkpoint) and is resumed to 60.
    train(tiny("train.steps=40"), tmp_path / "part", verbose=False)
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write('{"step": 41, "loss": 1.0')  # a line cut by the kill
    cfg = tiny()
    train(cfg, tmp_path / "part", resume=True, verbose=False)
    assert strip_time(read_metrics(tmp_path / "part")) == strip_time(
        read_metrics(tmp_path / "full")
    )
    full = checkpoints.load_model(cfg, checkpoints.find(tmp_path / "full"))
    part = checkpoints.load_model(cfg, checkpoints.find(tmp_path / "part"))
    for (n, p), (_, q) in zip(full.state_dict().items(), part.state_dict().items()):
        assert torch.equal(p, q), n


def test_resume_falls_back_past_a_torn_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny("train.steps=40"), run, verbose=False)
    # Kill during the write of step 40: its weights file is truncated.
    weights = run / "checkpoints" / "step_40.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    usable = [c.step for c in checkpoints.list_checkpoints(run / "checkpoints") if c.optim.exists()]
    assert usable == [20]
    train(tiny(), run, resume=True, verbose=False)
    assert read_metrics(run)[-1]["step"] == 60
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint at step 7"):
        checkpoints.find(run, 7)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="loss became"):
        train(tiny("train.lr=1e6"), run, verbose=False)
    assert checkpoints.list_checkpoints(run / "checkpoints")
    for c in checkpoints.list_checkpoints(run / "checkpoints"):
        model = checkpoints.load_model(tiny(), c)
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sigint_saves_a_checkpoint_at_a_step_boundary(tmp_path):
    import os
    import signal
    import threading

    run = tmp_path / "run"
    cfg = tiny(
        "train.steps=100000",
        "train.ckpt_every=100000",
        "train.ckpt_log_points=0",
        "train.log_every=5",
    )
    threading.Timer(4.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, verbose=False)
    last = checkpoints.list_checkpoints(run / "checkpoints")[-1]
    assert last.step > 0 and last.optim.exists()
    assert (run / "summary.json").exists()
    # it resumes from there to the same numbers as a run that was never stopped
    stop_at = last.step
    cfg_to = tiny(
        "train.steps=100000",
        "train.ckpt_every=100000",
        "train.ckpt_log_points=0",
        "train.log_every=5",
    )
    cfg_to.train.steps = stop_at + 10
    train(cfg_to, run, resume=True, verbose=False)
    train(cfg_to, tmp_path / "straight", verbose=False)
    assert strip_time(read_metrics(run)) == strip_time(read_metrics(tmp_path / "straight"))


def test_curriculum_off_is_bit_identical_and_on_changes_only_training_data(tmp_path):
    train(tiny("train.steps=20"), tmp_path / "plain", verbose=False)
    train(
        tiny("train.steps=20", "curriculum.mean=0", "curriculum.hold=10"),
        tmp_path / "zero",
        verbose=False,
    )
    train(
        tiny("train.steps=20", "curriculum.mean=0.5", "curriculum.hold=10"),
        tmp_path / "shift",
        verbose=False,
    )
    plain, zero, shift = (
        strip_time(read_metrics(tmp_path / x)) for x in ("plain", "zero", "shift")
    )
    assert plain == zero
    assert plain[1]["loss"] != shift[1]["loss"]


def test_curriculum_schedule():
    c = tiny("curriculum.mean=0.5", "curriculum.hold=100", "curriculum.decay=100").curriculum
    assert [c.shift(s) for s in (1, 100, 150, 200, 201)] == [0.5, 0.5, 0.25, 0.0, 0.0]


def test_sudden_is_the_window_rule_plateau_then_5x_within_a_quarter_of_it():
    from abrupt.dynamics.transition import summarize

    def curve(f):
        return [{"step": s, "eval_loss_mask": f(s)} for s in range(0, 12001, 50)]

    cliff = summarize(
        curve(lambda s: 0.2 if s < 8000 else max(0.01, 0.2 * 0.05 ** ((s - 8000) / 1000)))
    )
    assert cliff["dropped"] and cliff["sudden"] and cliff["fall_ratio"] < 0.1
    assert 7000 <= cliff["plateau_steps"] <= 8200 and cliff["drop_factor"] >= 19
    slide = summarize(curve(lambda s: 0.2 if s <= 1000 else 0.2 * 0.05 ** (s / 12000)))
    assert (
        slide["dropped"]
        and not slide["sudden"]
        and slide["fall_ratio"] > 1
        and slide["drop_factor"] < 2
    )
    # a sharp drop to 7x below, then a long slow tail: sudden, though never 10x below the plateau
    tail = summarize(
        curve(
            lambda s: (
                0.2 if s < 8000 else max(0.03 - 1e-6 * (s - 8000), 0.2 * 0.05 ** ((s - 8000) / 300))
            )
        )
    )
    assert tail["sudden"] and not tail["dropped"] and 6 < tail["drop_factor"] < 8
    shallow = summarize(
        curve(lambda s: 0.2 if s < 8000 else max(0.05, 0.2 * 0.05 ** ((s - 8000) / 1000)))
    )
    assert (
        not shallow["dropped"] and not shallow["sudden"] and shallow["drop_factor"] == 4.0
    )  # only 4x below
    flat = summarize(curve(lambda s: 0.2))
    assert flat["plateau_steps"] is None and not flat["sudden"]


def test_loss_plot_shows_the_judged_window_and_the_progress_measures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from abrupt.dynamics.transition import summarize
    from abrupt.plots import _draw_losses, _draw_progress, plot_losses

    rows = [
        {
            "step": s,
            "eval_loss": 0.1,
            "eval_loss_obs": 0.001,
            "eval_loss_mask": 0.2 if s < 8000 else 0.01,
            "prog_row_mass": 0.2 if s < 7900 else 0.9,
            "prog_col_mass": 0.2,
            "prog_collapse": 0.8,
            "prog_pos_purity": 0.1,
        }
        for s in range(0, 12001, 50)
    ]
    summary = summarize(rows)
    fig, (top, bottom) = plt.subplots(2)
    _draw_losses(top, rows, summary)
    _draw_progress(bottom, rows, summary)
    top_labels, bottom_labels = (
        top.get_legend_handles_labels()[1],
        bottom.get_legend_handles_labels()[1],
    )
    plt.close(fig)
    F = summary["drop_factor"]
    assert f"plateau_end {summary['plateau_end']} + P/4: F {F:.3g} (sudden)" in top_labels
    assert {
        "max row mass of a head",
        "max column mass of a head",
        "position k-NN purity by column",
    } <= set(bottom_labels)
    plot_losses(rows, summary, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_tf32_is_on_only_inside_its_block_and_never_through_the_legacy_flags():
    from abrupt.train.trainer import tf32

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    with tf32(False):
        assert (matmul.fp32_precision, conv.fp32_precision) == before
    with pytest.raises(ZeroDivisionError):
        with tf32(True):
            assert matmul.fp32_precision == conv.fp32_precision == "tf32"
            1 / 0
    assert (matmul.fp32_precision, conv.fp32_precision) == before
    assert matmul.allow_tf32 is False  # readable: the legacy and new settings were not mixed


def test_tf32_on_a_torch_without_fp32_precision_sets_and_restores_the_legacy_flags(monkeypatch):
    from types import SimpleNamespace

    from abrupt.train.trainer import tf32

    # torch < 2.9: the matmul backend has allow_tf32 only, cudnn has no `conv`
    matmul, cudnn = SimpleNamespace(allow_tf32=False), SimpleNamespace(allow_tf32=False)
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    with pytest.raises(ZeroDivisionError):
        with tf32(True):
            assert matmul.allow_tf32 is cudnn.allow_tf32 is True
            1 / 0
    assert matmul.allow_tf32 is cudnn.allow_tf32 is False


def test_a_folder_of_metrics_alone_is_summarised_as_its_run_is(tmp_path):
    """`abrupt plot` on metrics.jsonl without config.json: no curriculum, the kind from the
    metrics' keys; here the same summary as with the run's configuration."""
    from abrupt.train.summary import finish

    run = Path(__file__).resolve().parents[1] / "docs" / "plateau" / "runs" / "s4_bias3_b256_s0"
    alone, whole = tmp_path / "alone", tmp_path / "whole"
    for folder, names in ((alone, ["metrics.jsonl"]), (whole, ["metrics.jsonl", "config.json"])):
        folder.mkdir()
        for name in names:
            shutil.copy(run / name, folder / name)
    assert finish(alone) == finish(whole)
    assert (alone / "loss.png").exists() and (alone / "summary.json").exists()
