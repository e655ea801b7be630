"""train.log_to: TensorBoard and W&B (offline) receive the rows of metrics.jsonl, the configuration
and the summary; a resume continues both without duplicated steps; a failing tracker never stops
training; a missing package is one line before anything is written."""

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from abrupt import tracking
from abrupt.cli import main
from abrupt.run.rundir import read_metrics

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


@pytest.fixture
def offline(monkeypatch, tmp_path, one_thread):
    """W&B offline, its user-level files in the test's folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: every scalar tag's (step, value) points, purges applied."""
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def wandb_records(path: Path):
    """The records of an offline run's .wandb file: W&B's LevelDB-style log (a 7-byte header
    ':W&B', 0xBEE1, version; 32 KiB blocks of chunks, each crc32 (4), length (2), type (1): 1 full,
    2 first, 3 middle, 4 last) of wandb_internal_pb2.Record protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(chunks)
            chunks = b""


def wandb_run(run_dir: Path, wait: float = 30.0) -> list[dict]:
    """Each offline W&B run under RUN/wandb, oldest first: its id, name, group, configuration,
    history rows ({key: value, '_step': step}) and summary. W&B's service process writes the file
    and may still be writing it after `finish()` returns on a loaded machine (a run record missing
    once in a full suite beside two trainings): read again for up to `wait` seconds until every
    run has its run record."""
    deadline = time.monotonic() + wait
    while True:
        out = _wandb_runs(run_dir)
        if all("id" in r for r in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def _wandb_runs(run_dir: Path) -> list[dict]:
    out = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        found = {"config": {}, "history": [], "summary": {}}
        for r in wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                found.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group)
                found["config"].update(
                    {u.key: json.loads(u.value_json) for u in r.run.config.update}
                )
            elif kind == "config":
                found["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "history":
                found["history"].append(
                    {
                        i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in r.history.item
                    }
                )
            elif kind == "summary":
                for u in r.summary.update:
                    found["summary"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
        out.append(found)
    return out


def numeric_keys(rows: list[dict]) -> set[str]:
    return {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}


def train(*args: str) -> int:
    return main(["train", "--preset", "tiny", "--quiet", *args])


def test_both_trackers_hold_the_rows_config_and_summary(tmp_path, offline):
    run = tmp_path / "run"
    assert train("--out", str(run), "train.log_to=tensorboard,wandb", "train.progress=true") == 0
    rows = read_metrics(run)
    summary = json.loads((run / "summary.json").read_text())
    keys = numeric_keys(rows)
    assert {"loss", "eval_loss_mask", "grad_norm_attention", "prog_row_mass", "lr"} <= keys

    # TensorBoard: every numeric field under its name, at the training steps, float32 values
    scalars = tensorboard_scalars(run / "tensorboard")
    assert keys <= set(scalars)
    for key in keys:
        expected = [(r["step"], r[key]) for r in rows if key in r]
        assert [s for s, _ in scalars[key]] == [s for s, _ in expected]
        assert [v for _, v in scalars[key]] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert scalars["summary/final_level"] == [(60, pytest.approx(summary["final_level"]))]
    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    ea.Reload()
    assert "figures/loss" in ea.Tags()["images"] and "summary/text_summary" in ea.Tags()["tensors"]
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["train.lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["model.arch"].string_value == "bert"

    # W&B: one offline run named after the directory, its id kept in RUN/wandb/run_id
    (found,) = wandb_run(run)
    assert found["id"] == (run / "wandb" / "run_id").read_text().strip()
    assert found["name"] == "run" and found["group"] == ""
    assert found["config"]["train"]["lr"] == pytest.approx(1e-3)
    assert [h["_step"] for h in found["history"] if "loss" in h] == [r["step"] for r in rows]
    by_step = {h["_step"]: h for h in found["history"] if "loss" in h}
    for r in rows:
        assert {k: by_step[r["step"]][k] for k in keys & set(r)} == pytest.approx(
            {k: r[k] for k in keys & set(r)}
        )
    last = found["history"][-1]  # the figures at the last step, with its row
    assert last["_step"] == 60 and last["figures/loss/_type"] == "image-file"
    assert (next(run.glob("wandb/offline-run-*")) / "files" / last["figures/loss/path"]).exists()
    assert found["summary"]["final_level"] == pytest.approx(summary["final_level"])
    assert found["summary"]["sudden"] is summary["sudden"]


def test_a_resume_continues_both_without_duplicated_steps(tmp_path, offline):
    run = tmp_path / "run"
    assert train("--out", str(run), "train.log_to=tensorboard,wandb") == 0
    first_rows = read_metrics(run)
    run_id = (run / "wandb" / "run_id").read_text()
    # killed after logging steps 50 and 60 but before the checkpoint of step 60
    for path in (run / "checkpoints").glob("step_60.*"):
        path.unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 10, 20, 30, 40, 50, 60]
    assert [r["loss"] for r in rows] == [r["loss"] for r in first_rows]  # resume is exact

    scalars = tensorboard_scalars(run / "tensorboard")
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert [s for s, _ in scalars["loss"]] == [1, 10, 20, 30, 40, 50, 60]
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [s for s, _ in scalars["summary/final_loss"]] == [60]

    assert (run / "wandb" / "run_id").read_text() == run_id
    before, after = wandb_run(run)
    assert before["id"] == after["id"] == run_id.strip()
    assert [h["_step"] for h in after["history"] if "loss" in h] == [50, 60]  # after step 40


def test_a_resume_from_the_step_0_checkpoint_purges_and_writes_no_second_hparams(
    tmp_path, one_thread
):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    run = tmp_path / "run"
    # every checkpoint keeps its optimizer state, step 0's too
    assert train("--out", str(run), "train.log_to=tensorboard", "train.keep_optim=100") == 0
    first_rows = read_metrics(run)
    # killed after logging every row but before any checkpoint after step 0's (with optimizer)
    for path in (run / "checkpoints").glob("step_*"):
        if not path.name.startswith("step_0."):
            path.unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    scalars = tensorboard_scalars(run / "tensorboard")
    assert [s for s, _ in scalars["loss"]] == [r["step"] for r in first_rows]  # each step once
    sessions = [
        v.tag
        for path in (run / "tensorboard").glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for v in event.summary.value
        if v.tag == "_hparams_/session_start_info"
    ]
    assert len(sessions) == 1


def test_wandb_goes_offline_with_one_warning_when_it_has_no_key_and_never_prompts(
    tmp_path, monkeypatch
):
    import wandb

    asked = []

    def login(**kwargs):
        asked.append(kwargs)
        return False

    monkeypatch.setattr(wandb, "login", login)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.warns(UserWarning, match="goes offline to .*wandb sync") as caught:
        assert tracking.wandb_mode(tmp_path / "run") == "offline"
    assert len(caught) == 1 and asked == [{"prompt": False, "verify": False}]
    monkeypatch.setattr(wandb, "login", lambda **kwargs: True)  # a key in env, settings or netrc
    assert tracking.wandb_mode(tmp_path / "run") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's own setting wins, no login asked
    monkeypatch.setattr(wandb, "login", None)
    assert tracking.wandb_mode(tmp_path / "run") == "disabled"


def test_a_tracker_that_raises_is_one_warning_and_training_goes_on(
    tmp_path, one_thread, monkeypatch
):
    calls = []

    def log(self, step, scalars):
        calls.append(step)
        if len(calls) == 3:
            raise OSError("disk quota exceeded")
        original(self, step, scalars)

    original = tracking.TensorBoard.log
    monkeypatch.setattr(tracking.TensorBoard, "log", log)
    run = tmp_path / "run"
    with pytest.warns(tracking.TrackerWarning) as caught:
        assert train("--out", str(run), "train.log_to=tensorboard") == 0
    warned = [w for w in caught if issubclass(w.category, tracking.TrackerWarning)]
    assert len(warned) == 1 and "tensorboard failed while logging (OSError" in str(
        warned[0].message
    )
    assert calls == [1, 10, 20]  # dropped: never called again
    assert [r["step"] for r in read_metrics(run)] == [1, 10, 20, 30, 40, 50, 60]
    assert json.loads((run / "summary.json").read_text())["steps"] == 60
    assert [s for s, _ in tensorboard_scalars(run / "tensorboard")["loss"]] == [1, 10]


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_package_is_one_line_before_anything_is_written(
    tmp_path, monkeypatch, capsys, name
):
    monkeypatch.setitem(sys.modules, name, None)  # `import NAME` fails, find_spec finds nothing
    monkeypatch.chdir(tmp_path)
    assert train(f"train.log_to={name}") == 2
    assert train("--out", "run", f"train.log_to=tensorboard,{name}") == 2
    err = capsys.readouterr().err
    line = (
        f"abrupt: error: train.log_to={name} needs the {name} package: pip install 'abrupt[{name}]'"
    )
    assert err.splitlines() == [line, line]
    assert list(tmp_path.iterdir()) == []  # no runs/, no run directory
    assert main(["sweep", "--out", "sw", "--preset", "tiny", f"train.log_to={name}"]) == 2
    assert list(tmp_path.iterdir()) == []
    # a run's config.json still reads without the package (analyses, reports, plots need none)
    from abrupt.checks import validate_run
    from abrupt.config import apply_overrides, preset

    validate_run(apply_overrides(preset("tiny"), [f"train.log_to={name}"]))


def test_an_unknown_tracker_is_one_line(tmp_path, capsys):
    assert train("--out", str(tmp_path / "run"), "train.log_to=tensorboard,mlflow") == 2
    assert capsys.readouterr().err == (
        "abrupt: error: train.log_to: unknown tracker 'mlflow'; use tensorboard or wandb, or "
        "several, comma-separated\n"
    )
    assert not (tmp_path / "run").exists()
    assert tracking.names(" wandb, tensorboard,wandb ") == ["wandb", "tensorboard"]
    assert tracking.names("") == []


def test_a_sweeps_trials_share_one_group_and_one_logdir(tmp_path, offline):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    from abrupt.sweep.runner import run_trial

    sweep = tmp_path / "lr-sweep"
    for lr in ("1e-3", "2e-3"):
        fixed = {"train.log_to": "tensorboard,wandb", "train.steps": "10", "train.lr": lr}
        assert run_trial("tiny", fixed, str(sweep / f"lr={lr}"), 1)["status"] == "done"
    assert [wandb_run(sweep / f"lr={lr}")[0]["group"] for lr in ("1e-3", "2e-3")] == [
        "lr-sweep",
        "lr-sweep",
    ]
    logdir = EventMultiplexer().AddRunsFromDirectory(str(sweep))  # tensorboard --logdir SWEEP
    assert sorted(logdir.Runs()) == ["lr=1e-3/tensorboard", "lr=2e-3/tensorboard"]
