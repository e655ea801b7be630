"""Sweeps: spec parsing and expansion, backends giving the same numbers, failures, kills, one sweep
per directory."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from abrupt.cli import main
from abrupt.config import ConfigError
from abrupt.sweep.runner import Sweep, expand, read_results, spec_from_args, spec_from_file

QUIET = ["--preset", "tiny", "--quiet", "--workers", "2"]


def comparable(path):
    """results.jsonl without wall-clock fields."""
    rows = []
    for row in read_results(path):
        row.pop("seconds")
        if row.get("summary"):
            row["summary"].pop("seconds")
        rows.append(row)
    return rows


def test_grid_from_the_command_line():
    spec = spec_from_args("tiny", ["model.width=16,32", "seed=0,1,2", "train.steps=40"])
    assert (
        spec.grid == {"model.width": ["16", "32"]}
        and spec.seeds == [0, 1, 2]
        and spec.fixed == {"train.steps": "40"}
    )
    trials = expand(spec)
    assert [t.name for t in trials] == [f"width={h}_seed={s}" for h in (16, 32) for s in (0, 1, 2)]
    assert trials[4].overrides == {"train.steps": "40", "model.width": "32", "seed": "1"}


def test_spec_file_with_zip_and_a_seed_count(tmp_path):
    path = tmp_path / "depth.yaml"
    path.write_text(
        "preset: tiny\nfixed: {train.steps: 40}\ngrid: {model.heads: [1, 2]}\n"
        "zip: {model.layers: [1, 2], model.mlp: [32, 64]}\nseeds: 2\n"
    )
    spec = spec_from_file(path)
    trials = expand(spec)
    assert len(trials) == 2 * 2 * 2
    assert {(t.overrides["model.layers"], t.overrides["model.mlp"]) for t in trials} == {
        ("1", "32"),
        ("2", "64"),
    }
    assert {t.overrides["seed"] for t in trials} == {"0", "1"}


@pytest.mark.parametrize(
    "items,message",
    [
        (["model.bogus=1,2"], "unknown key"),
        (["model.width="], "non-empty"),
        (["model.width=16,x"], "expected an integer"),
        (["model.heads=3,4"], "must divide"),
        (["seed=a,b"], "seed"),
    ],
)
def test_bad_specs_are_refused_before_any_trial(items, message):
    with pytest.raises(ConfigError, match=message):
        expand(spec_from_args("tiny", items))


def test_bad_spec_on_the_command_line_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", *QUIET, "--out", str(out), "model.width=16,30", "model.heads=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "width=30" in err[0]
    assert not out.exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {model.width: [16]}\nextra: 1\n")
    assert main(["sweep", str(bad), *QUIET, "--out", str(out)]) == 2
    assert not out.exists()


def test_a_failed_trial_is_recorded_and_the_others_finish(tmp_path):
    out = tmp_path / "sw"
    assert (
        main(["sweep", *QUIET, "--out", str(out), "train.device=cpu,cuda", "train.steps=20"]) == 0
    )
    rows = {r["trial"]: r for r in read_results(out / "results.jsonl")}
    assert rows["device=cpu"]["status"] == "done" and rows["device=cpu"]["summary"]["steps"] == 20
    assert (
        rows["device=cuda"]["status"] == "failed"
        and "CUDA is not available" in rows["device=cuda"]["error"]
    )
    summary = (out / "summary.md").read_text()
    assert (
        "Failed trials" in summary
        and (out / "curves.png").exists()
        and (out / "by_train_device.png").exists()
    )
    # each trial is an ordinary run directory
    assert main(["analyze", str(out / "device=cpu"), "--only", "probe"]) == 0


# over 20 s: `python3 -m pytest -m slow` (keeps the default suite under 10 minutes)
@pytest.mark.slow
def test_a_killed_sweep_resumes_to_the_same_results(tmp_path):
    args = [
        "--preset",
        "tiny",
        "--quiet",
        "--workers",
        "2",
        "model.width=16,32",
        "seed=0,1",
        "train.steps=400",
        "train.ckpt_every=50",
    ]
    assert main(["sweep", *args, "--out", str(tmp_path / "straight")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "abrupt.cli", "sweep", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(
        (killed / d / "checkpoints" / "step_100.json").exists()
        for d in ("width=16_seed=0", "width=16_seed=1")
    ):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every trial, outright
    proc.wait()
    assert len(read_results(killed / "results.jsonl")) < 4
    assert main(["sweep", "--resume", str(killed), "--quiet", "--workers", "2"]) == 0
    assert comparable(killed / "results.jsonl") == comparable(
        tmp_path / "straight" / "results.jsonl"
    )


def test_two_sweeps_into_one_directory_are_refused(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", *QUIET, "--out", str(out), "seed=0", "train.steps=10"]) == 0
    assert main(["sweep", *QUIET, "--out", str(out), "seed=1", "train.steps=10"]) == 2
    assert "already holds a sweep" in capsys.readouterr().err
    busy = Sweep.open(out)
    from abrupt.run.rundir import RunLock

    with RunLock(out):  # as a running sweep holds it
        assert main(["sweep", "--resume", str(out), "--quiet"]) == 2
        assert "in use by another process" in capsys.readouterr().err
    assert busy.rows()[0]["status"] == "done"


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("ray") is None,
    reason="Ray not installed (pip install 'abrupt[ray]')",
)
# over 20 s: `python3 -m pytest -m slow` (keeps the default suite under 10 minutes)
@pytest.mark.slow
def test_local_and_ray_give_the_same_numbers(tmp_path):
    args = ["--preset", "tiny", "--quiet", "--workers", "2", "model.width=16,32", "train.steps=30"]
    assert main(["sweep", *args, "--out", str(tmp_path / "local")]) == 0
    assert main(["sweep", *args, "--out", str(tmp_path / "ray"), "--backend", "ray"]) == 0
    local, ray_rows = (
        comparable(tmp_path / "local" / "results.jsonl"),
        comparable(tmp_path / "ray" / "results.jsonl"),
    )
    assert local == ray_rows and all(r["status"] == "done" for r in local)
    m_local = (tmp_path / "local" / "width=32" / "metrics.jsonl").read_text().splitlines()
    m_ray = (tmp_path / "ray" / "width=32" / "metrics.jsonl").read_text().splitlines()
    # noqa: E731
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]
    assert strip(m_local) == strip(m_ray)


def test_sigterm_stops_a_sweep_resumably(tmp_path):
    out = tmp_path / "sw"
    args = [
        "--preset",
        "tiny",
        "--quiet",
        "--workers",
        "1",
        "seed=0,1",
        "train.steps=100000",
        "train.ckpt_every=50",
        "train.log_every=10",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "abrupt.cli", "sweep", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "seed=0" / "checkpoints" / "step_50.json").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    assert (
        proc.stderr.read().strip().splitlines()[-1]
        == f"abrupt: interrupted; resume with `abrupt sweep --resume {out}`"
    )
    rows = read_results(out / "results.jsonl")
    assert [r["status"] for r in rows] == [
        "interrupted",
        "interrupted",
    ]  # the queued trial never started
    assert not (out / "seed=1" / "checkpoints").exists()
    from abrupt.run.rundir import read_metrics

    steps = [r["step"] for r in read_metrics(out / "seed=0")]
    ckpt = max(int(p.name[5:-5]) for p in (out / "seed=0" / "checkpoints").glob("step_*[0-9].json"))
    assert (
        ckpt == steps[-1] or ckpt >= steps[-1] - 10
    )  # stopped at a step boundary with a checkpoint


def test_across_seeds_table_gives_median_and_range_per_setting():
    from types import SimpleNamespace

    from abrupt.sweep.summary import _across_seeds, end_fold

    trials = [
        SimpleNamespace(index=i, overrides={"train.lr": lr, "seed": str(seed)})
        for i, (lr, seed) in enumerate([(lr, s) for lr in ("0.001", "0.003") for s in (0, 1, 2)])
    ]
    summaries = [
        dict(
            plateau_steps=p,
            drop_factor=f,
            sudden=f >= 5,
            plateau_level=0.2,
            final_level=fin,
        )
        for p, f, fin in [
            (1000, 6.0, 0.01),
            (1200, 4.0, 0.04),
            (1100, 5.5, 0.02),
            (900, 2.0, 0.05),
            (800, 3.0, 0.1),
            (700, 1.0, 0.2),
        ]
    ]
    rows = {
        i: {"status": "done", "summary": s, "seconds": 10.0 * (i + 1)}
        for i, s in enumerate(summaries)
    }
    rows[5] = {"status": "failed", "summary": None}
    lines = _across_seeds(SimpleNamespace(trials=trials), rows, ["train.lr"])
    assert (
        lines[4] == "| 0.001 | 3 of 3 | 2 of 3 | 1100 [1000–1200] | 5.5 [4–6] | 10 [5–20] | 0.02 "
        "[0.01–0.04] | 20 [10–30] |"
    )
    assert (
        lines[5]
        == "| 0.003 | 2 of 3 | 0 of 2 | 850 [800–900] | 2.5 [2–3] | 3 [2–4] | 0.075 [0.05–0.1] | "
        "45 [40–50] |"
    )
    assert end_fold({"plateau_level": 0.2, "final_level": 0.0}) is None


def test_the_drop_and_escape_medians_of_an_even_count_are_the_mean_of_the_middle_two():
    from abrupt.sweep.summary import _drop_stats

    rows = [
        {"status": "done", "summary": {"escape_step": e, "drop_step": d, "dropped": False}}
        for e, d in ((1650, 1900), (2800, 3000))
    ]
    text = _drop_stats(rows)
    assert "median 2450, range 1900–3000" in text and "median 2225, range 1650–2800" in text
