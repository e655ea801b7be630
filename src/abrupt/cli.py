"""Command-line interface: a thin layer over the Python API.

Exit status 2 with a one-line message for bad input (nothing is written), 1 for a run that had to
stop (non-finite loss, corrupt checkpoint), 130 when interrupted (the run stays resumable).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import checkpoints
from .config import DEFAULT_PRESET, PRESETS, ConfigError, all_keys, apply_overrides, preset, set_key, validate


class UsageError(Exception):
    """Bad command-line input: reported in one line with exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="abrupt", description="Abrupt learning in a BERT trained on matrix completion.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model into a run directory")
    t.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset name (default {DEFAULT_PRESET}); see `abrupt presets`")
    t.add_argument("--out", type=Path, help="run directory (default runs/<preset>-<time>)")
    t.add_argument("--seed", type=int, help="seed for weights, data and evaluation batch")
    t.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its last complete checkpoint")
    t.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides; keys: " + ", ".join(all_keys()))

    sub.add_parser("presets", help="list presets")

    pl = sub.add_parser("plot", help="redraw loss.png and summary.json from metrics.jsonl")
    pl.add_argument("run", type=Path)
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .train import load_config, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume:
        if args.out or args.seed is not None or args.preset != DEFAULT_PRESET:
            raise UsageError("--resume takes its configuration from the run; only train.steps=N may be given")
        cfg = load_config(args.resume)
        for item in args.overrides:
            key, _, value = item.partition("=")
            if key.strip() != "train.steps":
                raise UsageError(f"--resume: only train.steps may be overridden, got '{key}'")
            set_key(cfg, "train.steps", value)
        validate(cfg)
        out = args.resume
    else:
        cfg = preset(args.preset)
        if args.seed is not None:
            set_key(cfg, "seed", args.seed)
        apply_overrides(cfg, args.overrides)
        out = args.out or Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (out / "config.json").exists():
            raise UsageError(f"{out} already holds a run; use --resume {out} or another --out")
    summary = train(cfg, out, resume=bool(args.resume), progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    print(f"run directory: {out}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    width = max(map(len, PRESETS))
    for name, (desc, _) in PRESETS.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {desc}{mark}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .train import finish, read_metrics

    if not read_metrics(args.run):
        raise UsageError(f"{args.run}: no metrics.jsonl with logged steps")
    print(json.dumps(finish(args.run), indent=2))
    return 0


COMMANDS = {"train": _cmd_train, "presets": _cmd_presets, "plot": _cmd_plot}


def main(argv: list[str] | None = None) -> int:
    from .train import TrainingError

    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError) as e:
        print(f"abrupt: error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, checkpoints.CheckpointError) as e:
        print(f"abrupt: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("abrupt: interrupted; resume with `abrupt train --resume DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
