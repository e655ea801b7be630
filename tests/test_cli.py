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
    assert main(["train", "--preset", "paper", "--out", str(out), "--quiet", "train.steps=2", "train.batch_size=4",
                 "train.eval_size=8", "train.device=cpu", "train.ckpt_log_points=0", "train.keep_optim=1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["hidden"] == 768 and cfg["train"]["lr"] == 1e-4
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_baseline_json_and_compare_ood(tmp_path, capsys):
    assert main(["baseline", "--p-mask", "0.3", "--n", "16", "--json", "--lambdas", "1e-3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["method"] for r in rows] == ["nuclear_norm", "nuclear_norm_reg_0.001"]
    for r in rows:
        assert set(r) >= {"method", "loss", "loss_obs", "loss_mask", "nuclear_norm", "n", "p_mask", "seconds"}
        assert r["n"] == 16 and r["p_mask"] == 0.3 and 0 < r["loss_mask"] < 0.2
    assert rows[0]["loss_obs"] == 0.0  # exact completion keeps observed entries
    assert main(["baseline", "--n", "0"]) == 2
    assert main(["baseline", "model.hidden=3"]) == 2
    assert main(["baseline", "data.rank=9"]) == 2

    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", "train.steps=20"]) == 0
    assert main(["compare", str(run), "--n", "16", "--p-masks", "0.2,0.4"]) == 0
    res = json.loads((run / "analysis" / "compare" / "results.json").read_text())
    assert {(r["p_mask"], r["method"]) for r in res["rows"]} == {(p, m) for p in (0.2, 0.4) for m in ("bert", "nuclear_norm")}
    assert (run / "analysis" / "compare" / "fig3.png").exists()
    assert main(["ood", str(run), "--n", "8"]) == 0
    ood = json.loads((run / "analysis" / "ood" / "results.json").read_text())
    assert {r["family"] for r in ood["rows"]} == {"rank", "rows", "columns", "distribution", "p_mask"}
    assert (run / "analysis" / "ood" / "ood.png").exists()
    assert main(["compare", str(tmp_path / "nope")]) == 2
