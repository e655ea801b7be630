"""The command line: end to end on the tiny preset, and the error cases."""

import json
import subprocess
import sys

import pytest

from abrupt.cli import main


@pytest.fixture
def restore_threads():
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "abrupt.cli", *args], capture_output=True, text=True
    )


def test_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = run_cli(
        "train", "--preset", "tiny", "--out", str(out), "--seed", "3", "--quiet", "train.steps=20"
    )
    assert r.returncode == 0, r.stderr
    assert {"config.json", "metrics.jsonl", "summary.json", "loss.png", "checkpoints"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    # resume to more steps, then redraw
    assert main(["train", "--resume", str(out), "--quiet", "train.steps=30"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 30
    (out / "loss.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "loss.png").exists()


def test_presets_lists_each(capsys):
    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    for name in ("paper", "cpu", "tiny"):
        assert name in text


@pytest.mark.parametrize(
    "args,message",
    [
        (["data.rank=9"], "data.rank"),
        (["data.p_mask=1"], "data.p_mask"),
        (["model.heads=5"], "model.heads"),
        (["train.steps=-3"], "train.steps"),
        (["data.high=4"], "vocabulary"),
        (["train.lr=fast"], "train.lr"),
        (["foo.bar=1"], "unknown key"),
        (["data.m"], "section.key=value"),
        (["--preset", "huge"], "unknown preset"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, message):
    out = tmp_path / "run"
    r = run_cli("train", "--out", str(out), *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


def test_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--quiet", "train.steps=2"]) == 0
    assert main(["train", "--preset", "tiny", "--out", str(out), "--quiet"]) == 2


def test_resume_of_a_non_run_and_corrupt_checkpoints(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--quiet", "train.steps=2"]) == 0
    for f in (out / "checkpoints").glob("*.safetensors"):
        f.write_bytes(b"garbage")
    assert main(["train", "--resume", str(out), "--quiet"]) == 1
    assert "nothing to resume" in capsys.readouterr().err


def test_paper_preset_starts_on_cpu(tmp_path):
    # the paper's full-size model (85M parameters), a couple of small steps
    out = tmp_path / "paper"
    assert (
        main(
            [
                "train",
                "--preset",
                "paper",
                "--out",
                str(out),
                "--quiet",
                "train.steps=2",
                "train.batch_size=4",
                "train.eval_size=8",
                "train.device=cpu",
                "train.ckpt_log_points=0",
                "train.keep_optim=1",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["width"] == 768 and cfg["train"]["lr"] == 1e-4
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_baseline_json_and_compare_ood(tmp_path, capsys, restore_threads):
    assert main(["baseline", "--p-mask", "0.3", "--n", "16", "--json", "--lambdas", "1e-3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["method"] for r in rows] == ["nuclear_norm", "nuclear_norm_reg_0.001"]
    for r in rows:
        assert set(r) >= {
            "method",
            "loss",
            "loss_obs",
            "loss_mask",
            "nuclear_norm",
            "n",
            "p_mask",
            "seconds",
        }
        assert (
            r["n"] == 16
            and r["p_mask"] == 0.3
            and 0 < r["loss_mask"] < 0.2
            and r["size"] == "7x7"
            and r["rank"] == 2
        )
    assert rows[0]["loss_obs"] == 0.0  # exact completion keeps observed entries
    assert main(["baseline", "--n", "4", "data.m=5"]) == 0
    assert capsys.readouterr().out.startswith("baseline: 4 seeded 5x7 rank-2 matrices")
    assert main(["baseline", "--n", "0"]) == 2
    assert main(["baseline", "model.width=3"]) == 2
    assert main(["baseline", "data.rank=9"]) == 2

    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", "train.steps=20"]) == 0
    for command, first_cells in (
        (["compare", str(run), "--n", "16", "--p-masks", "0.2,0.4"], {"0.2", "0.4"}),
        (["ood", str(run), "--n", "8"], {"rank", "rows", "columns", "distribution", "p_mask"}),
    ):
        restore_threads.set_num_threads(2)
        assert main(command) == 0
        assert (
            restore_threads.get_num_threads() == 1
        )  # the thread policy of every command that runs a model
        lines = (
            capsys.readouterr().out.splitlines()
        )  # the headline table: each setting's L_mask by method
        top = next(
            i for i, line in enumerate(lines) if "L_mask (MSE at hidden entries) at step 20" in line
        )
        assert lines[top + 1].split()[-2:] == ["bert", "nuclear_norm"]
        assert {line.split()[0] for line in lines[top + 2 :]} == first_cells
    res = json.loads((run / "analysis" / "compare" / "results.json").read_text())
    assert {(r["p_mask"], r["method"]) for r in res["rows"]} == {
        (p, m) for p in (0.2, 0.4) for m in ("bert", "nuclear_norm")
    }
    assert (run / "analysis" / "compare" / "fig3.png").exists()
    ood = json.loads((run / "analysis" / "ood" / "results.json").read_text())
    assert {r["family"] for r in ood["rows"]} == {
        "rank",
        "rows",
        "columns",
        "distribution",
        "p_mask",
    }
    assert (run / "analysis" / "ood" / "ood.png").exists()
    assert main(["compare", str(tmp_path / "nope")]) == 2


def test_one_thread_by_default_and_a_resume_keeps_its_threads_and_records_each_segment(
    tmp_path, restore_threads
):
    torch = restore_threads
    run = tmp_path / "run"
    torch.set_num_threads(2)  # as torch's own default would be on a 2-core machine
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", "train.steps=20"]) == 0
    first = json.loads((run / "config.json").read_text())
    assert first["versions"]["threads"] == 1 and [s["threads"] for s in first["segments"]] == [1]
    assert main(["train", "--resume", str(run), "--threads", "2", "--quiet", "train.steps=22"]) == 0
    torch.set_num_threads(1)
    assert (
        main(["train", "--resume", str(run), "--quiet", "train.steps=24"]) == 0
    )  # no --threads: as it last ran
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["versions"] == first["versions"]  # how the run started is never overwritten
    assert [(s["from_step"], s["threads"]) for s in cfg["segments"]] == [(0, 1), (20, 2), (22, 2)]
    assert all({"device", "torch", "python", "cpu", "started"} <= set(s) for s in cfg["segments"])
    # the commands that run models use the same policy: one thread unless --threads is given
    # (compare and ood: test_baseline_json_and_compare_ood)
    for args in (
        ["report", str(run)],
        ["analyze", str(run), "--only", "copying", "--set", "copying.n=8"],
        ["baseline", "--n", "4"],
    ):
        torch.set_num_threads(2)
        assert main(args) == 0
        assert torch.get_num_threads() == 1, args
    assert main(["report", str(run), "--threads", "2"]) == 0 and torch.get_num_threads() == 2


def test_a_stopped_training_names_the_resume_command(tmp_path):
    import signal
    import time

    run = tmp_path / "my run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "abrupt.cli",
            "train",
            "--preset",
            "tiny",
            "--out",
            str(run),
            "train.steps=100000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_20.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"resume with `abrupt train --resume '{run}'`" in err and "DIR" not in err
    assert "interrupted: last checkpoint step" in err and "eval_L_mask" in err


def test_progress_is_labelled_and_plain_lines_when_not_a_terminal(tmp_path, capsys):
    import io

    from abrupt.train.callbacks import StepProgress

    assert (
        main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "train.steps=60"]) == 0
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train: step")]
    assert (
        "\r" not in err
        and 1 <= len(lines) <= 10
        and lines[-1].startswith("train: step 60/60 (100%)")
    )
    assert "train_loss" in lines[-1] and "eval_L_mask" in lines[-1]
    stream = io.StringIO()  # not a terminal: a line at every tenth of the steps, never a redraw
    bar = StepProgress(1000, 0, every_s=1e9, stream=stream)
    for step in range(1, 1001):
        bar.update(step)
    bar.close()
    assert [line.split()[2] for line in stream.getvalue().splitlines()] == [
        f"{k}00/1000" for k in range(1, 11)
    ]
