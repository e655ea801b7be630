"""Issues 27 and 44: one test per public bug kind, each failing on the code before its fix."""

import json
import math
import tempfile

import pytest
import torch

from abrupt import interventions
from abrupt.analysis.probe import r_squared
from abrupt.checks import validate_run
from abrupt.config import ConfigError, apply_overrides, preset
from abrupt.data import generator, id_to_value, make_batch, sample_batch
from abrupt.dynamics import forecast, transition
from abrupt.run import checkpoints
from abrupt.run.rundir import read_metrics, write_metrics
from abrupt.train.trainer import train
from conftest import needs_extra


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


@needs_extra("devinterp", "devinterp", "datasets")
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
    # no temporary store left (torch's compiler may put its own cache under the temp dir when it
    # is first imported in this process: not the estimate's)
    assert [p for p in tmp_path.iterdir() if not p.name.startswith("torchinductor")] == []


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


# --- Issue 44 ----------------------------------------------------------------------------------


def test_an_integer_never_passes_through_a_float():
    """cyclopts #582 kind: `seed=9007199254740993` trained seed ...992, a sweep's
    `seed=9007199254740995` trained ...996, and 2^62 - 1 (inside the range) was refused as 2^62."""
    from abrupt.config import MAX_SEED, Config
    from abrupt.sweep.runner import config_of, expand, spec_from_args

    for seed in (2**53 + 1, MAX_SEED - 1):
        assert tiny(f"seed={seed}").seed == seed
    assert tiny("train.steps=1e3", "model.width=32.0").train.steps == 1000
    trial = expand(spec_from_args("tiny", ["seed=9007199254740995"]))[0]
    assert config_of("tiny", trial.overrides).seed == 9007199254740995
    # config.json: a float stands for an integer only below 2^53, where it cannot be a neighbour
    assert Config.from_dict({"seed": 3.0}).seed == 3
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        Config.from_dict({"seed": float(2**60)})
    with pytest.raises(ConfigError, match="at most 100 digits"):
        tiny("train.steps=1e400")


def test_a_spec_file_means_what_it_shows(tmp_path, capsys):
    """pyyaml #173/#165 kind: a key given twice kept the last, `010` was eight, and null became
    the text 'None', which passed as train.init_from."""
    from abrupt.run.rundir import RunDirError, read_config
    from abrupt.sweep.runner import spec_from_file

    def spec(text):
        path = tmp_path / "spec.yaml"
        path.write_text(text if text.startswith("preset") else f"preset: tiny\n{text}\n")
        return spec_from_file(path)

    assert spec("seeds: [010, 011]").seeds == [10, 11]
    assert spec("grid: {train.log_to: [no, off]}").grid == {"train.log_to": ["no", "off"]}
    for text, message in (
        ("grid:\n  model.width: [32, 48]\n  model.width: [64]", 'line 4: .*"model.width"'),
        ("fixed: {train.init_from: null}", "train.init_from: null is not a value"),
        ("grid: {model.width: [32, ~]}", "model.width: null is not a value"),
        ("fixed: {model.width: [32, 48]}", "fixed: model.width takes one value"),
        ("preset: [tiny]", "preset must be a preset's name"),
    ):
        with pytest.raises(ConfigError, match=message) as e:
            spec(text)
        assert "\n" not in str(e.value)
    # the same kind in JSON: a config.json giving a key twice is refused, not read as its last
    run = tmp_path / "run"
    run.mkdir()
    text = json.dumps(tiny().to_dict())
    (run / "config.json").write_text(text.replace('"seed": 0', '"seed": 0, "seed": 5'))
    with pytest.raises(RunDirError, match="key 'seed' given twice"):
        read_config(run)
    with pytest.raises(ConfigError, match="group 'mlp' given twice"):
        validate_run(tiny("train.group_lr=mlp=2,mlp=0.5"))
    # and on a command line that is a spec: a key given twice is refused, not read as its last
    from abrupt.cli import main
    from abrupt.sweep.runner import spec_from_args

    with pytest.raises(ConfigError, match="model.hidden given more than once"):
        spec_from_args("tiny", ["model.width=32", "model.hidden=64"])
    assert main(["analyze", str(run), "--set", "patching.n=8", "--set", "patching.n=16"]) == 2
    assert "--set patching.n given more than once" in capsys.readouterr().err


def test_a_comma_inside_a_list_value_is_not_a_grid(capsys):
    """hydra #573 kind: `train.log_to=tensorboard,wandb` ran a trial per tracker, and no value of
    attn_bias.layers, train.trainable or train.group_lr could hold a comma on the command line."""
    from abrupt.cli import main
    from abrupt.sweep.runner import spec_from_args

    spec = spec_from_args(
        "tiny",
        [
            "seed=0,1",
            "model.width=32,64",
            "train.log_to=tensorboard,wandb",
            "attn_bias.layers=0,1",
            "train.group_lr=pos_embed=10,mlp=0.5",
        ],
    )
    assert spec.seeds == [0, 1] and spec.grid == {"model.width": ["32", "64"]}
    assert spec.fixed == {
        "train.log_to": "tensorboard,wandb",
        "attn_bias.layers": "0,1",
        "train.group_lr": "pos_embed=10,mlp=0.5",
    }
    # `;` separates swept values, of a list key too
    spec = spec_from_args("tiny", ["train.trainable=attention;mlp", "attn_bias.layers=0,1;2"])
    assert spec.grid == {"train.trainable": ["attention", "mlp"], "attn_bias.layers": ["0,1", "2"]}
    assert main(["sweep", "--help"]) == 0
    assert "train.log_to=tensorboard,wandb" in capsys.readouterr().out


def escaping_run(path, escape):
    """A run directory (tiny's config) whose L_mask sits at 0.2 and escapes at `escape`."""
    from abrupt.run.rundir import atomic_write_json

    path.mkdir(parents=True)
    atomic_write_json(path / "config.json", tiny().to_dict())
    rows = [
        {"step": s, "eval_loss_mask": 0.2 if s < escape else 0.2 * 0.5 ** ((s - escape) / 50)}
        for s in range(0, escape + 600, 25)
    ]
    write_metrics(path, rows)


def test_a_run_given_twice_is_one_run(tmp_path, capsys):
    """datasets #4261 kind: `abrupt forecast RUN RUNS` with RUN inside RUNS used one directory as
    a calibration and an evaluation run; `t1 t1` was two runs."""
    from abrupt.cli import main
    from abrupt.dynamics.study import CAL, EVAL, load_runs

    for name, escape in (("a", 2000), ("b", 2500)):
        escaping_run(tmp_path / "runs" / name, escape)
    a = tmp_path / "runs" / "a"
    runs, repeats = load_runs([a, tmp_path / "runs", tmp_path / "runs" / ".." / "runs" / "a"])
    assert [r.role for r in runs] == [CAL, EVAL] and len(repeats) == 2
    out = tmp_path / "out"
    assert main(["forecast", str(a), str(tmp_path / "runs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"dropped as repeats: {a}" in printed
    roles = [r["role"] for r in json.loads((out / "results.json").read_text())["runs"]]
    assert sorted(roles) == [CAL, EVAL]
    assert main(["forecast", str(a), str(a), "--out", str(out)]) == 2
    assert "found 1" in capsys.readouterr().err
    # the same kind in a list option: a setting given twice was computed and counted twice
    from abrupt.analysis.registry import parse_option

    with pytest.raises(ValueError, match="'0.1' given twice"):
        parse_option("compare", "p_masks", "0.1,0.2,0.1")
    assert main(["baseline", "--lambdas", "1e-3,0.001", "--n", "4"]) == 2
    assert "give each number once" in capsys.readouterr().err


def test_the_nnsight_example_compares_like_with_like(tmp_path, monkeypatch, capsys):
    """After `abrupt analyze RUN --only patching --quick` (n 64) the example printed its own
    recovery at n 256 beside the analysis's, with no sign that the sample sizes differ."""
    import runpy
    import sys
    from pathlib import Path

    pytest.importorskip("nnsight")
    from abrupt.cli import main

    run = tmp_path / "run"
    short = ["train.steps=10", "train.batch_size=16", "train.eval_size=32", "train.ckpt_every=10"]
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", *short]) == 0
    assert main(["analyze", str(run), "--only", "patching", "--steps", "10", "--quick"]) == 0
    example = Path(__file__).resolve().parents[1] / "examples" / "nnsight_patching.py"

    def compare(*flags):
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["nnsight_patching.py", str(run), "--head", "1", *flags])
        runpy.run_path(str(example), run_name="__main__")
        out, err = capsys.readouterr()
        return json.loads(out.splitlines()[-1]), err

    got, err = compare()
    ours, theirs = got["nnsight"], got["abrupt analyze"]
    assert got["comparable"] and ours["n"] == theirs["n"] == 64 and err == ""
    assert ours["recovery_hidden"] == pytest.approx(theirs["recovery_hidden"], rel=1e-6, abs=0)
    got, err = compare("--n", "256")
    assert not got["comparable"] and got["nnsight"]["n"] == 256
    assert "not comparable: nnsight at n 256 seed 0, abrupt analyze at n 64 seed 0" in err


HIDE_EXTRAS = """import sys

class Hide:  # as on a machine set up by the README alone: these modules are not installed
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"ray", "devinterp", "datasets"}:
            return None
        return self.inner.find_spec(name, path, target)

sys.meta_path[:] = [Hide(f) for f in sys.meta_path if hasattr(f, "find_spec")]
"""


def test_the_readmes_set_up_then_its_tests_pass_without_the_other_extras(tmp_path):
    """The README's set-up (`.[test]`) then its test command failed one test, which needed
    devinterp (`.ci/run` installed it first, which hid that): every test that needs an extra the
    set-up leaves out skips, saying what to install, and the README's own commands test runs no
    row that needs one."""


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

    import test_readme

    assert not [c for c in test_readme.table_commands() if "--only llc" in c]
    (tmp_path / "sitecustomize.py").write_text(HIDE_EXTRAS)
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    files = ["test_bug_kinds.py", "test_forecast.py", "test_readme.py", "test_failures.py"]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-rs"]
        + ["-m", "extra and not slow", *(str(root / "tests" / f) for f in files)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-2000:]
    skipped = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 4 and all("needs pip install 'abrupt[" in s for s in skipped), skipped

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
