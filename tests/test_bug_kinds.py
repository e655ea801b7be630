"""Issue 27: one test per public bug kind, each failing on the code before its fix."""

import json
import math
import tempfile

import pytest
import torch

from abrupt import interventions
from abrupt.analysis.probe import r_squared
from abrupt.config import ConfigError, apply_overrides, preset
from abrupt.data import generator, id_to_value, make_batch, sample_batch
from abrupt.dynamics import forecast, transition
from abrupt.run import checkpoints
from abrupt.run.rundir import read_metrics, write_metrics
from abrupt.train.trainer import train


def tiny(*overrides):
    return apply_overrides(preset("tiny"), list(overrides))


@pytest.fixture
def drop_at_step_20(monkeypatch):
    """`detect` says `dropped` from the log of step 20 on (tiny runs never drop by themselves)."""
    real = transition.detect

    def detect(rows, **kw):
        return {**real(rows, **kw), "dropped": bool(rows) and rows[-1]["step"] >= 20}

    monkeypatch.setattr(transition, "detect", detect)


def last_step(run):
    return checkpoints.list_checkpoints(run / "checkpoints")[-1].step


def test_early_stop_countdown_survives_resume(tmp_path, drop_at_step_20):
    """transformers #28544 kind: the countdown of train.stop_after_drop went back to zero on
    resume."""

    def run(name, steps, resume=False):
        cfg = tiny(f"train.steps={steps}", "train.stop_after_drop=25")
        train(cfg, tmp_path / name, resume=resume, verbose=False)
        return last_step(tmp_path / name)

    assert run("straight", 100) == 45
    # interrupted at step 41 (its last checkpoint), then resumed: stops at 45 too (it stopped at 75)
    run("resumed", 41)
    assert run("resumed", 100, resume=True) == 45
    straight = checkpoints.load_tensors(checkpoints.find(tmp_path / "straight").weights)
    resumed = checkpoints.load_tensors(checkpoints.find(tmp_path / "resumed").weights)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # the same 45 steps
    # a checkpoint written before the countdown was recorded: rebuilt from the logged rows
    run("old", 41)
    side = checkpoints.find(tmp_path / "old").path
    meta = json.loads(side.read_text())
    del meta["drop_seen_at"]
    side.write_text(json.dumps(meta))
    assert run("old", 100, resume=True) == 45
    # resuming a run its early stop already ended trains nothing more
    assert run("straight", 100, resume=True) == 45
    assert read_metrics(tmp_path / "straight")[-1]["step"] == 45  # the stop step has its row


def test_drop_seen_at_reads_rows_prefix_by_prefix():
    rows = [{"step": s, "eval_loss_mask": 0.2} for s in range(0, 400, 10)]
    rows += [
        {"step": s, "eval_loss_mask": 0.2 * 0.5 ** ((s - 390) / 10)} for s in range(400, 600, 10)
    ]
    seen = transition.drop_seen_at(rows)
    i = next(i for i, r in enumerate(rows) if r["step"] == seen)
    assert (
        transition.detect(rows[: i + 1])["dropped"] and not transition.detect(rows[:i])["dropped"]
    )


@pytest.fixture
def llc_model():
    pytest.importorskip("devinterp")
    from abrupt.analysis import llc
    from abrupt.data import seeded_batch

    cfg = tiny()
    model = tiny_model(cfg)
    ids = llc._pack(seeded_batch(cfg.data, 64, 0))
    return llc, model, ids


def tiny_model(cfg):
    from abrupt import tasks

    torch.manual_seed(0)
    return tasks.get("matrix").build_model(cfg)


def test_llc_diverged_chains_are_failures_not_values(llc_model, tmp_path, monkeypatch):
    """devinterp #55 kind (diverged chains reported as 1.65e15), #39 kind (one chain's spread
    reported as 0.0) and echopype #825 kind (each estimate left its samples.zarr behind)."""
    llc, model, ids = llc_model
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = dict(
        loss_fn=llc._loss_fn,
        n_beta=64 / math.log(64),
        localization=100.0,
        draws=6,
        batch_size=32,
        seed=0,
    )
    bad = llc.estimate(model, ids, lr=0.5, chains=2, **args)
    assert bad["llc"] is None and bad["llc_std"] is None
    assert "2 of 2 chains failed" in bad["failed"] and "lower llc.lr" in bad["failed"]
    one = llc.estimate(model, ids, lr=1e-4, chains=1, **args)
    assert one["failed"] is None and math.isfinite(one["llc"]) and one["llc_std"] is None
    two = llc.estimate(model, ids, lr=1e-4, chains=2, **args)
    assert two["failed"] is None and two["llc_std"] > 0
    assert list(tmp_path.iterdir()) == []  # no temporary store left


def test_chain_failures_names_nan_and_divergence():
    from abrupt.analysis.llc import chain_failures

    assert chain_failures([1.0, 2.0], [[0.2, 0.3], [0.2, 0.25]], 0.2) == []
    reasons = chain_failures([float("nan"), 1e15], [[0.2, float("inf")], [0.2, 1e13]], 0.2)
    assert reasons[0].startswith("chain 0: its loss became NaN") and reasons[1].startswith(
        "chain 1: its loss rose"
    )


def zero_loss_rows():
    """A plateau at 0.2, then the loss exactly 0 (float32 cross-entropy reaches it)."""
    rows = []
    for s in range(0, 600, 10):
        level = 0.2 if s < 400 else 0.0
        rows.append(
            {
                "step": s,
                "loss": level,
                "loss_obs": 1e-3,
                "loss_mask": level,
                "eval_loss": level,
                "eval_loss_obs": 1e-3,
                "eval_loss_mask": level,
            }
        )
    return rows


def test_an_infinite_drop_factor_prints_as_strict_json(tmp_path, capsys):
    """sentry #1979 kind: the CLI printed Infinity, which strict JSON parsers reject."""
    from abrupt.cli import main

    run = tmp_path / "run"
    train(tiny("train.steps=10"), run, verbose=False)
    write_metrics(run, zero_loss_rows())
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    summary = json.loads(out, parse_constant=refuse)
    assert summary["sudden"] is True and summary["drop_factor"] is None
    assert json.loads((run / "summary.json").read_text(), parse_constant=refuse) == summary


def test_forecast_on_a_plateau_at_zero_says_why():
    rows = [{"step": s, "eval_loss_mask": 0.0} for s in range(0, 400, 10)]
    f = forecast.forecast(rows)
    assert f.escape is None and "level is 0" in f.reason
    nan_measure = [
        {"step": s, "eval_loss_mask": 0.2, "prog_x": float("nan")} for s in range(0, 400, 10)
    ]
    assert forecast.forecast(nan_measure, "prog_x", 0.1).escape is None


def test_r_squared_divides_by_the_variance_over_n():
    """scikit-learn #17266 kind: a constant predictor scored 0.25 on 4 points instead of 0."""
    from sklearn.metrics import r2_score

    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    const = torch.full_like(y, y.mean())
    assert r_squared(((const - y) ** 2).mean().item(), y) == pytest.approx(0.0, abs=1e-12)
    pred = torch.tensor([1.1, 1.8, 3.3, 3.9])
    assert r_squared(((pred - y) ** 2).mean().item(), y) == pytest.approx(
        r2_score(y.numpy(), pred.numpy())
    )
    assert math.isnan(r_squared(0.0, torch.ones(3)))


def test_an_option_accepted_does_not_crash_mid_run():
    """attn_scale_from on matrices passed validation and died at the first step."""
    with pytest.raises(ConfigError, match="attn_scale.start"):
        tiny("attn_scale.start=5")


def test_one_schedule_for_training_and_loading(tmp_path):
    cfg = tiny("attn_bias.factor=3", "attn_bias.until=20", "train.steps=40")
    train(cfg, tmp_path / "run", verbose=False)
    for step, on in ((0, True), (20, True), (40, False)):
        model = checkpoints.load_model(cfg, checkpoints.find(tmp_path / "run", step))
        acting = "attn_bias" in model.attention_edits
        assert acting is on is interventions.get("attn_bias").on(cfg, step)
    seq = apply_overrides(preset("mws"), ["attn_scale.factor=2", "attn_scale.start=5"])
    assert [interventions.get("attn_scale").on(seq, s) for s in (4, 5)] == [False, True]


def test_a_token_and_its_target_are_one_rounding():
    """blue-oil #397 kind: 2.675 gave token 2.67 and target 2.68."""
    m = torch.tensor([[[2.675, 0.015], [-2.675, 1.005]]])
    b = make_batch(m, torch.zeros(1, 4, dtype=torch.bool))
    assert torch.equal(id_to_value(b.tokens), b.target)
    assert b.target.tolist()[0][:2] == pytest.approx([2.67, 0.01])
    batch = sample_batch(preset("cpu").data, 4096, generator(0))
    seen = ~batch.mask
    assert torch.equal(id_to_value(batch.tokens[seen]), batch.target[seen])


def test_an_override_cannot_relabel_a_run():
    with pytest.raises(ConfigError, match="--preset"):
        tiny("preset=small")


def test_a_size_mixture_refuses_batches_that_starve_sizes():
    with pytest.raises(ConfigError, match="train.batch_size=2 is below the 6 sizes"):
        tiny("data.sizes=2x2,3x3,4x4,5x5,6x6,7x7", "data.rank=1", "train.batch_size=2")
    with pytest.raises(ConfigError, match="train.eval_size=3"):
        tiny("data.sizes=5x5,6x6,7x7,7x6", "data.rank=1", "train.eval_size=3")


# Issue 44 (items 1, 2, 6, 9, 10)


@pytest.fixture
def trackers(monkeypatch, tmp_path, one_thread):
    """TensorBoard and W&B (offline, its user-level files in the test's folder): the override."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return "train.log_to=tensorboard,wandb"


def tensorboard_loss_steps(run):
    """The steps of TensorBoard's `loss` points, as TensorBoard shows them (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    return [e.step for e in ea.Scalars("loss")]


def tensorboard_status(run):
    """The HPARAMS session's end status (api.proto's name); None when none was written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    ea.Reload()
    content = ea.PluginTagToContent("hparams").get("_hparams_/session_end_info")
    if content is None:
        return None
    status = plugin_data_pb2.HParamsPluginData.FromString(content).session_end_info.status
    return api_pb2.Status.Name(status)


def wandb_segments(run, wait=30.0):
    """Each offline W&B segment of the run, oldest first: (its exit code, None without one; the
    steps of its rows). W&B's service may still write the last file after finish() returns: read
    again, for up to `wait` seconds, until that one has its exit record."""
    import time

    from abrupt.tracking import wandb_records

    deadline = time.monotonic() + wait
    while True:
        segments = []
        for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
            code, steps = None, []
            for r in wandb_records(path):
                kind = r.WhichOneof("record_type")
                if kind == "exit":
                    code = r.exit.exit_code
                elif kind == "history" and any(
                    (i.key or "/".join(i.nested_key)) == "loss" for i in r.history.item
                ):
                    steps.append(r.history.step.num)
            segments.append((code, steps))
        if segments[-1][0] is not None or time.monotonic() > deadline:
            return segments
        time.sleep(0.5)


def cut_events(path, step):
    """Cut a TensorBoard event file (TFRecords: length (8), its crc (4), an Event, crc (4)) before
    its first event at `step`, as a writer killed before flushing them leaves it."""
    import struct

    from tensorboard.compat.proto.event_pb2 import Event

    data, pos = path.read_bytes(), 0
    while pos < len(data):
        length = struct.unpack("<Q", data[pos : pos + 8])[0]
        if Event.FromString(data[pos + 12 : pos + 12 + length]).step >= step:
            break
        pos += 16 + length
    path.write_bytes(data[:pos])


def test_a_resume_leaves_each_tracker_every_row_of_the_record_once(tmp_path, trackers):
    """wandb #4624 / tango #152 kind: a killed segment's W&B file held none of its rows (W&B had
    flushed no block) and TensorBoard lost its unflushed events, yet the resume logged only the
    rows after its checkpoint (rows W&B held past it were logged a second time); a run killed
    after its last checkpoint could not be resumed to repair its trackers."""
    # (tests/test_tracking.py: rows W&B holds past the checkpoint are not logged again)
    for name, checkpointed in (
        ("lost", False),  # killed after logging step 40, before its checkpoint (the last: 20)
        ("ended", True),  # killed after the last checkpoint, before the trackers closed
    ):
        run = tmp_path / name
        train(tiny(trackers, "train.steps=40"), run, verbose=False)
        if not checkpointed:
            for path in (run / "checkpoints").glob("step_40.*"):
                path.unlink()
        # W&B had written its header alone; TensorBoard its hparams and rows 1 and 10
        (wandb_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
        wandb_file.write_bytes(wandb_file.read_bytes()[:7])
        (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
        cut_events(events, 20)
        train(tiny(trackers, "train.steps=40"), run, resume=True, verbose=False)
        steps = [r["step"] for r in read_metrics(run)]
        assert steps == [1, 10, 20, 30, 40]
        assert tensorboard_loss_steps(run) == steps, name
        assert [s for _, held in wandb_segments(run) for s in held] == steps, name


def test_trackers_record_the_outcome_as_the_run_ends(tmp_path, trackers, monkeypatch):
    """tensorboard #5596 kind: the HPARAMS session's end status was written at step 0 as a
    success, before any outcome (a divergence and an interruption carried it too); W&B marked an
    interruption failed."""
    import signal

    from abrupt.train.trainer import Trainer, TrainingError

    diverged = tmp_path / "diverged"
    cfg = tiny(trackers, "train.lr=1e4", "model.attn_temperature=1e-4")
    with pytest.raises(TrainingError, match="diverged"):
        train(cfg, diverged, verbose=False)
    assert tensorboard_status(diverged) == "STATUS_FAILURE"
    assert [code for code, _ in wandb_segments(diverged)] == [1]

    # Ctrl-C during step 15: no status (Unknown, as a killed run), since TensorBoard keeps the
    # first a run writes and the resume's is the outcome; W&B's own code for Ctrl-C
    real_step = Trainer.step

    def step(self, n, want_norms):
        if n == 15:
            signal.raise_signal(signal.SIGINT)
        return real_step(self, n, want_norms)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(trackers, "train.steps=30"), interrupted, verbose=False)
    assert tensorboard_status(interrupted) is None
    assert [code for code, _ in wandb_segments(interrupted)] == [255]
    monkeypatch.setattr(Trainer, "step", real_step)
    train(tiny(trackers, "train.steps=30"), interrupted, resume=True, verbose=False)
    assert tensorboard_status(interrupted) == "STATUS_SUCCESS"
    assert [code for code, _ in wandb_segments(interrupted)] == [255, 0]


def test_the_step_a_run_ends_at_is_its_last_row(tmp_path, drop_at_step_20):
    """luz #64 kind: a stop rule ending the run between log steps (at 45) wrote its last
    checkpoint there, but its last metrics row and summary.json said 40: the model the analyses
    call post-drop was one the metrics never described. A run whose train.steps is no multiple of
    train.log_every ends with its row too."""
    for name, overrides in (
        ("stopped", ["train.steps=100", "train.stop_after_drop=25"]),
        ("steps", ["train.steps=45"]),
    ):
        run = tmp_path / name
        summary = train(tiny(*overrides), run, verbose=False)
        assert read_metrics(run)[-1]["step"] == summary["steps"] == last_step(run) == 45, name


def test_a_command_that_writes_into_a_run_refuses_while_training_holds_it(tmp_path, capsys):
    """One writer per run directory: `abrupt plot RUN` rewrote summary.json and loss.png while
    `abrupt train` held the run's lock (a second --resume was refused); analyze, compare, ood,
    report and components wrote into it too."""
    from abrupt.cli import main
    from abrupt.run.rundir import RunLock

    run = tmp_path / "run"
    train(tiny("train.steps=10"), run, verbose=False)
    files = lambda: {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != ".lock"}  # noqa: E731
    before = files()
    commands = {
        "plot": [],
        "analyze": ["--only", "progress"],
        "compare": ["--n", "4"],
        "ood": ["--n", "4"],
        "report": [],
        "components": ["--steps", "2"],
    }
    refused = (
        f"abrupt: error: {run} is in use by another process (it holds {run / '.lock'}); wait for "
        "it to finish or stop it first\n"
    )
    with RunLock(run):  # as `abrupt train` holds it while it trains
        for command, flags in commands.items():
            capsys.readouterr()
            assert main([command, str(run), *flags]) == 2, command
            assert capsys.readouterr().err == refused, command
    assert files() == before  # nothing written


# `abrupt` commands one after the other in one process, each command's words ended by a '+'
_COMMANDS = """import sys
from abrupt.cli import main
commands, words = [], []
for word in sys.argv[1:]:
    commands, words = (commands + [words], []) if word == "+" else (commands, words + [word])
codes = [main(command) for command in commands]
print(codes)
sys.exit(max(codes))
"""


def test_text_the_terminal_or_locale_cannot_encode_stops_no_command(tmp_path, monkeypatch):
    """Output encoding: `PYTHONIOENCODING=ascii abrupt train --out ü` trained and then died at
    its last print (UnicodeEncodeError, exit 1); under an ASCII locale (LC_ALL=C without UTF-8
    mode) the report's template ('×') could not be read, nor the forecast study's summary.md
    ('–') written."""
    import io
    import os
    import subprocess
    import sys
    from pathlib import Path

    from abrupt.cli import main

    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="ascii") for _ in range(2))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    run = tmp_path / "ü"
    train_ = ["train", "--preset", "tiny", "--quiet", "--out", str(run), "train.steps=10"]
    assert main(train_) == 0
    assert main(train_) == 2  # refused: it holds a run (the message names the path)
    out.flush(), err.flush()
    assert f"run directory: {tmp_path}/\\xfc\n" in out.buffer.getvalue().decode()
    assert f"abrupt: error: {tmp_path}/\\xfc already holds a run" in err.buffer.getvalue().decode()

    runs = Path(__file__).resolve().parents[1] / "docs" / "forecast" / "runs" / "mws_log2"
    words = ["report", str(run), "+", "forecast", str(runs), "--out", str(run / "forecast"), "+"]
    ascii_locale = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", _COMMANDS, *words],
        env={**os.environ, **ascii_locale, "PYTHONIOENCODING": "ascii", "OMP_NUM_THREADS": "1"},
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    # the path's bytes, which the locale could not decode, printed back as they were
    assert done.stdout.decode().splitlines() == [
        f"wrote {run / 'report.html'}",
        f"wrote {run / 'forecast' / 'summary.md'} and intervals.png",
        "[0, 0]",
    ]
    assert "×" in (run / "report.html").read_text(encoding="utf-8")
