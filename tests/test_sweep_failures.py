"""Sweeps under failure (issue 17): a trial that fails keeps its cause, a killed trial fails alone,
the workers die with a killed sweep, and every valid grid gets distinct, short trial names.
Kills and sweeps run real processes."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from abrupt.cli import main
from abrupt.config import ConfigError
from abrupt.run.rundir import RunDirError, RunLock
from abrupt.sweep.runner import (
    MAX_NAME,
    MAX_TRIALS,
    describe,
    expand,
    read_results,
    spec_from_args,
    spec_from_file,
)
from conftest import needs_extra

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
needs_ray = needs_extra("ray", "ray")


def start_sweep(out, *items, workers=2):
    cmd = [
        sys.executable,
        "-m",
        "abrupt.cli",
        "sweep",
        "--preset",
        "tiny",
        "--quiet",
        "--workers",
        str(workers),
        "--out",
        str(out),
        *items,
    ]
    return subprocess.Popen(
        cmd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(predicate, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def trial_pid(trial_dir):
    """The pid a training trial wrote into its lock, once it has written its step-1 checkpoint."""
    assert wait_for(lambda: (trial_dir / "checkpoints" / "step_1.json").exists()), (
        f"{trial_dir} never started"
    )
    return int((trial_dir / ".lock").read_text())


def gone(pid):
    """Dead: no such process, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def rows(out):
    return {r["trial"]: r for r in read_results(out / "results.jsonl")}


# --- 6: one trial's death does not take the sweep down
# -------------------------------------------------


def test_a_killed_trial_fails_alone_the_sweep_finishes_and_resumes_it(tmp_path):
    out = tmp_path / "sw"
    proc = start_sweep(out, "seed=0,1", "train.steps=150", "train.ckpt_every=50")
    os.kill(trial_pid(out / "seed=0"), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "leaked" not in err, err
    r = rows(out)
    assert r["seed=0"]["status"] == "failed" and "killed by SIGKILL" in r["seed=0"]["error"]
    assert r["seed=1"]["status"] == "done" and r["seed=1"]["summary"]["steps"] == 150
    assert "seed=0: the trial's process died" in (out / "summary.md").read_text()
    assert (
        main(["sweep", "--resume", str(out), "--quiet", "--workers", "2"]) == 0
    )  # the failed trial resumes
    assert (
        rows(out)["seed=0"]["status"] == "done" and rows(out)["seed=0"]["summary"]["steps"] == 150
    )


def test_a_trial_that_exits_on_its_own_fails_with_its_exit_status():
    """Beyond the kill: any way a trial's process ends without reporting is that trial's failure."""
    from abrupt.sweep.runner import LocalBackend

    engine = LocalBackend(2)
    job = engine.submit(os._exit, 3)
    done = set()
    assert wait_for(lambda: done.update(engine.wait({job}, 1.0)[0]) or job in done, 120)
    row = engine.result(job)
    assert row["status"] == "failed" and "exit status 3" in row["error"]


# --- 7: workers die with their sweep
# -----------------------------------------------------------------


def test_workers_die_with_a_killed_sweep_and_resume_finishes_their_trials(tmp_path):
    out = tmp_path / "sw"
    proc = start_sweep(out, "seed=0,1,2", "train.steps=150", "train.ckpt_every=50")
    workers = [trial_pid(out / "seed=0"), trial_pid(out / "seed=1")]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_for(lambda: all(gone(p) for p in workers), 120), "a worker outlived its sweep"
    time.sleep(1)
    assert not (out / "seed=2").exists()  # nobody went on with the queued trial
    assert main(["sweep", "--resume", str(out), "--quiet", "--workers", "2"]) == 0
    assert {t: (r["status"], r["summary"]["steps"]) for t, r in rows(out).items()} == {
        f"seed={s}": ("done", 150) for s in range(3)
    }


def test_the_parent_watch_ends_a_process_whose_parent_died(tmp_path):
    """The fallback where the kernel's parent-death signal is not available (or came too late)."""
    child = (
        "import os, threading, time; from abrupt.sweep.runner import watch_parent; "
        "threading.Thread(target=watch_parent, args=(int(os.environ['PARENT']), 0.1), "
        "daemon=True).start(); time.sleep(120)"
    )
    parent = (
        "import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
        f"{child!r}], env={{**os.environ, 'PARENT': str(os.getpid())}}, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(p.pid, flush=True)"
    )
    out = subprocess.run(
        [sys.executable, "-c", parent], env=ENV, capture_output=True, text=True, timeout=60
    )
    pid = int(out.stdout)
    assert wait_for(lambda: gone(pid), 60)


def test_a_run_lock_can_wait_for_its_holder(tmp_path):
    """A trial resumed while a worker of the killed sweep still saves waits for it (RunLock
    wait)."""
    holder = RunLock(tmp_path).__enter__()
    with pytest.raises(RunDirError, match="in use"):
        RunLock(tmp_path).__enter__()
    threading.Timer(0.5, holder.__exit__).start()
    with RunLock(tmp_path, wait=30):
        pass


# --- 4: every failure keeps its cause
# ------------------------------------------------------------------


def test_describe_keeps_the_inner_cause():
    class Wrapped(RuntimeError):
        def __init__(self, cause):
            super().__init__("wrapped")
            self.cause = cause

    inner = RuntimeError(
        "The remote function failed to import on the worker. This may be because ... sys.path "
        "[...]:\n\n"
        'Traceback (most recent call last):\n  File "x.py", line 1\nModuleNotFoundError: No '
        "module named 'drv'\n"
    )
    assert describe(Wrapped(inner)) == (
        "RuntimeError: The remote function failed to import on the worker: "
        "ModuleNotFoundError: No module named 'drv'"
    )
    assert describe(ValueError("bad")) == "ValueError: bad"
    assert len(describe(OSError("x" * 2000))) <= 500


@needs_ray
def test_ray_trials_that_cannot_start_or_crash_fail_with_their_cause(tmp_path, monkeypatch, capsys):
    """A task whose module the workers cannot import, and a task whose worker dies: failed (not
    interrupted), with the original error, and the sweep ends with its summary (not 130)."""
    from ray import cloudpickle  # Ray's own copy: the one that decides how a task's code travels

    from abrupt.sweep import runner as sweep_mod

    module = tmp_path / "driver_only_trial.py"
    module.write_text(
        textwrap.dedent("""
        import os, signal

        def run_trial(preset, overrides, out_dir, threads, base_run=""):
            if out_dir.endswith("seed=0"):
                os.kill(os.getpid(), signal.SIGKILL)
            return {"status": "done", "summary": {}, "error": None, "seconds": 0.5}
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import driver_only_trial

    monkeypatch.setattr(sweep_mod, "run_trial", driver_only_trial.run_trial)
    args = [
        "sweep",
        "--preset",
        "tiny",
        "--quiet",
        "--workers",
        "1",
        "--backend",
        "ray",
        "seed=0,1",
        "train.steps=5",
    ]
    assert main([*args, "--out", str(tmp_path / "import")]) == 1  # every trial failed
    for r in read_results(tmp_path / "import" / "results.jsonl"):
        assert (
            r["status"] == "failed"
            and "ModuleNotFoundError: No module named 'driver_only_trial'" in r["error"]
        ), r
    assert "ModuleNotFoundError" in (tmp_path / "import" / "summary.md").read_text()
    cloudpickle.register_pickle_by_value(driver_only_trial)  # now the workers get the code itself
    try:
        assert main([*args, "--out", str(tmp_path / "crash")]) == 0
    finally:
        cloudpickle.unregister_pickle_by_value(driver_only_trial)
    r = rows(tmp_path / "crash")
    assert r["seed=0"]["status"] == "failed" and "WorkerCrashedError" in r["seed=0"]["error"]
    assert r["seed=1"]["status"] == "done"
    assert (
        tmp_path / "crash" / "summary.md"
    ).exists() and "resume with" not in capsys.readouterr().err


# --- 11: names keep every value; spec gaps
# ---------------------------------------------------------------


def test_every_valid_grid_gets_distinct_names():
    trials = expand(spec_from_args("tiny", ["model.layers=1,2", "model.heads=1,2", "seed=1,2"]))
    assert len({t.name for t in trials}) == 8 and "layers=1_heads=1_seed=1" in {
        t.name for t in trials
    }
    # keys sharing their last part are named in full
    trials = expand(
        spec_from_args(
            "tiny", ["data.p_mask=0.1,0.2", "curriculum.p_mask=0.1,0.2", "curriculum.hold=10"]
        )
    )
    assert trials[1].name == "data.p_mask=0.1_curriculum.p_mask=0.2"
    # zip lists walked with the same values show once (the components sweep)
    spec = spec_from_args("tiny", ["train.init_from=x"])
    spec.fixed, spec.zip = {}, {"train.trainable": ["mlp", "qkv"], "train.reinit": ["mlp", "qkv"]}
    assert [n for n in _names_only(spec)] == ["trainable=mlp", "trainable=qkv"]


def _names_only(spec):
    from abrupt.sweep.runner import _trial_names

    return _trial_names(
        spec, [{"train.trainable": v, "train.reinit": v} for v in spec.zip["train.trainable"]]
    )


def test_names_that_sanitise_alike_or_run_long_stay_distinct_and_short(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text('preset: tiny\ngrid: {train.trainable: ["mlp,qkv", "mlp, qkv"]}\n')
    names = [t.name for t in expand(spec_from_file(path))]
    assert len(set(names)) == 2 and all(n.startswith("trainable=mlp-qkv-") for n in names)
    long = ",".join(["tok_embed", "pos_embed", "mlp", "qkv"] * 20)
    path.write_text(f'preset: tiny\ngrid: {{train.trainable: ["{long}", "mlp"]}}\n')
    first, again = expand(spec_from_file(path)), expand(spec_from_file(path))
    assert [t.name for t in first] == [t.name for t in again]  # deterministic
    assert len(first[0].name) <= MAX_NAME and first[1].name == "trainable=mlp"


def test_a_trial_with_a_long_name_runs(tmp_path):
    long = ",".join(["tok_embed", "pos_embed", "mlp", "qkv"] * 20)
    path = tmp_path / "s.yaml"
    path.write_text(
        f'preset: tiny\nfixed: {{train.steps: 3}}\ngrid: {{train.trainable: ["{long}", "mlp"]}}\n'
    )
    out = tmp_path / "sw"
    assert main(["sweep", str(path), "--quiet", "--workers", "1", "--out", str(out)]) == 0
    assert all(r["status"] == "done" for r in rows(out).values()) and (out / "summary.md").exists()


@pytest.mark.parametrize(
    "text,message",
    [
        ("seeds: 0", "count must be in"),
        ("seeds: -3", "count must be in"),
        ("seeds: []", "non-empty list"),
        ("fixed: {seed: 5}\nseeds: [0, 1]", "given more than once"),
        ("grid: {seed: [5, 6]}\nseeds: 2", "given more than once"),
        ("grid: {model.width: [32, 32.0]}", "same configuration"),
        ("seeds: [0, 0]", "same configuration"),
        ("grid: {train.bf16: [true, 'yes']}", "same configuration"),
        (f"seeds: {MAX_TRIALS + 1}", "count must be in"),
        ("seeds: 1000000", "count must be in"),
        (
            "grid: {model.width: ["
            + ", ".join(str(2 * i + 2) for i in range(200))
            + "]}\nseeds: 100",
            "at most",
        ),
    ],
)
def test_spec_gaps_are_refused_quickly(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(f"preset: tiny\n{text}\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        expand(spec_from_file(path))
    assert time.perf_counter() - t0 < 5
