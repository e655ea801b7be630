"""The prepared GPU script runs end to end on CPU (--smoke), as it would on a bare GPU machine."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_smoke_leaves_few_small_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_paper.py"), "--out", str(out), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 1 <= len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["analyze_ok"] and summary["report_ok"]
    assert set(summary["throughput"]) == {"ours/hf fp32", "ours/hf bf16", "bf16/fp32 ours"}
    with tarfile.open(out / "paper-run.tar.gz") as tar:
        names = set(tar.getnames())
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
    assert (
        config["train"]["bf16"] and config["train"]["progress"]
    )  # the GPU run's path: bf16 autocast, progress measures
    gpt = json.loads((out / "gpt-summary.json").read_text())
    assert gpt["steps"] == 10 and (out / "gpt-run.tar.gz").exists()


def tar_member(archive, name):
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read().decode()


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
