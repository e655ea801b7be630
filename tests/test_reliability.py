"""No run lost, mixed or stuck: concurrent writers, resume edge cases, and bad input as one line.

Each numbered case of the reliability issue has a test here; the concurrency cases run real
processes.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from abrupt.cli import main
from abrupt.run.rundir import read_metrics

TINY = ["--preset", "tiny", "--threads", "1", "--quiet"]


def cli(*args, cwd=None, wait=True):
    cmd = [sys.executable, "-m", "abrupt.cli", *args]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def one_line_error(capsys, code, expected, *fragments):
    assert code == expected
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


def make_run(path, steps=20, *extra):
    assert main(["train", *TINY, "--out", str(path), f"train.steps={steps}", *extra]) == 0
    return path


def tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


# --- 1-6: lost or mixed data ----------------------------------------------------------------------


def test_1_runs_started_together_get_their_own_directories(tmp_path):
    procs = [
        cli("train", *TINY, "--seed", str(s), "train.steps=30", cwd=tmp_path, wait=False)
        for s in range(3)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0], [p.stderr.read() for p in procs]
    dirs = sorted((tmp_path / "runs").iterdir())
    assert len(dirs) == 3
    for s, d in enumerate(dirs):
        assert f"seed{s}" in d.name
        steps = [r["step"] for r in read_metrics(d)]
        assert steps == sorted(set(steps)) and steps[-1] == 30
        assert json.loads((d / "config.json").read_text())["seed"] == s


def test_2_a_second_writer_is_refused_and_a_killed_writer_leaves_no_stale_lock(tmp_path):
    run = make_run(tmp_path / "run", 20)
    first = cli(
        "train", "--resume", str(run), "--threads", "1", "--quiet", "train.steps=100000", wait=False
    )
    try:
        deadline = time.time() + 120
        while (
            len(read_metrics(run)) <= 3 and time.time() < deadline
        ):  # the first writer is under way
            time.sleep(0.2)
        second = cli("train", "--resume", str(run), "--quiet", "train.steps=100000")
        assert second.returncode == 2
        assert (
            "in use by another process" in second.stderr
            and len(second.stderr.strip().splitlines()) == 1
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # killed outright: the lock went with the process, so the run resumes
    assert (
        main(
            [
                "train",
                "--resume",
                str(run),
                "--threads",
                "1",
                "--quiet",
                f"train.steps={read_metrics(run)[-1]['step'] + 20}",
            ]
        )
        == 0
    )
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == sorted(set(steps))


def test_3_a_foreign_directory_is_not_reused_and_empty_out_is_refused(
    tmp_path, capsys, monkeypatch
):
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    before = tree(foreign)
    one_line_error(
        capsys, main(["train", *TINY, "--out", str(foreign)]), 2, "not empty and is not a run"
    )
    assert tree(foreign) == before
    monkeypatch.chdir(tmp_path / "foreign")
    one_line_error(capsys, main(["train", *TINY, "--out", ""]), 2, "not the current directory")
    assert tree(foreign) == before


def test_4_a_run_killed_before_its_first_checkpoint_restarts(tmp_path, capsys):
    run = make_run(tmp_path / "run", 20)
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    (run / "metrics.jsonl").write_text("")
    one_line_error(
        capsys,
        main(["train", *TINY, "--out", str(run)]),
        2,
        "before its first checkpoint",
        "--resume",
    )
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert [r["step"] for r in read_metrics(run)][-1] == 20


def test_5_a_corrupt_middle_line_drops_no_other_row(tmp_path):
    run = make_run(tmp_path / "run", 20)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:1] + ["{garbage"] + lines[1:]) + "\n")
    with pytest.warns(UserWarning, match="corrupt line"):
        assert [r["step"] for r in read_metrics(run)] == [1, 10, 20]
    with pytest.warns(UserWarning):
        assert main(["train", "--resume", str(run), "--quiet", "train.steps=30"]) == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 10, 20, 30]


def test_6_resume_below_the_current_step_is_refused_without_changing_the_record(tmp_path, capsys):
    run = make_run(tmp_path / "run", 20)
    before = (run / "config.json").read_text()
    one_line_error(
        capsys, main(["train", "--resume", str(run), "train.steps=10"]), 2, "already at step 20"
    )
    one_line_error(capsys, main(["train", "--resume", str(run)]), 2, "already at step 20")
    assert (run / "config.json").read_text() == before


# --- 7-11: refused before anything is written
# ------------------------------------------------------


def test_7_unbounded_laws_need_clip(tmp_path, capsys):
    out = tmp_path / "g"
    one_line_error(
        capsys,
        main(["train", *TINY, "--out", str(out), "data.distribution=gaussian", "data.sigma=0.85"]),
        2,
        "unbounded support",
        "data.clip=true",
    )
    assert not out.exists()
    make_run(out, 20, "data.distribution=gaussian", "data.sigma=0.85", "data.clip=true")
    assert json.loads((out / "config.json").read_text())["data"]["clip"] is True


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["train", "model.init_std=inf"], "model.init_std"),
        (["train", "model.pos_init_std=inf"], "model.pos_init_std"),
        (["train", "model.ln_eps=inf"], "model.ln_eps"),
        (["train", "data.low=-inf"], "finite"),
        (["train", "data.high=inf"], "finite"),
        (["train", "--threads", "-1"], "--threads"),
        (["train", "--threads", "100000"], "--threads"),
        (["train", "seed=2e19"], "seed"),
        (["train", "train.device=cudaXYZ"], "train.device"),
        (["train", "data.m=200", "data.n=200"], "at most 1024"),
        (["baseline", "--lambdas=nan"], "finite"),
        (["baseline", "--lambdas=inf"], "finite"),
        (["baseline", "--seed", "1e23"], "--seed"),
        (["baseline", "--n", "100000000"], "--n"),
        (["baseline", "data.m=200", "data.n=200"], "at most 1024"),
    ],
)
def test_8_absurd_values_are_one_line_exit_2(tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    if args[0] == "train":
        args = ["train", "--preset", "tiny", "--quiet", "--out", "run", *args[1:]]
    one_line_error(capsys, main(args), 2, fragment)
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("rel") / "run"
    return make_run(run, 20)


@pytest.mark.parametrize(
    "option",
    [
        "copying.n=0",
        "probe.n=1",
        "probe.holdout=1.0",
        "ablation.modes=",
        "switching.n=0",
        "copying.substitutes=nan",
        "embeddings.k=0",
        "embeddings.permutations=-1",
        "attention.head_threshold=nan",
        "probe.ridge=-1",
        "patching.heads=9:0",
        "attention.lines=9",
        "embeddings.k=500",
        "compare.lambdas=-1",
    ],
)
def test_9_analysis_options_are_checked_before_anything_is_written(tiny_run, capsys, option):
    one_line_error(
        capsys, main(["analyze", str(tiny_run), "--set", option]), 2, option.split(".")[0]
    )
    assert not (tiny_run / "analysis").exists()


def test_9_every_option_is_checked_before_the_first_analysis(tiny_run, capsys):
    one_line_error(
        capsys,
        main(
            [
                "analyze",
                str(tiny_run),
                "--only",
                "copying,ablation",
                "--set",
                "ablation.modes=bogus",
            ]
        ),
        2,
        "ablation.modes",
    )
    assert not (tiny_run / "analysis").exists()
    one_line_error(capsys, main(["compare", str(tiny_run), "--lambdas=-1"]), 2, "compare.lambdas")
    assert not (tiny_run / "analysis").exists()


@pytest.mark.parametrize(
    "data,skipped",
    [
        (["data.m=1", "data.n=1", "data.rank=1"], ["attention", "embeddings", "compare", "ood"]),
        (["data.p_mask=0"], ["copying", "patching", "ablation", "switching", "ood"]),
    ],
)
def test_9_runs_some_analyses_cannot_handle_skip_them_up_front(tmp_path, capsys, data, skipped):
    run = make_run(tmp_path / "run", 20, *data)
    capsys.readouterr()
    assert main(["analyze", str(run), "--set", "compare.n=8"]) == 0
    out = capsys.readouterr().out
    for name in skipped:
        assert f"{name:11s} skipped:" in out
        assert not (run / "analysis" / name).exists()
    ran = {p.name for p in (run / "analysis").iterdir()}
    assert ran and not ran & set(skipped)
    assert main(["report", str(run)]) == 0


def test_10_output_paths_that_cannot_be_runs(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, fragment in (
        (afile, "is a file"),
        (afile / "sub", "cannot create"),
        ("/dev/null", "is a file"),
        ("/proc/abrupt-run", "cannot create"),
    ):
        one_line_error(capsys, main(["train", *TINY, "--out", str(out)]), 2, fragment)


def test_10_corrupt_run_files_are_named(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    assert main(["analyze", str(run), "--only", "copying"]) == 0
    capsys.readouterr()
    (run / "analysis" / "copying" / "results.json").write_text("{not json")
    one_line_error(capsys, main(["report", str(run)]), 2, "results.json")
    (run / "summary.json").write_text("[1, 2")
    one_line_error(capsys, main(["report", str(run)]), 2, "summary.json")
    one_line_error(capsys, main(["analyze", str(run)]), 2, "summary.json")
    (run / "summary.json").write_text("{}")
    (run / "config.json").write_text("nope")
    for args in (["report", str(run)], ["analyze", str(run)], ["train", "--resume", str(run)]):
        one_line_error(capsys, main(args), 2, "config.json")


def test_11_bad_input_exits_2(tiny_run, tmp_path, capsys):
    one_line_error(
        capsys, main(["compare", str(tiny_run), "--step", "7"]), 2, "no checkpoint at step"
    )
    one_line_error(capsys, main(["train", "--resume", str(tmp_path)]), 2, "not a run directory")
    one_line_error(capsys, main(["analyze", str(tmp_path)]), 2, "not a run directory")


# --- 12: divergence
# ------------------------------------------------------------------------------------


def strict(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("lr", ["1e6", "1e308"])
def test_12_divergence_keeps_only_finite_checkpoints_and_strict_json(tmp_path, capsys, lr):
    run = tmp_path / "run"
    line = one_line_error(
        capsys,
        main(["train", *TINY, "--out", str(run), f"train.lr={lr}"]),
        1,
        "diverged",
        "train.lr",
    )
    assert "far too large" in line
    for f in (run / "checkpoints").glob("step_*[0-9].safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(f)).values()), f
    strict((run / "summary.json").read_text())
    for row in (run / "metrics.jsonl").read_text().splitlines():
        strict(row)


# --- 13: the report trusts nothing in the run directory
# ----------------------------------------------


def test_13_report_escapes_values_and_embeds_only_the_runs_own_figures(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "evil"
    shutil.copytree(tiny_run, run)
    assert main(["analyze", str(run), "--only", "copying"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["preset"] = "<script>alert(1)</script>"
    (run / "config.json").write_text(json.dumps(cfg))
    res = json.loads((run / "analysis" / "copying" / "results.json").read_text())
    res["selection"] = "<img src=x onerror=alert(2)>"
    res["rows"][0]["input"] = "<b>bold</b>"
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not yours")
    res["figures"] = [
        os.path.relpath(secret, run / "analysis" / "copying"),
        "../../../../etc/passwd",
        "copying.png",
    ]
    (run / "analysis" / "copying" / "results.json").write_text(json.dumps(res))
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "<img src=x" not in page and "<b>bold</b>" not in page
    import base64

    assert base64.b64encode(b"\x89PNG not yours").decode() not in page
    assert page.count('<img src="data:image/png') == 2  # loss.png and the run's own copying.png
