"""The escape forecaster (issues 19, 30) on synthetic curves with a known escape and on committed
real runs: the fit, its calibrated interval, what the user sees, and rows it cannot use."""

import json
import math
import random
from pathlib import Path

import pytest

from abrupt.dynamics import calibration as cal
from abrupt.dynamics.forecast import (
    Forecast,
    calibrate,
    calibrated,
    fit_forecast,
    forecast,
    history,
    record,
)
from abrupt.dynamics.transition import detect
from conftest import needs_extra

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


def test_the_loss_fit_finds_a_known_escape_before_it_happens():
    rows = saddle()
    true = detect(rows)["escape_step"]
    assert abs(true - 6000) <= 100
    made = {}
    for t in range(1000, 6000, 50):
        f = fit_forecast([r for r in rows if r["step"] <= t])
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
        h = history(rows, every=4, raw=True)
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
        verbose=False,
    )
    assert all(
        "forecast_escape" not in r for r in read_metrics(tmp_path / "run")
    )  # no plateau yet: nothing written
    train(
        apply_overrides(preset("tiny"), ["train.steps=20", "train.forecast=false"]),
        tmp_path / "off",
        verbose=False,
    )
    rows = saddle()
    for i, r in enumerate(rows):
        r.update(forecast(rows[: i + 1]).as_row())
    assert sum("forecast_escape" in r for r in rows) > 10
    plot_forecast(rows, detect(rows), tmp_path / "forecast.png")
    assert (tmp_path / "forecast.png").stat().st_size > 1000


def test_a_committed_real_run_mws():
    """docs/forecast/runs/mws_c1_seed0 (a held-out run of issue 19's study): the loss alone gives
    no forecast before its short plateau ends; the fit on attention progress, with the target
    calibrated on other runs, forecasts the escape 40 steps ahead, within 15 steps."""
    rows = [
        json.loads(line)
        for line in (ROOT / "docs/forecast/runs/mws_c1_seed0/metrics.jsonl")
        .read_text()
        .splitlines()
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
        for f in (fit_forecast(rows[:i], "prog_attn_l0", 0.427) for i in range(1, len(rows) + 1))
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


def fake_run(path, escape, seed, rate=2e-3):
    """A run directory whose L_mask escapes at `escape` and whose progress measure starts growing
    600 steps earlier (escape 10**9: a run that never escapes)."""
    from abrupt.config import preset
    from abrupt.run.rundir import atomic_write_json, write_metrics

    rows = saddle(escape=escape, seed=seed, end=min(escape + 1000, 8000), rate=rate)
    for r in rows:
        t = r["step"]
        r["prog_row_mass"] = (
            0.12
            + (min(0.5, 0.05 * math.exp(rate * (t - escape + 600))) if t > 500 else 0)
            + 0.001 * random.Random(t + seed).gauss(0, 1)
        )
    path.mkdir(parents=True)
    atomic_write_json(path / "config.json", preset("tiny").to_dict())
    write_metrics(path, rows)


def test_the_study_command_calibrates_on_some_runs_and_evaluates_on_the_others(tmp_path, capsys):
    from abrupt.cli import main

    for i, escape in enumerate((3000, 3500, 4000, 4500, 5000, 5500, 6000, 10**9)):
        fake_run(tmp_path / "sweep" / f"seed={i}", escape, i, rate=(1.5e-3, 2e-3, 3e-3)[i % 3])
    out, table = tmp_path / "out", tmp_path / "calibration.json"
    argv = ["forecast", str(tmp_path / "sweep"), "--out", str(out), "--every", "2"]
    assert main([*argv, "--calibration", str(table)]) == 0
    result = json.loads((out / "results.json").read_text())
    roles = [r["role"] for r in result["runs"]]
    assert roles == ["calibration", "evaluation"] * 3 + ["calibration", "never escapes"]
    rows = {r["signal"]: r for r in result["table"]}
    assert rows["loss"]["evaluation_runs"] == 3 and rows["loss"]["never_runs"] == 1
    assert rows["prog_row_mass"]["first_lead"] > rows["loss"]["first_lead"]  # moves earlier
    assert rows["loss"]["false_alarm_runs"] == 0  # the flat run: never a forecast
    # the table was fit on the 4 calibration runs only, and the study used that table
    written = cal.Calibration.read(table)
    assert written.runs == sorted(r["name"] for r in result["runs"] if r["role"] == "calibration")
    assert written.entries == result["calibration"]["entries"]
    # synthetic saddles of three rates: the calibrated 90% intervals hold the known escape in
    # 82% of the 40 loss forecasts and 83% of the 54 measure forecasts on the evaluation runs
    assert 0.75 <= rows["loss"]["coverage"] <= 0.95 and 0.75 <= rows["prog_row_mass"]["coverage"]
    assert (out / "intervals.png").stat().st_size > 1000
    assert "## Goals" in (out / "summary.md").read_text()
    assert main(["forecast", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def test_the_cell_quantiles_are_numpy_s_with_equal_weights_and_weigh_each_run_once():
    np = pytest.importorskip("numpy")
    rng = random.Random(0)
    values = [rng.gauss(0, 1) for _ in range(200)]
    for q in (0.05, 0.5, 0.95):
        assert cal.weighted_quantile(values, [1.0] * 200, q) == pytest.approx(
            float(np.quantile(values, q, method="inverted_cdf"))
        )
    # one run with 100 scores at 5 and three runs with one score each at 0, 1, 2: by run, the
    # median is 1 (the four runs weigh alike), not 5
    scores = [("a", 5.0)] * 100 + [("b", 0.0), ("c", 1.0), ("d", 2.0)]
    c = cal.cell(scores)
    assert c["runs"] == 4 and c["n"] == 103 and c["q_mid"] == 1.0
    # the conformal tails for 4 runs: 5% x (1 + 1/4) = 6.25% from each end, here the extremes
    assert c["q_low"] == 0.0 and c["q_high"] == 5.0
    assert cal.cell(scores[:2] + scores[-2:]) is None  # too few scores to calibrate
    assert cal.cell([("a", 0.0)] * 30) is None  # too few runs


def test_the_interval_comes_from_the_calibration_table():
    table = cal.Calibration(
        {
            "matrix/loss": {
                "target": 0.2,
                "cells": {
                    "all": {"runs": 5, "n": 50, "q_low": -2.0, "q_mid": 0.0, "q_high": 2.0},
                    "0.5-0.8": {"runs": 4, "n": 30, "q_low": -1.0, "q_mid": -0.5, "q_high": 1.0},
                },
            }
        },
        ["a", "b"],
    )
    fit = Forecast(1000, 2000, 1900, 2100, raw=2000, start=0, basis="the fit's spread")
    # u = 1000 / 2000 = 0.5: the 0.5-0.8 cell; 1000 steps to go by the fit
    f = calibrated(fit, "matrix", "loss", table)
    e = math.exp
    assert (
        (f.escape, f.low, f.high)
        == (
            round(1000 + 1000 * e(-0.5)),
            round(1000 + 1000 * e(-1)),
            round(1000 + 1000 * e(1)),
        )
        == (1607, 1368, 3718)
    )
    assert f.basis == "calibrated on 4 runs (matrix/loss, u 0.5-0.8)"
    early = calibrated(Forecast(500, 3000, raw=3000, start=0), "matrix", "loss", table)
    assert (early.low, early.escape, early.high) == (838, 3000, 18973)  # u 1/6: the 'all' cell
    assert early.basis.endswith("(matrix/loss, all u)")
    none = calibrated(fit, "sequence", "loss", table)
    assert (none.escape, none.low, none.high) == (2000, 1900, 2100)
    assert none.basis.startswith("uncalibrated")
    # the table was fit at the loss's target 0.2: a forecast to another target is not its
    other = calibrated(fit, "matrix", "loss", table, target=0.3)
    assert (other.escape, other.low, other.high) == (2000, 1900, 2100)
    assert other.basis == (
        "uncalibrated (matrix/loss calibrated at target 0.2, this run's target is 0.3): "
        "fit's spread"
    )
    assert other.describe().endswith("uncalibrated spread: 900–1 100")
    assert calibrated(fit, "matrix", "loss", table, target=0.2 * 1.005).escape == 1607
    # the packaged table (fit on docs/forecast's calibration runs) is what forecast() uses
    assert "matrix/loss" in cal.packaged().entries and cal.packaged().runs


def test_a_measure_forecast_to_another_target_than_the_table_s_is_not_called_calibrated():
    """docs/forecast/runs/mws_c1_seed0 on prog_attn_l0: at the packaged table's target (to 3
    digits, as docs/forecast/README.md tells the user to type it) the interval is calibrated; at
    a target the user picked otherwise (0.7 of it) the fit's spread is kept, and the line says
    so."""
    rows = [
        json.loads(line)
        for line in (ROOT / "docs/forecast/runs/mws_c1_seed0/metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    entry = cal.packaged().entries["sequence/prog_attn_l0"]
    other = round(entry["target"] * 0.7, 3)
    for target, is_calibrated in ((round(entry["target"], 3), True), (other, False)):
        seen = [rows[:i] for i in range(1, len(rows) + 1)]
        made = [(r, forecast(r, "prog_attn_l0", target)) for r in seen]
        made = [(r, f) for r, f in made if f.escape is not None and f.reason != "escaped"]
        assert made
        for r, f in made:
            assert f.basis.startswith("calibrated") == is_calibrated
            if not is_calibrated:
                assert f"calibrated at target {entry['target']:.3g}, this run's" in f.basis
                fit = fit_forecast(r, "prog_attn_l0", target)
                assert (f.escape, f.low, f.high) == (fit.escape, fit.low, fit.high)


def test_what_the_progress_line_says():
    f = Forecast(3000, 4200, 3800, 4900, basis="calibrated on 6 runs (matrix/loss, all u)")
    assert f.describe(1200 / 360) == "escape in ~1 200 steps (~6 min), 90%: 800–1 900"
    assert f.describe() == "escape in ~1 200 steps, 90%: 800–1 900"
    raw = Forecast(100, 130, 120, 150, basis="uncalibrated (sequence/loss): fit's spread")
    assert raw.describe(2.0) == "escape in ~30 steps (~15 s), uncalibrated spread: 20–50"
    assert Forecast(5000, 4850, 4850, 4850, "escaped").describe() == "escaped at step 4 850"
    assert Forecast(10, reason="no plateau yet").describe() == (
        "escape not yet predictable (no plateau yet)"
    )


@pytest.mark.parametrize(
    "case, reason",
    [
        ("zero", "level is 0"),
        ("constant", "constant on the plateau"),
        ("nan", "not finite at step 600"),
        ("few", "plateau too short"),
        ("none", "no rows yet"),
        ("unlogged", "prog_row_mass is not logged"),
        ("no target", "no target for loss"),
    ],
)
def test_rows_it_cannot_use_give_not_yet_predictable_and_why(case, reason):
    flat = [{"step": s, "eval_loss_mask": 1.0 if s == 0 else 0.5} for s in range(0, 2000, 50)]
    rows, signal, target = flat, "loss", 0.2
    if case == "zero":
        rows = [{**r, "eval_loss_mask": 0.0} for r in flat]
    elif case == "constant":
        rows = [{**r, "prog_row_mass": 0.3} for r in flat]
        signal = "prog_row_mass"
    elif case == "nan":
        rows = [{**r, "eval_loss_mask": math.nan} if r["step"] == 600 else r for r in flat]
    elif case == "few":
        rows = flat[:3]
    elif case == "none":
        rows = []
    elif case == "unlogged":
        signal = "prog_row_mass"
    else:
        target = 0.0
    f = forecast(rows, signal, target)
    assert f.escape is None and reason in f.reason
    assert f.describe().startswith("escape not yet predictable (")


def test_the_summary_records_how_each_forecast_fared_and_the_line_shows_it(
    tmp_path, monkeypatch, capsys
):
    """A tiny run whose forecast is forced (escape 20 steps ahead, +/-5) and whose escape is
    forced at step 30 (as tests/test_bug_kinds.py forces a drop); a forecast that raises does
    not stop a run."""
    from abrupt.config import apply_overrides, preset
    from abrupt.dynamics import forecast as fc
    from abrupt.dynamics import transition
    from abrupt.train.trainer import train

    real = transition.detect
    monkeypatch.setattr(transition, "detect", lambda rows, **kw: {**real(rows, **kw)} | {
        "escape_step": 30 if rows[-1]["step"] >= 30 else None})  # fmt: skip

    def forced(rows, *args, **kwargs):
        now = rows[-1]["step"]
        if now < 10:
            return Forecast(now, reason="no plateau yet")
        return Forecast(now, now + 20, now + 15, now + 25, basis="calibrated on 5 runs (test)")

    monkeypatch.setattr(fc, "forecast", forced)
    cfg = apply_overrides(preset("tiny"), ["train.steps=40", "train.log_every=5"])
    summary = train(cfg, tmp_path / "run", verbose=True)
    line = capsys.readouterr().err
    assert "escape in ~20 steps (~" in line and "90%: 15–25" in line
    rec = summary["forecast_record"]
    # forecasts at steps 10, 15, 20, 25 (before the escape at 30): 30, 35, 40, 45, each +/-5
    assert rec["escape_step"] == 30 and rec["forecasts"] == 4
    assert [m["error"] for m in rec["made"]] == [0, 5, 10, 15]
    assert [m["covered"] for m in rec["made"]] == [True, True, False, False]
    assert rec["covered"] == 0.5 and rec["median_abs_error"] == 7.5 and rec["first_lead"] == 20
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["forecast_record"] == rec
    assert (tmp_path / "run" / "forecast.png").exists()

    def broken(rows, *args, **kwargs):
        raise TypeError("a bug in the forecaster")

    monkeypatch.setattr(fc, "forecast", broken)
    train(apply_overrides(preset("tiny"), ["train.steps=10"]), tmp_path / "b", verbose=True)
    assert "escape not yet predictable (forecast failed: TypeError" in capsys.readouterr().err
    assert record(
        [{"step": 5, "forecast_escape": 9, "forecast_low": 8, "forecast_high": 10}], None
    )["made"] == [{"step": 5, "escape": 9, "low": 8, "high": 10, "covered": None, "error": None}]


@needs_extra("devinterp", "devinterp", "datasets")
def test_llc_analysis_estimates_finite_reproducible_values(tmp_path):
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


def test_a_forecast_record_that_fails_leaves_the_rest_of_the_summary_written(tmp_path, monkeypatch):
    from abrupt.dynamics import forecast as fc
    from abrupt.run.rundir import read_metrics, write_metrics
    from abrupt.train.summary import finish

    fake_run(tmp_path / "run", 3000, 0)
    rows = read_metrics(tmp_path / "run")
    for r in rows:  # the losses the loss figure draws, and forecasts on part of the plateau
        r |= {k: r["eval_loss_mask"] for k in ("eval_loss", "eval_loss_obs")}
        if 2000 <= r["step"] < 2500:
            r |= {"forecast_escape": 3000, "forecast_low": 2900, "forecast_high": 3100}
    write_metrics(tmp_path / "run", rows)

    def broken(rows, escape, keep=10):
        raise KeyError("forecast_low\nand a second line")

    monkeypatch.setattr(fc, "record", broken)
    summary = finish(tmp_path / "run")
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["forecast_record"] == {"error": "KeyError: 'forecast_low\\nand a second line'"}
    assert written["escape_step"] == summary["escape_step"] == detect(rows)["escape_step"] > 2500
    assert (tmp_path / "run" / "forecast.png").exists()


def dense_saddle(escape=1000, rate=1e-2, level=0.2, noise=0.02, end=1200, seed=0, log_every=50):
    """A matrix run's metrics rows (every `log_every` steps) and dense signal (steps, training
    L_mask at every step, `noise` relative): an initial fall, a flat plateau at `level`, then the
    departure d = 0.2 exp(rate (t - escape))."""
    rng = random.Random(seed)
    steps = list(range(1, end + 1))

    def mean(t):
        d = min(0.2 * math.exp(rate * (t - escape)), 0.95)
        return level * (1 - d) * (1 + 0.3 * max(0, 30 - t) / 30)

    values = [mean(t) * (1 + noise * rng.gauss(0, 1)) for t in steps]
    rows = [
        {"step": t, "eval_loss_mask": mean(t) * (1 + noise / 5 * rng.gauss(0, 1))}
        for t in steps
        if t == 1 or t % log_every == 0
    ]
    return rows, (steps, values)


def upto(dense, step):
    """The dense signal as training had it at `step`."""
    return dense[0][:step], dense[1][:step]


def test_the_dense_fit_forecasts_a_known_escape_before_it_from_the_training_batch_loss():
    # the logged rows alone (every 50 steps) never forecast it; the dense signal does, ahead
    rows, dense = dense_saddle()
    true = detect(rows)["escape_step"]
    assert abs(true - 1000) <= 50
    made = {}
    for r in rows:
        if r["step"] >= true:
            break
        seen = [x for x in rows if x["step"] <= r["step"]]
        assert fit_forecast(seen).escape is None
        f = fit_forecast(seen, dense=upto(dense, r["step"]))
        assert f.escape is None or f.escape > r["step"]
        if f.escape is not None:
            assert f.signal == "train_loss" and f.low <= f.escape <= f.high
            made[r["step"]] = f
    plateau = true - detect(rows)["plateau_start"]
    assert true - min(made) >= 0.15 * plateau  # the first forecast well before the escape
    # from the first forecast on, within 0.15 of the plateau's length of the escape
    assert all(abs(f.escape - true) <= 0.15 * plateau for f in made.values())


def test_a_flat_noisy_dense_signal_has_no_forecast():
    # the packaged table's entry for `sudden` (its target: the departure at the escape) and the
    # one this test fixes, so that it tests the fit whatever the table
    fixed = cal.Calibration({"matrix:sudden/train_loss": {"target": 0.2, "cells": {}}}, [])
    assert cal.packaged().target("matrix:sudden", "train_loss")
    for table in (None, fixed):
        for seed in range(3):
            rows, dense = dense_saddle(escape=10**9, end=3000, noise=0.05, seed=seed)
            for r in rows:
                seen = [x for x in rows if x["step"] <= r["step"]]
                f = forecast(seen, dense=upto(dense, r["step"]), preset="sudden", table=table)
                assert f.escape is None, (seed, r["step"])
        assert f.reason == "no significant exponential growth"


def test_the_dense_target_is_the_slide_s_reach_for_a_line_and_the_escape_s_level_for_a_saddle():
    from abrupt.dynamics.forecast import dense_departure, dense_target

    # the saddle: flat at `level`, then d = 0.2 exp(0.01 (t - 1000)), 2% noise per step
    _, (xs, vs) = dense_saddle(noise=0.02)
    d, v0 = dense_departure(xs[49:1000], vs[49:1000], head=250)
    assert v0 == pytest.approx(0.2, rel=0.01)
    # the departure at the escape: 0.2 less its last 5 steps' growth, give or take the noise
    assert dense_target(xs[49:1000], d, 1000, 50, "exp") == pytest.approx(0.19, abs=0.015)
    # read as a slide, the stretch 50%-20% before the escape (the exponential's foot) reaches a
    # sixth of that
    assert dense_target(xs[49:1000], d, 1000, 50, "line") == pytest.approx(0.033, abs=0.01)
    # a steady slide d = 1e-4 (t - 50): the line reaches 0.095 at the escape, whatever the noise
    slide = [1e-4 * (x - 50) for x in xs[49:1000]]
    assert dense_target(xs[49:1000], slide, 1000, 50) == pytest.approx(0.095)
    assert dense_target(xs[49:1000], slide, 1000, 50, "exp") == pytest.approx(0.0948)


def plateau_run(name, escape, plateau, seed, kind="sequence", level=2.8, noise=0.01):
    """A run of `kind` (study.Run: rows every 10 steps, dense signal at every step): an initial
    fall to `level`, then a `plateau` that 'slides' (d = 0.1 at the escape, then a jump) or stays
    'flat' until its loss departs as d = 0.2 exp(6 (t - escape) / escape)."""
    from abrupt.dynamics import study
    from abrupt.dynamics.transition import HEADLINE_LOSS

    rng = random.Random(seed)

    def mean(t):
        if plateau == "slide":
            d = 0.1 * t / escape if t <= escape else min(0.95, 0.1 + 0.2 * (t - escape))
        else:
            d = min(0.95, 0.2 * math.exp(6 * (t - escape) / escape))
        return level * (1 - d) * (1 + 0.3 * max(0, 20 - t) / 20)

    steps = list(range(1, escape + 201))
    dense = (steps, [mean(t) * (1 + noise * rng.gauss(0, 1)) for t in steps])
    rows = [
        {"step": t, HEADLINE_LOSS[kind]: mean(t) * (1 + noise / 5 * rng.gauss(0, 1))}
        for t in steps
        if t == 1 or t % 10 == 0
    ]
    return study.Run(name, rows, 0, kind=kind, dense=dense, preset="p")


def test_each_preset_s_dense_curve_is_the_one_that_forecast_its_calibration_runs_best():
    from abrupt.dynamics.study import dense_fit

    # each against its family's default (SHAPES): matrix runs that slide, sequence runs that sit
    slides = [
        plateau_run(f"s{i}", e, "slide", i, kind="matrix")
        for i, e in enumerate((150, 180, 210, 240))
    ]
    flats = [plateau_run(f"f{i}", e, "flat", i) for i, e in enumerate((600, 800, 700, 900))]
    target, fit = dense_fit(slides)
    # the slide's reach at the escape: d = 0.1 there, less the early fall's share of v0
    assert fit["shape"] == "line" and target == pytest.approx(0.09, abs=0.01)
    assert fit["longest"] == max(r.length for r in slides) == 240
    # a flat plateau: the exponential, to its departure at the escape (0.2 less its last steps)
    target, fit = dense_fit(flats)
    assert fit["shape"] == "exp" and target == pytest.approx(0.2, abs=0.02)
    # no forecast further than twice the longest calibration plateau from the plateau's start:
    # the same slide 10 times slower, seen at step 600 (its escape at 1 500), is forecast only
    # without that limit
    slow = plateau_run("slow", 1500, "slide", 9, kind="matrix")
    seen = [r for r in slow.rows if r["step"] <= 600]
    dense = tuple(v[:600] for v in slow.dense)
    free = fit_forecast(seen, dense=dense, dense_goal=0.09, dense_shape="line")
    assert 1300 < free.escape < 1700
    held = fit_forecast(seen, dense=dense, dense_goal=0.09, dense_shape="line", dense_longest=240)
    assert held.escape is None
    assert (
        held.reason
        == "escape beyond 2x the longest plateau the preset was calibrated on (240 steps)"
    )


def test_the_dense_fit_runs_only_for_a_preset_with_its_own_target():
    # the table has a target for `sudden` (too few forecasts for a cell: the spread is the fit's,
    # labelled so); `small` has none, and another preset's or the family's target is not borrowed:
    # the forecast reads the logged loss alone, which says nothing here
    rows, dense = dense_saddle()
    entry = {"target": 0.2, "cells": {}}
    table = cal.Calibration({"matrix:sudden/train_loss": entry, "matrix/train_loss": entry}, [])
    fits = cal.Calibration.fit({}, {"matrix:sudden/train_loss": 0.2}, [])
    assert fits.entries == {"matrix:sudden/train_loss": entry}
    seen = [r for r in rows if r["step"] <= 900]
    own = forecast(seen, dense=upto(dense, 900), preset="sudden", table=table)
    assert own.signal == "train_loss" and 900 < own.escape < 1100
    assert own.basis == (
        "uncalibrated (matrix:sudden/train_loss: too few calibration forecasts): fit's spread"
    )
    assert own.escape == fit_forecast(seen, dense=upto(dense, 900), dense_goal=0.2).escape
    # the curve the entry names (study.dense_fit), else the family's (the matrix: exponential)
    lined = cal.Calibration({"matrix:sudden/train_loss": {**entry, "shape": "line"}}, [])
    line = fit_forecast(seen, dense=upto(dense, 900), dense_goal=0.2, dense_shape="line")
    by_table = forecast(seen, dense=upto(dense, 900), preset="sudden", table=lined)
    assert (by_table.escape, by_table.low, by_table.high) == (line.escape, line.low, line.high)
    assert line.escape != own.escape
    # where the dense signal has a gap, the logged loss's fit, calibrated as the family's loss
    gappy = tuple(v[:300] + v[400:900] for v in dense)
    assert forecast(seen, dense=gappy, preset="sudden", table=table) == forecast(seen, table=table)
    logged = forecast(seen, table=table)
    assert logged.escape is None and logged.reason == "departure within the plateau's noise"
    assert forecast(seen, dense=upto(dense, 900), table=table) == logged  # no preset
    small = forecast(seen, dense=upto(dense, 900), preset="small", table=table)
    assert small.escape is None and small.signal != "train_loss"
    assert small.reason == f"{logged.reason}; the per-step fit has no calibration for small"


def test_the_dense_signal_is_written_at_every_step_and_survives_a_kill_and_resume(tmp_path):
    from abrupt.config import apply_overrides, preset
    from abrupt.run.rundir import read_metrics, read_signal
    from abrupt.train.trainer import train

    def tiny(*overrides):
        return apply_overrides(preset("tiny"), list(overrides))

    train(tiny(), tmp_path / "full", verbose=False)
    full = read_signal(tmp_path / "full")
    assert [r["step"] for r in full] == list(range(1, 61))
    # the training batch's L_mask (a matrix run's headline loss), as its log rows have it
    rows = read_metrics(tmp_path / "full")
    assert all(r["loss_mask"] == full[r["step"] - 1]["loss"] for r in rows)
    assert all(set(r) == {"step", "loss"} for r in full)
    assert not any(k.startswith("signal") for r in rows for k in r)  # the rows are as they were
    # killed after its checkpoint at step 40 (tiny: every 20), having written rows past it and
    # half a line: the resume cuts the file back to step 40 and goes on
    train(tiny("train.steps=40"), tmp_path / "part", verbose=False)
    with open(tmp_path / "part" / "signal.jsonl", "a") as f:
        f.write('{"step": 41, "loss": 1.0}\n{"step": 42, "loss": 1.0}\n{"step": 43, "lo')
    train(tiny(), tmp_path / "part", resume=True, verbose=False)
    assert read_signal(tmp_path / "part") == full
    train(tiny("train.forecast=false"), tmp_path / "off", verbose=False)
    assert not (tmp_path / "off" / "signal.jsonl").exists()
