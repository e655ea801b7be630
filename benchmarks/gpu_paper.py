"""The paper's own run on one GPU, as one prepared script for a bare machine.

    PYTHONPATH=src python benchmarks/gpu_paper.py --out "$OUT" [--budget 480] [--throughput 60]
    PYTHONPATH=src python benchmarks/gpu_paper.py --out /tmp/smoke --smoke        # CPU, tiny
    preset, < 1 min

Needs only what a GPU machine has (torch, transformers, safetensors, tqdm, matplotlib,
scikit-learn; Jinja2 comes with torch): no cvxpy, no install, no network. It
(a) times training steps of our model against transformers.BertModel + read-out on the same
    device and batches, in fp32 (TF32 matmuls) and in bf16, and prints ratios;
(b) trains the `paper` preset in bf16 for at most --budget seconds, ending soon after the drop
    (train.stop_after_drop), in a scratch run directory outside --out;
(c) runs every analysis (models on the GPU) and the report on that run (through the Python API:
    the run is a scratch folder, deleted once packed);
(d) writes a one-line summary.
(e) with --gpt-budget S (and always in --smoke), trains the `gpt` preset for at most S seconds.
Under --out it leaves at most six files, each far under 16 MiB: throughput.json,
summary.json, summary.txt and paper-run.tar.gz (metrics.jsonl, summary.json, config.json,
loss.png, report.html and every analysis's results.json; never a checkpoint), and with the GPT
stage gpt-summary.json and gpt-run.tar.gz.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # hf_oracle

from abrupt.config import apply_overrides, preset
from abrupt.data import generator, sample_batch
from abrupt.losses import losses
from abrupt.models.registry import build_model
from abrupt.train.trainer import resolve_device, train


def _steps_per_second(model, batches, device, bf16: bool, seconds: float) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    done, t0 = 0, time.perf_counter()
    while True:
        for b in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = losses(model(b.tokens), b)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - t0 >= seconds:
            return done / (time.perf_counter() - t0)


def throughput(name: str, device: torch.device, seconds: float) -> dict:
    """Ours against HF BertModel + read-out with the same weights and batches; fp32 (TF32) and
    bf16."""
    from hf_oracle import HFMatrixBert  # tests/hf_oracle.py: the HuggingFace reference

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cfg = preset(name)
    g = generator(0, device)
    batches = [sample_batch(cfg.data, cfg.train.batch_size, g) for _ in range(4)]
    out = {
        "preset": name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "steps_per_s": {},
    }
    for bf16 in (False, True):
        ours = build_model(cfg.model, cfg.data.m * cfg.data.n, seed=0).to(device)
        ref = HFMatrixBert(build_model(cfg.model, cfg.data.m * cfg.data.n, seed=0)).to(device)
        for model in (ours, ref):
            _steps_per_second(model, batches[:1], device, bf16, 0)  # warm-up
        precision = "bf16" if bf16 else "fp32/tf32"
        rate = {
            "ours": _steps_per_second(ours, batches, device, bf16, seconds / 4),
            "hf": _steps_per_second(ref, batches, device, bf16, seconds / 4),
        }
        out["steps_per_s"][precision] = rate
    r = out["steps_per_s"]
    out["ratios"] = {
        "ours/hf fp32": r["fp32/tf32"]["ours"] / r["fp32/tf32"]["hf"],
        "ours/hf bf16": r["bf16"]["ours"] / r["bf16"]["hf"],
        "bf16/fp32 ours": r["bf16"]["ours"] / r["fp32/tf32"]["ours"],
    }
    return out


def paper_run(run: Path, smoke: bool, budget: float, arch: str = "bert") -> dict:
    """Train in `run` for at most `budget` seconds (then stop at a step boundary, as Ctrl-C does).
    The smoke run takes the GPU run's path on CPU: bf16 autocast with fp32 losses, progress
    measures, early stop after the drop, the forecast; only the sizes differ."""
    gpu = [
        "train.bf16=true",
        "train.tf32=true",
        "train.log_every=100",
        "train.ckpt_every=5000",
        "train.keep_optim=1",
    ]
    if smoke:
        steps = (
            30 if arch == "bert" else 10
        )  # the GPT's bf16 forward on CPU is slow; ten steps cover its path
        cfg = apply_overrides(
            preset("tiny"),
            [
                "train.device=cpu",
                f"train.steps={steps}",
                "train.stop_after_drop=100",
                "train.bf16=true",
                "train.tf32=true",
                f"model.arch={arch}",
            ]
            + (["train.progress=true"] if arch == "bert" else []),
        )
    elif arch == "gpt":
        cfg = apply_overrides(preset("gpt"), [*gpu, "train.stop_after_drop=2000"])
    else:
        cfg = apply_overrides(
            preset("paper"), [*gpu, "train.stop_after_drop=2000", "train.progress=true"]
        )
    timer = threading.Timer(budget, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.perf_counter()
    try:
        summary = train(cfg, run, progress=not smoke)
        stopped = "finished" if summary["steps"] >= cfg.train.steps else "stopped after the drop"
    except KeyboardInterrupt:
        summary = json.loads((run / "summary.json").read_text())
        stopped = f"stopped at the {budget:.0f} s budget"
    finally:
        timer.cancel()
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["ended"] = stopped
    return summary


def analyze_and_report(run: Path, device: torch.device, smoke: bool) -> tuple[bool, bool]:
    """Every analysis and the report on the scratch run, through the Python API: the CLI would point
    at the scratch folder, which is deleted once its results are packed."""
    from abrupt.analysis.registry import analyze
    from abrupt.report import build

    opts = {"compare": {"n": 16}, "ood": {"n": 8}, "probe": {"n": 64}} if smoke else {}
    results = {}
    for name, step in (
        ("analyze", lambda: analyze(run, opts=opts, progress=False, device=str(device))),
        ("report", lambda: build(run)),
    ):
        try:
            step()
            results[name] = True
        # noqa: BLE001 -- a failure is reported in the summary, and the rest still packed
        except Exception as e:
            print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            results[name] = False
    return results["analyze"], results["report"]


def pack(run: Path, archive: Path) -> None:
    keep = [
        "metrics.jsonl",
        "summary.json",
        "config.json",
        "loss.png",
        "forecast.png",
        "report.html",
    ]
    with tarfile.open(archive, "w:gz") as tar:
        for name in keep:
            if (run / name).exists():
                tar.add(run / name, arcname=f"paper-run/{name}")
        for res in sorted((run / "analysis").glob("*/results.json")):
            tar.add(res, arcname=f"paper-run/analysis/{res.parent.name}/results.json")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--out", type=Path, required=True, help="the only folder written (at most four small files)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=480.0,
        help="seconds of paper-preset training (default 8 minutes)",
    )
    p.add_argument(
        "--throughput", type=float, default=60.0, help="seconds of throughput timing in all"
    )
    p.add_argument(
        "--gpt-budget",
        type=float,
        default=0.0,
        help="seconds of the `gpt` preset after the paper run (0: skip)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the same, end to end, on CPU with the tiny preset (< 1 min)",
    )
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu") if args.smoke else resolve_device("auto")
    if args.smoke:
        torch.set_num_threads(
            1
        )  # the command line's thread policy: a shared CPU is not oversubscribed
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device: run with --smoke on a CPU machine", file=sys.stderr)
        return 2
    tp = throughput(
        "tiny" if args.smoke else "paper", device, 2.0 if args.smoke else args.throughput
    )
    (args.out / "throughput.json").write_text(json.dumps(tp, indent=2) + "\n")
    print(json.dumps(tp["ratios"]))
    with tempfile.TemporaryDirectory(prefix="abrupt-paper-") as scratch:
        run = Path(scratch) / "paper"
        summary = paper_run(run, args.smoke, 120.0 if args.smoke else args.budget)
        analyze_ok, report_ok = analyze_and_report(run, device, args.smoke)
        pack(run, args.out / "paper-run.tar.gz")
        if args.gpt_budget > 0 or args.smoke:
            gpt_run = Path(scratch) / "gpt"
            gpt = paper_run(
                gpt_run, args.smoke, 120.0 if args.smoke else args.gpt_budget, arch="gpt"
            )
            (args.out / "gpt-summary.json").write_text(json.dumps(gpt, indent=2) + "\n")
            pack(gpt_run, args.out / "gpt-run.tar.gz")
    summary.update(
        throughput=tp["ratios"], device=tp["device"], analyze_ok=analyze_ok, report_ok=report_ok
    )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    line = (
        f"{tp['device']}: {summary['steps']} steps in {summary['wall_seconds']} s "
        f"({summary['ended']}); plateau L_mask "
        f"{summary.get('plateau_loss_mask')}, drop at step {summary.get('drop_step')}, sudden "
        f"{summary.get('sudden')}, final L_mask "
        f"{summary.get('final_loss_mask')}; ours/HF {tp['ratios']['ours/hf fp32']:.2f}x fp32, "
        f"{tp['ratios']['ours/hf bf16']:.2f}x bf16; "
        f"analyze {'ok' if analyze_ok else 'FAILED'}, report {'ok' if report_ok else 'FAILED'}"
    )
    (args.out / "summary.txt").write_text(line + "\n")
    print(line)
    print(
        f"wrote {args.out}: throughput.json, summary.json, summary.txt, paper-run.tar.gz "
        f"(`tar xzf {args.out / 'paper-run.tar.gz'}`, then open paper-run/report.html)"
    )
    return 0 if analyze_ok and report_ok else 1


if __name__ == "__main__":
    sys.exit(main())
