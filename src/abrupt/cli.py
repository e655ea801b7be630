"""Command-line interface: a thin layer over the Python API.

Exit status 2 with a one-line message for bad input (nothing is written), 1 for a run that had to
stop (non-finite loss, corrupt checkpoint), 130 when interrupted (the run stays resumable).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import math
import os
import re
import shlex
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import ContextManager

from . import tracking
from .checks import validate_run
from .config import DEFAULT_PRESET, MAX_SEED, PRESETS, ConfigError, apply_overrides, preset, set_key
from .config.reference import keys_text
from .config.schema import field_docs
from .run import checkpoints
from .run.rundir import atomic_write_json, dumps, read_run


class UsageError(Exception):
    """Bad command-line input: reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (`abrupt: error: ...`), like every other bad
    input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(
            2, f"abrupt: error: {self.prog.split()[-1]}: {message} (see `{self.prog} --help`)\n"
        )


def _parser() -> argparse.ArgumentParser:
    # One flat list of argparse declarations, a block per command: long, but read as a table.
    p = _Parser(
        prog="abrupt", description="Abrupt learning in a BERT trained on matrix completion."
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a model into a run directory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configuration keys (section.key=value; defaults are the paper's, a preset changes "
        "some):\n" + keys_text(96),
    )
    t.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"preset name (default {DEFAULT_PRESET}); see `abrupt presets`",
    )
    t.add_argument(
        "--out", type=Path, help="run directory (default runs/<preset>-seed<N>-<YYYYmmdd-HHMMSS>)"
    )
    t.add_argument("--seed", type=int, help="seed for weights, data and evaluation batch")
    t.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its last complete checkpoint",
    )
    t.add_argument(
        "--threads",
        type=int,
        help=f"CPU threads for torch (default {DEFAULT_THREADS}; with --resume, the run's last "
        "count); more cores are best used by several runs at once: `abrupt sweep`",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides (the keys are listed below)",
    )

    sub.add_parser("presets", help="list presets")

    pl = sub.add_parser("plot", help="redraw loss.png and summary.json from metrics.jsonl")
    pl.add_argument("run", type=Path)

    b = sub.add_parser("baseline", help="complete seeded matrices with nuclear-norm minimization")
    b.add_argument("--p-mask", type=float, default=0.3)
    b.add_argument("--n", type=int, default=512, help="number of matrices")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--solver", choices=("torch", "cvxpy"), default="torch")
    b.add_argument(
        "--lambdas",
        type=_floats,
        default=baselines_lambdas(),
        help="regularization weights, comma-separated ('' for none)",
    )
    b.add_argument(
        "--json", action="store_true", help="one JSON object per method on standard output"
    )
    b.add_argument(
        "overrides",
        nargs="*",
        metavar="data.key=value",
        help="other data settings (data.m, data.rank, ...)",
    )
    _threads_arg(b)

    for name, helptext in (
        (
            "compare",
            "Fig. 3: BERT vs nuclear-norm minimization across p_mask (= analyze --only compare)",
        ),
        (
            "ood",
            "Fig. 18/19: BERT vs nuclear-norm minimization out of distribution (= analyze --only "
            "ood)",
        ),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("run", type=Path)
        c.add_argument("--step", type=int, help="checkpoint step (default: the last)")
        c.add_argument("--n", type=int, default=512, help="matrices per setting")
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--solver", choices=("torch", "cvxpy"), default="torch")
        if name == "compare":
            c.add_argument(
                "--p-masks",
                type=_floats,
                default=None,
                help="comma-separated (default 0.10,0.15,...,0.60)",
            )
            c.add_argument(
                "--lambdas",
                type=_floats,
                default=(),
                help="also regularized forms, comma-separated",
            )
        _threads_arg(c)

    a = sub.add_parser("analyze", help="run the interpretability analyses on a trained run")
    a.add_argument("run", type=Path, nargs="?")
    a.add_argument("--only", help="comma-separated analyses (default all; `--options` lists them)")
    a.add_argument(
        "--steps",
        help="comma-separated checkpoint steps (default: a plateau and a post-drop checkpoint)",
    )
    a.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="analysis.option=value",
        help="analysis option, e.g. patching.heads=1:0,2:* or ablation.modes=mean; see --options",
    )
    a.add_argument(
        "--options",
        action="store_true",
        help="list every analysis option with its default and exit",
    )
    a.add_argument(
        "--device", default="cpu", help="where the models run: cpu (default), cuda or cuda:N"
    )
    a.add_argument(
        "--quick",
        action="store_true",
        help="every analysis at 1/8 of its sample size n (at least 64; not where --set gives n, "
        "nor llc): sampling errors 2-2.8x; for iterating on an option",
    )
    _threads_arg(a)

    w = sub.add_parser(
        "sweep",
        help="many trainings at once: a grid of overrides, on a local pool or Ray",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_sweep_values_text(),
    )
    w.add_argument(
        "spec",
        nargs="?",
        type=Path,
        help="YAML spec file (preset, fixed, grid, zip, seeds); or give key=a,b,c",
    )
    w.add_argument("--preset", help="preset of every trial (default: the spec's, else small)")
    w.add_argument("--out", help="sweep directory (default sweeps/<preset>-<time>)")
    w.add_argument(
        "--resume", type=Path, metavar="SWEEP", help="finish the trials a stopped sweep left"
    )
    w.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 1)),
        help="trials at once (default: one per core)",
    )
    w.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per trial (default 1: trials do not oversubscribe)",
    )
    w.add_argument("--backend", choices=("local", "ray"), default="local")
    w.add_argument(
        "--address",
        help="Ray cluster address (auto, ray://host:10001); default: a local Ray cluster",
    )
    w.add_argument("--gpus", type=float, default=0.0, help="GPUs per trial (Ray backend)")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.add_argument(
        "overrides",
        nargs="*",
        metavar="key=a,b,c",
        help="swept (several values) or fixed (one value) keys; seed=0,1,2 (values: see below)",
    )

    k = sub.add_parser(
        "components",
        help="Fig. 8: re-initialise each component of a converged run and train it alone",
    )
    k.add_argument("run", type=Path, nargs="?")
    k.add_argument(
        "--steps", type=int, default=5000, help="training steps per component (default 5000)"
    )
    k.add_argument("--step", type=int, help="start from this checkpoint of RUN (default: its last)")
    k.add_argument("--out", type=Path, help="sweep directory (default RUN/components)")
    k.add_argument("--resume", type=Path, metavar="DIR", help="finish a stopped components sweep")
    k.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    k.add_argument("--quiet", action="store_true")

    f = sub.add_parser(
        "forecast",
        help="how early and how well the escape is forecast, replayed on runs",
    )
    f.add_argument(
        "paths", type=Path, nargs="+", help="run directories or folders of them (recursive)"
    )
    f.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for summary.md, results.json, intervals.png",
    )
    f.add_argument("--every", type=int, default=1, help="forecast at every N-th log (default 1)")
    f.add_argument(
        "--calibration",
        type=Path,
        metavar="JSON",
        help="also write the calibration table fit on the calibration runs here (the package's: "
        "src/abrupt/dynamics/calibration.json)",
    )
    r = sub.add_parser("report", help="write RUN/report.html from the run's results")
    r.add_argument("run", type=Path)
    _threads_arg(r)

    e = sub.add_parser(
        "export", help="write a checkpoint as a transformers model directory (BertModel, GPT-2)"
    )
    e.add_argument("run", type=Path)
    e.add_argument("--step", type=int, help="checkpoint step (default: the last)")
    e.add_argument(
        "--to",
        nargs=2,
        required=True,
        metavar=("FORMAT", "DIR"),
        help="hf DIR: a new or empty directory that transformers' from_pretrained loads",
    )
    return p


def _sweep_values_text() -> str:
    """`abrupt sweep --help`'s rule for a comma (sweep.runner.split_values applies it)."""
    lists = [k for k, (typ, _, _) in field_docs().items() if typ == "list"]
    rule = (
        "A comma separates a key's swept values: model.width=32,64 seed=0,1 is four trials. A key "
        "whose one value is itself a comma list (type list in `abrupt train --help`: "
        f"{', '.join(lists)}) takes the whole text as that value: train.log_to=tensorboard,wandb "
        "is one trial with both trackers. A ';' separates swept values for any key, and is the "
        "way to sweep a list key (quote it for the shell): 'train.trainable=attention;mlp' is two "
        "trials, 'attn_bias.layers=0,1;2' two."
    )
    return "values:\n" + "\n".join(
        textwrap.wrap(rule, 96, initial_indent="  ", subsequent_indent="  ")
    )


def _threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, help=f"CPU threads for torch (default {DEFAULT_THREADS})")


def baselines_lambdas() -> tuple[float, ...]:
    from .baselines import PAPER_LAMBDAS

    return PAPER_LAMBDAS


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got '{text}'"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got '{text}'")
    if len(set(values)) < len(values):  # a setting given twice would be computed and shown twice
        raise argparse.ArgumentTypeError(f"give each number once, got '{text}'")
    return values


# baseline/compare/ood: beyond this the batched solver's memory is the limit
MAX_MATRICES = 1_000_000


def _check_count_and_seed(n: int, seed: int) -> None:
    if not 1 <= n <= MAX_MATRICES:
        raise UsageError(f"--n: must be in [1, {MAX_MATRICES}], got {n}")
    if not 0 <= seed < MAX_SEED:
        raise UsageError(f"--seed: must be in [0, 2^62), got {seed}")


def _check_threads(threads: int) -> None:
    limit = 4 * (os.cpu_count() or 1)
    if not 1 <= threads <= limit:
        raise UsageError(
            f"--threads: must be in [1, {limit}] on this machine ({os.cpu_count()} cores), got "
            f"{threads}"
        )


def _check_workers(workers: int) -> None:
    if not 1 <= workers <= 1024:
        raise UsageError(f"--workers: must be in [1, 1024], got {workers}")


# Torch's own default, one thread per core, can be a little faster on an idle machine but falls off
# a cliff when other jobs share the cores (OpenMP threads wait on each other: 4-9x slower for these
# small models, benchmarks/threads.py); more cores are better used by more runs (`abrupt sweep`)
# than by more threads per run.
DEFAULT_THREADS = 1


def _set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (`threads`, or DEFAULT_THREADS); returns it."""
    import torch

    threads = DEFAULT_THREADS if threads is None else threads
    _check_threads(threads)
    torch.set_num_threads(threads)
    return threads


def _cmd_train(args: argparse.Namespace) -> int:
    from .run.rundir import unique_dir
    from .train.trainer import resume_point, train

    if args.threads is not None:
        _check_threads(args.threads)
    if args.resume:
        if args.out or args.seed is not None or args.preset != DEFAULT_PRESET:
            raise UsageError(
                "--resume takes its configuration from the run; only train.steps=N may be given"
            )
        record = read_run(args.resume)
        cfg = record.config
        for item in args.overrides:
            key, _, value = item.partition("=")
            if key.strip() != "train.steps":
                raise UsageError(f"--resume: only train.steps may be overridden, got '{key}'")
            set_key(cfg, "train.steps", value)
        validate_run(cfg)
        last = resume_point(args.resume)
        if last is not None and last.step >= cfg.train.steps:
            raise UsageError(
                f"{args.resume} is already at step {last.step}; give train.steps=N with N > "
                f"{last.step} to extend it "
                "(nothing was changed)"
            )
        out = args.resume
        # a resumed run goes on as it last ran (thread counts change the trajectory), unless told
        # otherwise
        _set_threads(args.threads or min(record.threads or DEFAULT_THREADS, os.cpu_count() or 1))
    else:
        _set_threads(args.threads)
        cfg = preset(args.preset)
        if args.seed is not None:
            set_key(cfg, "seed", args.seed)
        validate_run(apply_overrides(cfg, args.overrides))  # before a run directory is made
        tracking.require(cfg.train.log_to)
        out = (
            args.out
            if args.out is not None
            else unique_dir(
                Path("runs"), f"{cfg.preset}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
            )
        )
    try:
        summary = train(cfg, out, resume=bool(args.resume), verbose=not args.quiet)
    except KeyboardInterrupt:
        print(_interrupted(Path(out), cfg.train.steps), file=sys.stderr)
        return 130
    # strict JSON: an infinite drop factor prints as null, as on disk
    print(dumps(summary, indent=2))
    print(f"run directory: {out}")
    return 0


def _interrupted(out: Path, steps: int) -> str:
    """What a stopped training says: where it stopped, its last losses, and the command that resumes
    it."""
    from .dynamics.transition import headline_of
    from .run.rundir import read_metrics
    from .train.trainer import resume_point

    if not (out / "config.json").exists():
        return f"abrupt: interrupted before {out} held a run; nothing to resume"
    rows, last = read_metrics(out), resume_point(out)
    row = rows[-1] if rows else {}
    num = lambda v: f"{v:.4g}" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
    name, value = headline_of(row)
    losses = f"; at step {row.get('step')} train_loss {num(row.get('loss'))}, {name} {num(value)}"
    losses = losses if row else ""
    kept = (
        f"last checkpoint step {last.step} of {steps}"
        if last
        else "no checkpoint yet (it restarts from step 0)"
    )
    return (
        f"abrupt: interrupted: {kept}{losses}; summary in {out / 'summary.json'}\n"
        f"resume with `abrupt train --resume {shlex.quote(str(out))}`"
    )


def _cmd_presets(args: argparse.Namespace) -> int:
    width = max(map(len, PRESETS))
    for name, (desc, _) in PRESETS.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {desc}{mark}")
    print(f"\nconfiguration keys (section.key=value; docs/configuration.md):\n{keys_text()}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .run.rundir import read_metrics
    from .train.summary import finish

    if not read_metrics(args.run):
        raise UsageError(f"{args.run}: no metrics.jsonl with logged steps")
    print(dumps(finish(args.run), indent=2))
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from .baselines import score_methods
    from .config import DataConfig, validate_data
    from .data import seeded_batch

    _check_count_and_seed(args.n, args.seed)
    _set_threads(args.threads)
    if any(lam <= 0 for lam in args.lambdas):
        raise UsageError("--lambdas: each must be > 0")
    cfg = preset(DEFAULT_PRESET)
    cfg.data = DataConfig()
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("data."):
            raise UsageError(f"'{item}': only data.key=value overrides apply here")
        set_key(cfg, key, value)
    set_key(cfg, "data.p_mask", args.p_mask)
    validate_data(cfg.data)
    batch = seeded_batch(cfg.data, args.n, args.seed)
    rows = score_methods(batch, cfg.data.m, cfg.data.n, lambdas=args.lambdas, solver=args.solver)
    d = cfg.data
    if not args.json:
        print(
            f"baseline: {args.n} seeded {d.m}x{d.n} rank-{d.rank} matrices ({d.distribution} "
            "factors; data.m, data.n, "
            f"data.rank, ... to change), p_mask {args.p_mask}, seed {args.seed}, {args.solver} "
            "solver"
        )
    for row in rows:
        row.update(n=args.n, p_mask=args.p_mask, size=f"{d.m}x{d.n}", rank=d.rank)
        if args.json:
            print(
                dumps(
                    {
                        k: row[k]
                        for k in (
                            "method",
                            "loss",
                            "loss_obs",
                            "loss_mask",
                            "nuclear_norm",
                            "n",
                            "size",
                            "rank",
                            "p_mask",
                            "seconds",
                            "failures",
                            "inaccurate",
                        )
                    }
                )
            )
        else:
            print(
                f"{row['method']:28s} L {row['loss']:.5f}  L_obs {row['loss_obs']:.5f}  L_mask "
                f"{row['loss_mask']:.5f}  "
                f"||X||_* {row['nuclear_norm']:.4f}  {row['seconds']:.2f}s"
                + (f"  NOT CONVERGED: {row['failures']}" if row["failures"] else "")
                + (f"  INACCURATE: {row['inaccurate']}" if row["inaccurate"] else "")
            )
    return 0


def _cmd_compare_or_ood(args: argparse.Namespace) -> int:
    """`abrupt compare|ood RUN [flags]`: the same as `abrupt analyze RUN --only NAME --steps STEP
    --set ...`."""
    _check_count_and_seed(args.n, args.seed)
    _set_threads(args.threads)
    opts = {"n": args.n, "seed": args.seed, "solver": args.solver}
    if args.command == "compare":
        if args.p_masks is not None:
            opts["p_masks"] = args.p_masks
        opts["lambdas"] = args.lambdas
    steps = [args.step] if args.step is not None else [_last_step(args.run)]
    status = _analyze(args.run, [args.command], steps, {args.command: opts})
    print(_headline(args.run, args.command))
    return status


def _headline(run: Path, name: str) -> str:
    """compare / ood: the hidden-entry MSE of each method in each setting, as a plain table."""
    from .analysis.common import Table
    from .run.rundir import read_json

    res = read_json(Path(run) / "analysis" / name / "results.json")
    keys = ("p_mask",) if name == "compare" else ("family", "variant")
    methods = list(dict.fromkeys(r["method"] for r in res["rows"]))
    by_setting: dict[tuple, dict[str, float]] = {}
    for r in res["rows"]:
        by_setting.setdefault(tuple(r[k] for k in keys), {})[r["method"]] = r["loss_mask"]
    header = ["p_mask"] if name == "compare" else ["family", "setting"]
    table = Table(
        [*header, *methods],
        [[*setting, *(losses.get(m) for m in methods)] for setting, losses in by_setting.items()],
    )
    per = "per p_mask" if name == "compare" else "per setting"
    head = (
        f"{name}: L_mask (MSE at hidden entries) at step {res['step']}, {res['n']} matrices {per}"
    )
    return f"{head}\n{table.text()}"


def _last_step(run: Path) -> int:
    ckpts = checkpoints.list_checkpoints(Path(run) / "checkpoints", verify=False)
    if not (Path(run) / "config.json").exists():
        raise UsageError(f"{run} is not a run directory (no config.json)")
    if not ckpts:
        raise UsageError(f"{run} has no checkpoints")
    return ckpts[-1].step


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.registry import options, parse_option

    if args.options:
        for name, opts in options().items():
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in opts.items()))
        return 0
    if args.run is None:
        raise UsageError("analyze: give a run directory (or --options)")
    _set_threads(args.threads)
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    try:
        steps = [int(x) for x in args.steps.split(",")] if args.steps else None
    except ValueError:
        raise UsageError(
            f"--steps: expected comma-separated integers, got '{args.steps}'"
        ) from None
    opts: dict = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"--set '{item}': expected analysis.option=value")
        if option in opts.get(name, {}):  # the second would silently win
            raise UsageError(f"--set {key} given more than once")
        try:
            opts.setdefault(name, {})[option] = parse_option(name, option, value)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise UsageError(f"--device: must be cpu, cuda or cuda:N, got '{args.device}'")
    if args.device != "cpu":
        from .train.trainer import resolve_device

        resolve_device(args.device, "--device")
    return _analyze(args.run, only, steps, opts, args.device, args.quick)


def _analyze(
    run: Path,
    only: list[str] | None,
    steps: list[int] | None,
    opts: dict,
    device: str = "cpu",
    quick: bool = False,
) -> int:
    from .analysis.registry import analyze

    print(f"analyze: {run}")
    t0 = time.perf_counter()
    try:
        analyze(run, only, steps, opts, device=device, quick=quick)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"done in {time.perf_counter() - t0:.1f}s; `abrupt report {run}` writes the page")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build

    if not (args.run / "config.json").exists():
        raise UsageError(f"{args.run} is not a run directory (no config.json)")
    _set_threads(args.threads)
    print(f"wrote {build(args.run)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportError, export

    to, out = args.to
    try:
        path = export(args.run, Path(out), args.step, to)
    except ExportError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {path} (README.md there says how to load and predict)")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .run.rundir import unique_dir
    from .sweep.runner import Sweep, check_backend, spec_from_args, spec_from_file

    # no spec file: the first word is an override
    if args.spec is not None and "=" in str(args.spec):
        args.overrides.insert(0, str(args.spec))
        args.spec = None
    _check_workers(args.workers)
    _check_threads(args.threads)
    if not 0 <= args.gpus < math.inf:
        raise UsageError(f"--gpus: must be >= 0, got {args.gpus}")
    check_backend(args.backend, args.address)
    if args.resume:
        if args.spec or args.overrides or args.preset or args.out:
            raise UsageError(
                "--resume takes everything from the sweep's sweep.json; give only --workers, "
                "--backend, --address"
            )
        sweep = Sweep.open(args.resume)
    else:
        if args.spec:
            spec = spec_from_file(args.spec, args.preset)
            if args.overrides:
                extra = spec_from_args(spec.preset, args.overrides)
                spec.fixed.update(extra.fixed)
                spec.grid.update(extra.grid)
                spec.seeds = extra.seeds or spec.seeds
        else:
            spec = spec_from_args(args.preset or "small", args.overrides)
        out = (
            Path(args.out)
            if args.out is not None
            else unique_dir(Path("sweeps"), f"{spec.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        )
        sweep = Sweep.create(out, spec, args.threads)
    args.resumable = sweep.out
    print(
        f"sweep: {len(sweep.trials)} trials in {sweep.out} ({args.backend}, {args.workers} at "
        f"once, {sweep.threads} thread(s) each)"
    )
    rows = sweep.run(args.backend, args.workers, args.gpus, args.address, verbose=not args.quiet)
    status = [r.get("status") for r in rows.values()]
    left = len(sweep.trials) - status.count("done") - status.count("failed")
    print(
        f"done: {status.count('done')} finished, {status.count('failed')} failed"
        + (f", {left} stopped (`abrupt sweep --resume {sweep.out}` finishes them)" if left else "")
        + f"; see {sweep.out / 'summary.md'}"
    )
    return 1 if status.count("failed") == len(sweep.trials) else 0  # 1: nothing came of it


def _cmd_components(args: argparse.Namespace) -> int:
    from .sweep import components
    from .sweep.runner import Sweep

    _check_workers(args.workers)
    if args.resume:
        sweep = Sweep.open(args.resume)
    else:
        if args.run is None:
            raise UsageError("components: give a converged run directory (or --resume DIR)")
        if args.steps < 1:
            raise UsageError(f"--steps: must be >= 1, got {args.steps}")
        if args.step is not None:
            checkpoints.find(args.run, args.step)
        sweep = Sweep.create(
            args.out or args.run / "components",
            components.spec(args.run, args.steps, args.step),
            command="components",
        )
    args.resumable = sweep.out
    print(f"components: {len(sweep.trials)} groups, each trained alone, in {sweep.out}")
    sweep.run("local", args.workers, verbose=not args.quiet)
    print(f"wrote {components.report(sweep)} and components.md")
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from .dynamics import study as forecast_study
    from .plots import plot_study_intervals

    if args.every < 1:
        raise UsageError(f"--every: must be >= 1, got {args.every}")
    try:
        runs, repeats = forecast_study.load_runs(args.paths)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    if repeats:
        print(f"forecast: each run counted once; dropped as repeats: {', '.join(repeats)}")
    if len(runs) < 2:
        raise UsageError(
            f"forecast: need at least 2 runs (one to calibrate, one held out), found {len(runs)}"
        )
    result = forecast_study.study(runs, args.every)
    summary = forecast_study.write(result, args.out)
    plot_study_intervals(result, args.out / "intervals.png")
    print(f"wrote {summary} and intervals.png")
    if args.calibration:
        atomic_write_json(args.calibration, result["calibration"])
        print(f"wrote {args.calibration}")
    return 0


COMMANDS = {
    "forecast": _cmd_forecast,
    "components": _cmd_components,
    "sweep": _cmd_sweep,
    "analyze": _cmd_analyze,
    "report": _cmd_report,
    "export": _cmd_export,
    "train": _cmd_train,
    "presets": _cmd_presets,
    "plot": _cmd_plot,
    "baseline": _cmd_baseline,
    "compare": _cmd_compare_or_ood,
    "ood": _cmd_compare_or_ood,
}


def _interrupt_hint(args: argparse.Namespace) -> str:
    """What to run after an interrupt: the interrupted command's own way to go on, with its path."""
    if args.command in ("sweep", "components"):
        out = getattr(args, "resumable", None)
        return (
            f"resume with `abrupt {args.command} --resume {out}`" if out else "nothing was started"
        )
    if args.command == "analyze" and args.run is not None:
        return (
            f"the analyses that finished are kept in {args.run / 'analysis'}; "
            f"`abrupt analyze {args.run} --only NAMES` runs the others"
        )
    if args.command == "export":
        return "nothing was written; run the same `abrupt export` again"
    if args.command in ("report", "compare", "ood"):
        return f"nothing was lost; run `abrupt {args.command} {args.run}` again"
    return "resume with `abrupt train --resume DIR`"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse, with section.key=value overrides accepted anywhere on the line: after a flag too
    (`--threads 1 train.steps=5`), where argparse alone would not take a second run of them."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a scheduler's stop ends every command as Ctrl-C does, with its hint


def _escape(error: UnicodeEncodeError) -> tuple[str | bytes, int]:
    """The error handler of `_escape_unencodable`, one character at a time: a byte the locale
    could not decode (a surrogate escape: the path 'ü' under LC_ALL=C) back as it was, as Python's
    own surrogateescape does; any other character backslash-escaped ('×' as '\\xd7')."""
    start = error.start
    one = UnicodeEncodeError(error.encoding, error.object, start, start + 1, error.reason)
    if "\udc80" <= error.object[start] <= "\udcff":
        return codecs.lookup_error("surrogateescape")(one)
    return codecs.backslashreplace_errors(one)


def _escape_unencodable() -> None:
    """Standard output and error write what their encoding cannot (a path, or the '×', '–', 'λ'
    of a message or table, under PYTHONIOENCODING=ascii or an ASCII or Latin-1 locale) through
    `_escape`, where printing it would raise UnicodeEncodeError; for the rest of the process."""
    codecs.register_error("abrupt.escape", _escape)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a text stream; one a caller swapped in may not be
            stream.reconfigure(errors="abrupt.escape")


def main(argv: list[str] | None = None) -> int:
    _escape_unencodable()  # before argparse, whose --help and errors print too
    try:
        args = _parse(argv)
    except SystemExit as e:  # --help, or a bad argument already reported in one line
        return int(e.code or 0)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if on_main else None
    try:
        return _run(args)
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)


# The commands that write into the run directory they are given (summary.json and the figures,
# analysis/, report.html, components/): each holds the run's lock for its whole life, as training
# does, so that neither writes while the other holds it (one writer per run directory).
WRITES_INTO_RUN = ("plot", "analyze", "compare", "ood", "report", "components")


def _run_lock(args: argparse.Namespace) -> ContextManager[object]:
    """The lock of the run a command writes into (RunLock: a RunDirError when another process
    holds it); nothing to hold for any other command, or for a path that is not a directory (the
    command itself then says what is wrong with it, and no lock file is made)."""
    from .run.rundir import RunLock

    run = getattr(args, "run", None) if args.command in WRITES_INTO_RUN else None
    return RunLock(run) if run is not None and Path(run).is_dir() else contextlib.nullcontext()


def _run(args: argparse.Namespace) -> int:
    """The command, with every way it can fail turned into one line and an exit status."""
    from .run.rundir import RunDirError
    from .train.trainer import TrainingError

    try:
        with _run_lock(args):
            return COMMANDS[args.command](args)
    except (ConfigError, UsageError, RunDirError) as e:
        print(f"abrupt: error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, checkpoints.CheckpointError) as e:
        print(f"abrupt: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"abrupt: interrupted; {_interrupt_hint(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into e.g. `head`, which closed early: not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as e:  # a full disk, a path the system refuses: what failed, in one line
        where = f" ({e.filename})" if e.filename else ""
        print(f"abrupt: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:
        # torch reports a failed allocation as a RuntimeError (OutOfMemoryError on a GPU)
        if (
            not isinstance(e, MemoryError)
            and type(e).__name__ != "OutOfMemoryError"
            and "can't allocate memory" not in str(e)
        ):
            raise
        print(
            "abrupt: error: out of memory; lower model.width, train.batch_size or train.eval_size",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
