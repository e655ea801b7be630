"""The command line: end to end on the tiny preset, and the error cases."""

import json
import subprocess
import sys

import pytest

from abrupt.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "abrupt.cli", *args], capture_output=True, text=True)


def test_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--preset", "tiny", "--out", str(out), "--seed", "3", "--quiet", "train.steps=20")
    assert r.returncode == 0, r.stderr
    assert {"config.json", "metrics.jsonl", "summary.json", "loss.png", "checkpoints"} <= {p.name for p in out.iterdir()}
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


@pytest.mark.parametrize("args,message", [
    (["data.rank=9"], "data.rank"),
    (["data.p_mask=1"], "data.p_mask"),
    (["model.heads=5"], "model.heads"),
    (["train.steps=-3"], "train.steps"),
    (["data.high=4"], "vocabulary"),
    (["train.lr=fast"], "train.lr"),
    (["foo.bar=1"], "unknown key"),
    (["data.m"], "section.key=value"),
    (["--preset", "huge"], "unknown preset"),
])
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
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "not a run directory" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--quiet", "train.steps=2"]) == 0
    for f in (out / "checkpoints").glob("*.safetensors"):
        f.write_bytes(b"garbage")
    assert main(["train", "--resume", str(out), "--quiet"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
