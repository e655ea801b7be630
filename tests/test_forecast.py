"""The escape forecaster (issue 19) on synthetic curves with a known escape and on a committed real
run."""

import json
import math
import random
from pathlib import Path

import pytest

from abrupt.dynamics.forecast import calibrate, forecast, history
from abrupt.dynamics.transition import detect

ROOT = Path(__file__).resolve().parents[1]


def saddle(escape=6000, rate=2e-3, level=0.2, noise=0.002, end=9000, seed=0):
    """A plateau at `level` (multiplicative noise), departing as d = 0.2 exp(rate (t - escape))."""
    rng = random.Random(seed)
    rows = []
    for t in range(0, end + 1, 50):
        d = min(0.2 * math.exp(rate * (t - escape)), 0.95) if t > 500 else 0.0
        start = 1.0 if t == 0 else 0.0
        rows.append(
            {"step": t, "eval_loss_mask": level * (1 - d + start) * (1 + noise * rng.gauss(0, 1))}
        )
    return rows


def test_the_loss_forecast_finds_a_known_escape_before_it_happens():
    rows = saddle()
    true = detect(rows)["escape_step"]
    assert abs(true - 6000) <= 100
    made = {}
    for t in range(1000, 6000, 50):
        f = forecast([r for r in rows if r["step"] <= t])
        assert f.escape is None or f.escape > t  # never a step already past
        if f.escape is not None:
            made[t] = f
    assert not any(t < 3000 for t in made)  # nothing while the departure is inside the noise
    first = min(made)
    assert 3000 <= first <= 5200  # warns well ahead (d grows 2.7x every 500 steps from 1e-3 noise)
    late = made[max(made)]
    assert abs(late.escape - true) <= 150 and late.low <= late.escape <= late.high
    covered = [f.low <= true + 100 and f.high >= true - 100 for f in made.values()]
    assert sum(covered) >= 0.75 * len(covered)  # the interval holds the truth in most forecasts


def test_a_flat_curve_has_no_forecast_and_an_escaped_one_reports_the_escape():
    flat = saddle(escape=10**9)
    for t in (1000, 4000, 9000):
        f = forecast([r for r in flat if r["step"] <= t])
        assert f.escape is None and f.reason
    done = forecast(saddle())
    assert done.reason == "escaped" and done.escape == detect(saddle())["escape_step"]


def test_slower_saddles_are_forecast_later_and_the_study_helpers_agree():
    for rate in (1e-3, 3e-3):
        rows = saddle(rate=rate, escape=7000, end=8000)
        h = history(rows, every=4)
        ahead = [x for x in h if x["escape"] is not None and x["reason"] != "escaped"]
        assert ahead and abs(ahead[-1]["escape"] - detect(rows)["escape_step"]) <= 200
    target = calibrate([(saddle(seed=s), 0) for s in range(3)], "eval_loss_mask")
    assert target is not None


def test_training_writes_forecasts_and_the_report_draws_them(tmp_path):
    from abrupt.config import apply_overrides, preset
    from abrupt.plots import plot_forecast
    from abrupt.run.rundir import read_metrics
    from abrupt.train.trainer import train

    train(
        apply_overrides(preset("tiny"), ["train.steps=20", "train.log_every=5"]),
        tmp_path / "run",
        progress=False,
    )
    assert all(
        "forecast_escape" not in r for r in read_metrics(tmp_path / "run")
    )  # no plateau yet: nothing written
    train(
        apply_overrides(preset("tiny"), ["train.steps=20", "train.forecast=false"]),
        tmp_path / "off",
        progress=False,
    )
    rows = saddle()
    for i, r in enumerate(rows):
        r.update(forecast(rows[: i + 1]).as_row())
    assert sum("forecast_escape" in r for r in rows) > 10
    plot_forecast(rows, detect(rows), tmp_path / "forecast.png")
    assert (tmp_path / "forecast.png").stat().st_size > 1000


def test_a_committed_real_run_mws_held_out():
    """docs/forecast/mws_c1_seed0.jsonl (a held-out run of the study): the loss alone gives no
    forecast
    before its short plateau ends; attention progress with the target calibrated on the other runs
    (docs/forecast/summary.md) forecasts the escape 40 steps ahead, within 15 steps."""
    rows = [
        json.loads(line)
        for line in (ROOT / "docs/forecast/mws_c1_seed0.jsonl").read_text().splitlines()
    ]
    escape = detect(rows)["escape_step"]
    assert escape == 160
    for signal, target in (("loss", 0.2), ("prog_attn_l0", 0.427)):
        seen = [forecast(rows[:i], signal, target) for i in range(1, len(rows) + 1)]
        assert all(
            f.escape > f.step for f in seen if f.escape is not None and f.reason != "escaped"
        )
    loss = [forecast(rows[:i]) for i in range(1, len(rows) + 1)]
    assert not any(f.escape is not None and f.step < escape for f in loss)
    assert loss[-1].escape == escape
    early = [
        f
        for f in (forecast(rows[:i], "prog_attn_l0", 0.427) for i in range(1, len(rows) + 1))
        if f.step <= 120 and f.escape
    ]
    assert early and abs(early[-1].escape - escape) <= 15


def test_training_can_forecast_from_a_progress_measure(tmp_path):
    from abrupt.config import ConfigError, apply_overrides, preset

    with pytest.raises(ConfigError, match="train.forecast_signal"):
        apply_overrides(preset("tiny"), ["train.forecast_signal=prog_row_mass"])
    with pytest.raises(ConfigError, match="train.forecast_signal"):
        apply_overrides(preset("tiny"), ["train.forecast_signal=grad_norm"])
    apply_overrides(
        preset("tiny"),
        ["train.progress=true", "train.forecast_signal=prog_row_mass", "train.forecast_target=0.3"],
    )


def fake_run(path, escape, seed):
    """A run directory whose L_mask escapes at `escape` and whose progress measure starts growing
    600 steps earlier."""
    from abrupt.config import preset
    from abrupt.run.rundir import atomic_write_json, write_metrics

    rows = saddle(escape=escape, seed=seed, end=escape + 1500)
    for r in rows:
        t = r["step"]
        r["prog_row_mass"] = (
            0.12
            + (min(0.5, 0.05 * math.exp(2e-3 * (t - escape + 600))) if t > 500 else 0)
            + 0.001 * random.Random(t + seed).gauss(0, 1)
        )
    path.mkdir(parents=True)
    atomic_write_json(path / "config.json", preset("tiny").to_dict())
    write_metrics(path, rows)


def test_the_study_command_measures_lead_times_on_held_out_runs(tmp_path, capsys):
    from abrupt.cli import main

    for i, escape in enumerate((3000, 4000, 5000, 6000)):
        fake_run(tmp_path / "sweep" / f"seed={i}", escape, i)
    assert (
        main(["forecast", str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--every", "2"])
        == 0
    )
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    leads = {r["signal"]: r for r in result["leads_all"]}
    assert leads["loss"]["warned"] == 4 and leads["prog_row_mass"]["warned"] >= 3
    assert (
        leads["prog_row_mass"]["lead_median"] > leads["loss"]["lead_median"] + 300
    )  # the measure moves ~600 steps earlier
    assert {e["signal"] for e in result["errors"]} == {"loss", "prog_row_mass"}
    assert all(e["forecast"] > e["made_at"] for e in result["errors"])
    assert (tmp_path / "out" / "error_vs_horizon.png").stat().st_size > 1000
    assert main(["forecast", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def test_llc_analysis_estimates_finite_reproducible_values(tmp_path):
    pytest.importorskip("devinterp")
    from abrupt.cli import main

    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--quiet",
                "--out",
                str(tmp_path / "run"),
                "train.steps=20",
            ]
        )
        == 0
    )
    opts = [
        "--set",
        "llc.n=64",
        "--set",
        "llc.batch=32",
        "--set",
        "llc.draws=4",
        "--set",
        "llc.chains=1",
    ]
    assert main(["analyze", str(tmp_path / "run"), "--only", "llc", *opts]) == 0
    first = json.loads((tmp_path / "run" / "analysis" / "llc" / "results.json").read_text())
    assert main(["analyze", str(tmp_path / "run"), "--only", "llc", *opts]) == 0
    again = json.loads((tmp_path / "run" / "analysis" / "llc" / "results.json").read_text())
    values = (
        [r["llc"] for r in first["numbers"]["rows"]]
        if "numbers" in first
        else [r["llc"] for r in first["rows"]]
    )
    assert len(values) == 2 and all(math.isfinite(v) for v in values)
    assert first == {**again, "seconds": first.get("seconds")} or values == (
        [r["llc"] for r in again["numbers"]["rows"]]
        if "numbers" in again
        else [r["llc"] for r in again["rows"]]
    )
