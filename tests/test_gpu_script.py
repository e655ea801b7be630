"""The prepared GPU script runs end to end on CPU (--smoke), as it would on a bare GPU machine, and
whatever kills it, what it had finished is under --out."""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_paper.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_paper = load_script()


def smoke(out, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--smoke", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def members(archive):
    with tarfile.open(archive) as tar:
        return set(tar.getnames())


def tar_member(archive, name):
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read().decode()


def test_gpu_script_smoke_leaves_few_small_files(tmp_path):
    out = tmp_path / "out"
    r = smoke(out)
    assert r.returncode == 0, r.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 1 <= len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)
    assert not [p.name for p in files if p.name.startswith(".")]  # no half-written archive
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["steps"] == 30 and summary["run"]["steps_per_s"] > 0
    assert summary["analyze_ok"] and summary["report_ok"] and summary["errors"] == []
    assert {k: v["status"] for k, v in summary["stages"].items()} == {
        "training": "ok",
        "analyses": "ok",
        "report": "ok",
        "throughput": "ok",
        "gpt": "ok",
    }
    assert summary["elapsed_s"] < summary["deadline_s"]
    assert set(summary["throughput"]) == {"ours/hf fp32", "ours/hf bf16", "bf16/fp32 ours"}
    names = members(out / "paper-run.tar.gz")
    assert {
        "paper-run/metrics.jsonl",
        "paper-run/report.html",
        "paper-run/analysis/probe/results.json",
    } <= names
    assert (
        "abrupt report" not in r.stdout + r.stderr and "abrupt-paper-" not in r.stdout + r.stderr
    )  # no hint at the deleted scratch run
    assert not any(n.endswith(".safetensors") for n in names)
    config = json.loads(tar_member(out / "paper-run.tar.gz", "paper-run/config.json"))
    # the GPU run's path: bf16 autocast, progress measures, no early checkpoints
    assert config["train"]["bf16"] and config["train"]["progress"]
    assert config["train"]["ckpt_log_points"] == 0
    assert (
        tar_member(out / "paper-run.tar.gz", "paper-run/metrics.jsonl")
        == (out / "metrics.jsonl").read_text()
    )
    gpt = json.loads((out / "gpt-summary.json").read_text())
    assert gpt["steps"] == 10 and "gpt-run/metrics.jsonl" in members(out / "gpt-run.tar.gz")


# --- killed at several points: what was finished stays ----------------------------------------


def test_killed_during_training_leaves_the_rows_so_far(tmp_path):
    out = tmp_path / "out"
    r = smoke(out, "--analyses", "progress", "--fault-at", "kill:train")
    assert r.returncode == -signal.SIGKILL
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["training"]
    assert summary["stages"]["training"]["status"] == "running"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[0]["step"] == 1


def test_sigterm_during_training_packs_the_run_and_starts_nothing_more(tmp_path):
    out = tmp_path / "out"
    r = smoke(out, "--analyses", "progress", "--fault-at", "term:train")
    assert r.returncode == 1, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert stages["training"]["status"] == "interrupted"
    assert summary["run"]["ended"] == "interrupted" and summary["run"]["steps"] >= 1
    later = {k: v["status"] for k, v in stages.items() if k != "training"}
    assert later == dict.fromkeys(("analyses", "report", "throughput", "gpt"), "skipped")
    assert "received" in stages["analyses"]["note"]
    assert {"paper-run/metrics.jsonl", "paper-run/summary.json"} <= members(
        out / "paper-run.tar.gz"
    )
    assert not (out / "throughput.json").exists()


def test_killed_during_analyses_leaves_those_finished(tmp_path):
    out = tmp_path / "out"
    r = smoke(out, "--analyses", "progress,probe", "--fault-at", "kill:analysis")
    assert r.returncode == -signal.SIGKILL
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["training"]["status"] == "ok"
    assert summary["stages"]["analyses"]["status"] == "running"
    each = summary["stages"]["analyses"]["each"]
    assert list(each) == ["progress"] and each["progress"]["status"] == "ok"
    names = members(out / "paper-run.tar.gz")
    assert "paper-run/analysis/progress/results.json" in names
    assert "paper-run/analysis/probe/results.json" not in names
    assert summary["archive"] == "paper-run.tar.gz as packed after analysis progress"


def test_a_failing_analysis_leaves_the_others_and_a_kill_while_packing_the_last_archive(
    tmp_path,
):
    # progress runs first and raises; probe still runs; the packing after the report is killed
    out = tmp_path / "out"
    r = smoke(out, "--analyses", "progress,probe", "--fault-at", "raise:progress,kill:pack")
    assert r.returncode == -signal.SIGKILL
    summary = json.loads((out / "summary.json").read_text())
    each = summary["stages"]["analyses"]["each"]
    assert each["progress"]["status"] == "failed" and each["probe"]["status"] == "ok"
    assert summary["stages"]["analyses"]["status"] == "partial"
    assert summary["stages"]["report"]["status"] == "ok"
    (error,) = summary["errors"]
    assert error.startswith("analyses/progress: RuntimeError: fault injected") and "(at " in error
    assert "injected" in each["progress"]["error"] and "Traceback" in r.stderr
    # the archive packed before the killed one is whole: the probe's results, not the report
    names = members(out / "paper-run.tar.gz")
    assert "paper-run/analysis/probe/results.json" in names
    assert "paper-run/report.html" not in names
    assert summary["archive"] == "paper-run.tar.gz as packed after analysis probe"


# --- the deadline's parts ---------------------------------------------------------------------


def test_training_takes_more_time_only_to_reach_the_drop():
    project = gpu_paper.projection
    # 50 steps/s from step 1 000 with 300 s left: step 16 000, short of 18 000; moved to 340 s
    assert project(1000, 50.0, 0.0, 300.0, 400.0, 18_000, 50_000) == (340.0, 18_000)
    # no later than `latest`
    assert project(1000, 50.0, 0.0, 300.0, 320.0, 18_000, 50_000) == (320.0, 17_000)
    # fast enough: unchanged, the step capped by train.steps
    assert project(1000, 500.0, 0.0, 300.0, 400.0, 18_000, 50_000) == (300.0, 50_000)
    assert "cannot be seen" in gpu_paper.verdict(13_999)
    assert "window (14000-16000) only" in gpu_paper.verdict(15_000)
    assert "not the 2000 after it" in gpu_paper.verdict(17_000)
    assert "and the 2000 steps after it" in gpu_paper.verdict(18_000)


@pytest.fixture
def clock():
    c = gpu_paper.Clock(60.0, start=time.monotonic())
    c.install()
    yield c
    c.disarm()
    c.uninstall()


def test_a_stage_past_its_share_is_stopped_a_failing_one_recorded_and_the_next_runs(
    tmp_path, clock
):
    record = gpu_paper.Record(tmp_path, clock)
    t0 = time.monotonic()
    assert record.run_stage("slow", 0.3, lambda rec: time.sleep(30)) is None
    assert time.monotonic() - t0 < 5
    assert record.run_stage("fails", 5, lambda rec: 1 / 0) is None
    assert record.run_stage("next", 5, lambda rec: 42) == 42
    time.sleep(0.4)  # no stray timer signal after the stages ended
    stages = json.loads((tmp_path / "summary.json").read_text())["stages"]
    assert {k: v["status"] for k, v in stages.items()} == {
        "slow": "stopped",
        "fails": "failed",
        "next": "ok",
    }
    assert stages["slow"]["note"] == "stopped at the end of its 0.3 s share"
    assert stages["fails"]["error"].startswith("fails: ZeroDivisionError: division by zero (at ")


def test_past_the_deadline_or_after_sigterm_no_stage_starts(tmp_path, clock):
    record = gpu_paper.Record(tmp_path, clock)
    assert record.run_stage("needs 90 s", 90, lambda rec: 1, min_s=90) is None
    assert record.run_stage("term", 5, lambda rec: os.kill(os.getpid(), signal.SIGTERM)) is None
    assert record.run_stage("after", 5, lambda rec: 1) is None
    stages = json.loads((tmp_path / "summary.json").read_text())["stages"]
    assert stages["needs 90 s"] == {
        "status": "skipped",
        "note": "not started: 60.0 s left of the deadline, it needs 90.0 s",
    }
    assert stages["term"]["status"] == "interrupted"
    assert stages["after"] == {"status": "skipped", "note": "not started: SIGTERM received"}


def test_an_interrupt_while_repacking_skips_the_rest_and_the_analyses_are_not_ok(
    tmp_path, clock, monkeypatch
):
    from types import SimpleNamespace

    from abrupt.analysis import registry

    ran = []
    prepared = SimpleNamespace(steps=[0], skipped={}, names=["progress", "probe", "attention"])
    monkeypatch.setattr(registry, "prepare", lambda *a, **k: prepared)
    monkeypatch.setattr(registry, "run_one", lambda p, name, verbose: ran.append(name))

    def repack(after):
        raise gpu_paper.Expired

    record = gpu_paper.Record(tmp_path, clock)
    rec: dict = {}
    with pytest.raises(gpu_paper.Expired):
        gpu_paper.analyses(rec, tmp_path, "cpu", record, None, True, set(), repack)
    first, *rest = rec["names"]
    assert ran == [first]
    assert rec["each"][first]["status"] == "ok"
    assert [rec["each"][n]["status"] for n in rest] == ["skipped", "skipped"]
    assert not gpu_paper.analyze_ok(rec)
    # every prepared analysis counts, also one the record has no entry for
    assert not gpu_paper.analyze_ok({"names": ["a", "b"], "each": {"a": {"status": "ok"}}})
    assert gpu_paper.analyze_ok({"names": ["a"], "each": {"a": {"status": "ok"}}})


def test_tf32_fails_is_a_reason_for_any_exception_never_a_crash(monkeypatch):
    @contextlib.contextmanager
    def broken(enabled):
        raise AttributeError("no fp32_precision")
        yield

    monkeypatch.setattr(gpu_paper, "tf32", broken)
    assert gpu_paper.tf32_fails(gpu_paper.torch.device("cpu")) == (
        "AttributeError: no fp32_precision"
    )


def test_training_needs_no_baseline_packages(tmp_path):
    # the GPU machine has no cvxpy: training and the CLI must import and run without it
    code = (
        "import sys; sys.modules['cvxpy'] = None\n"
        "from abrupt.cli import main\n"
        "sys.exit(main(['train', '--preset', 'tiny', '--quiet', '--out', "
        f"{str(tmp_path / 'run')!r}, 'train.steps=5']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_watch_projects_from_the_measured_rate_and_moves_the_end_to_reach_the_drop(
    tmp_path, clock
):
    # the GPU path: 50 steps/s, 100 s left, at most 100 s more: step 6 100 by the end, so the end
    # moves the whole 100 s (18 000 would need 338 s more), and the drop is still out of reach
    clock.arm(100.0)
    end, rec = clock.stage_end, {}
    cfg = gpu_paper.run_config(smoke=False)
    watch = gpu_paper.TrainingWatch(tmp_path, tmp_path, clock, rec, cfg, False, end + 100, set())
    watch._project(
        [{"step": 1, "time": 1.0}, {"step": 100, "time": 3.0}, {"step": 1100, "time": 23.0}]
    )
    p = rec["projection"]
    assert p["steps_per_s"] == 50.0 and p["measured_over_steps"] == [100, 1100]
    assert p["moved_end_s"] == pytest.approx(100, abs=0.5)
    assert clock.stage_end == pytest.approx(end + 100, abs=0.5)
    assert p["projected_last_step"] == pytest.approx(11_100, abs=50)
    assert "cannot be seen" in p["verdict"]
