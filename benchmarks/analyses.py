"""Cost of every default analysis and of the report, against the training steps they explain.

Trains `--preset` (default: the README's main job, mws_full) for its own steps or `--steps` (the
baseline: its wall time), then runs `abrupt analyze`
twice (cold: nothing kept; warm: the nuclear-norm solutions the first run kept in
RUN/analysis/cache/ read back, as when an option is changed and the analyses run again) and
`abrupt report`, then the same twice with `--quick` (each analysis at 1/8 of its sample size), all
in this process on `--threads` threads. Prints each analysis's seconds, the totals and their ratio
to the training time (target: a cold analyze and report in at most the training's time), and the
two shared-forward
analyses against their kept reference implementations (`ablation.ablate` and `patching.patch`,
which rerun every layer of every pass), with a check that they give the same numbers. Last,
where a cold pass's time goes: seconds inside the model's layers (every forward pass), the
nuclear-norm solver and the figures; the first two are fixed by each analysis's sample size `n`
and the solver's tolerance, so their sum is the least a cold pass at default sizes can cost. And
the work, counted rather than timed (so load on the machine does not move it): tokens through
the model's layers in the analyses against the training's (its forward passes with gradients
counted 3x, for the backward pass's two matrix products per forward one).

    python benchmarks/analyses.py [--preset mws_full] [--steps N] [--threads 1]
"""

import argparse
import contextlib
import io
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from abrupt import baselines
from abrupt.analysis import ablation, patching
from abrupt.analysis.common import open_run, parse_heads
from abrupt.analysis.registry import default_analyses, discover
from abrupt.cli import main as cli
from abrupt.models import layers


def _timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli(argv)
    if code not in (0, None):
        raise SystemExit(f"abrupt {' '.join(argv)} failed with exit status {code}")
    return time.perf_counter() - t0


def _seconds(run: Path, names: list[str]) -> dict[str, float]:
    out = {}
    for name in names:
        path = run / "analysis" / name / "results.json"
        if path.exists():
            out[name] = json.loads(path.read_text())["seconds"]
    return out


def _references(run: Path) -> list[tuple[str, float, float, bool]]:
    """(analysis, reference seconds, shared-forward seconds, same numbers) for ablation and
    patching on the run's default checkpoints."""
    view = open_run(run)
    steps = sorted({view.pre, view.post})
    out = []
    for name, mod in (("ablation", ablation), ("patching", patching)):
        inputs = view.inputs(steps)
        task, cfg = inputs.task, inputs.cfg
        t0 = time.perf_counter()
        fast = mod.run(inputs).numbers
        t_fast = time.perf_counter() - t0
        batch = inputs.batch(256, 0)
        t0 = time.perf_counter()
        same = True
        for step, model in inputs.models.items():
            heads = [(l, h) for l in range(len(model.blocks)) for h in range(model.cfg.heads)]
            entry = fast["steps"][step]
            if name == "ablation":
                metric = task.headline
                for mode in ablation.MODES:
                    table = entry[f"per_head_{metric}"][mode]
                    for l, h in heads:
                        ref = ablation.ablate(task, cfg, model, batch, [(l, h)], mode)[metric]
                        same &= ref == table[l][h]
            else:
                chosen = parse_heads("all", len(model.blocks), model.cfg.heads)
                same &= patching.patch(task, cfg, model, batch, chosen) == entry["chosen"]
                region = next(iter(task.regions(cfg, batch)))
                for l, h in heads:
                    ref = patching.patch(task, cfg, model, batch, [(l, h)])[f"recovery_{region}"]
                    same &= ref == entry[f"per_head_recovery_{region}"][l][h]
        out.append((name, time.perf_counter() - t0, t_fast, bool(same)))
    return out


@contextlib.contextmanager
def _counting(work: dict[str, int]):
    """Adds to `work` the tokens (matrices x positions) that pass through each layer while
    the block runs: under "grad" those of passes that build a graph (training), else "no_grad"."""
    forward = layers.Block.forward

    def counted(self, x, *args, **kwargs):
        work["grad" if torch.is_grad_enabled() else "no_grad"] += x.shape[0] * x.shape[1]
        return forward(self, x, *args, **kwargs)

    layers.Block.forward = counted
    try:
        yield
    finally:
        layers.Block.forward = forward


@contextlib.contextmanager
def _accounting(totals: dict[str, float]):
    """Adds to `totals` the seconds spent in BERT's layers, the torch solver and each analysis's
    `plot` while the block runs (outermost calls only, so nothing is counted twice)."""
    depth = {key: 0 for key in totals}

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            depth[key] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[key] -= 1
                if depth[key] == 0:
                    totals[key] += time.perf_counter() - t0

        return wrapper

    targets = [(layers.Block, "forward", "layers"), (baselines, "torch_admm", "solver")]
    targets += [(mod, "plot", "figures") for mod in discover().values()]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in targets]
    try:
        for obj, attr, key in targets:
            setattr(obj, attr, timed(key, getattr(obj, attr)))
        yield
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="mws_full")
    p.add_argument("--steps", type=int, default=None, help="default: the preset's")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    threads = ["--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train_work = {"grad": 0, "no_grad": 0}
        with _counting(train_work):
            train = _timed(
                ["train", "--preset", args.preset, "--out", str(run), "--quiet", *threads]
                + ([f"train.steps={args.steps}"] if args.steps else [])
            )
        names = default_analyses()
        cold = _timed(["analyze", str(run), *threads])
        per_cold = _seconds(run, names)
        warm = _timed(["analyze", str(run), *threads])
        per_warm = _seconds(run, names)
        report = _timed(["report", str(run)])
        refs = _references(run)
        quick = [_timed(["analyze", str(run), "--quick", *threads]) for _ in ("cold", "warm")]
        per_quick = _seconds(run, names)
        quick_report = _timed(["report", str(run)])
        spent = {"layers": 0.0, "solver": 0.0, "figures": 0.0}
        shutil.rmtree(run / "analysis")  # cold again: no kept solutions, no kept figures
        analyze_work = {"grad": 0, "no_grad": 0}
        with _accounting(spent), _counting(analyze_work):
            accounted = _timed(["analyze", str(run), *threads])
    print(
        f"{args.preset}, {args.steps or 'its own'} training steps in {train:.1f} s, "
        f"{args.threads} thread(s)"
    )
    print(f"{'analysis':12s} {'cold s':>8s} {'warm s':>8s} {'quick s':>8s}")
    for name in per_cold:
        cells = [per_cold[name], per_warm.get(name, math.nan), per_quick.get(name, math.nan)]
        print(f"{name:12s} " + " ".join(f"{c:8.1f}" for c in cells))
    print(f"{'report':12s} {report:8.1f} {'':8s} {quick_report:8.1f}")
    totals = (
        ("cold", cold, report),
        ("warm", warm, report),
        ("--quick, cold", quick[0], quick_report),
        ("--quick, warm", quick[1], quick_report),
    )
    for label, total, rep in totals:
        print(
            f"analyze ({label}) + report: {total + rep:.1f} s = "
            f"{(total + rep) / train:.2f}x the training (target: cold <= 1x)"
        )
    for name, ref, fast, same in refs:
        print(
            f"{name}: its tables by the reference (every pass whole) {ref:.1f} s; the whole "
            f"analysis on shared forwards {fast:.1f} s (patching: with its per-position table "
            f"where the task has one, which the reference does not make); numbers "
            f"{'equal' if same else 'DIFFERENT'}"
        )
    rest = accounted - sum(spent.values())
    print(
        f"where a cold pass's {accounted:.1f} s go: model layers {spent['layers']:.1f} s, "
        f"solver {spent['solver']:.1f} s, figures {spent['figures']:.1f} s, the rest {rest:.1f} s"
    )
    floor = spent["layers"] + spent["solver"]
    print(
        f"least cost of a cold pass at default sizes (layers + solver): {floor:.1f} s = "
        f"{floor / train:.2f}x the training"
    )
    trained = 3 * train_work["grad"] + train_work["no_grad"]
    analysed = 3 * analyze_work["grad"] + analyze_work["no_grad"]
    print(
        f"work in the model's layers (token-layer passes, a backward pass as two): training "
        f"{trained:,}, a cold analyze {analysed:,} = {analysed / trained:.2f}x the training"
    )


if __name__ == "__main__":
    main()
