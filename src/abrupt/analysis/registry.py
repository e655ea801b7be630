"""Find the analyses, type their options, run them on a run directory, write their results.

An analysis is any module of this package with `TITLE`, `PAPER`, `ORDER`, `run`, `plot` and
`render` (see common.py), and `ON_REQUEST = True` if it should run only when named; `discover()`
finds it, so `abrupt analyze --only NAME`, `--options` and
the report pick it up without other edits. Options reach `run` as keyword arguments
(`--set probe.n=2048`), typed from its signature. Each analysis writes
`RUN/analysis/<name>/results.json` (strict JSON: its options, steps, seconds and numbers) and its
PNG figures. A figure is drawn again only when what it would show has changed: results.json keeps
`figure_key`, a digest of the analysis's numbers, its drawing data and abrupt's source, and where
that key and every figure file are there already, the figures are kept (drawing is most of what an
analysis costs when only another analysis's option was changed).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import pkgutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import matplotlib
import numpy as np
import torch

from .. import tasks
from ..config import Config
from ..run.rundir import RunDirError, atomic_write_json, read_json
from .common import Check, Inputs, RunView, open_run

_PROTOCOL = ("TITLE", "PAPER", "ORDER", "run", "plot", "render")

# `abrupt analyze --quick`: every analysis's sample size `n` (matrices or sequences) is its default
# over QUICK_DIVISOR, at least QUICK_MIN_N, unless set with --set: about 1/8 of the forward passes
# and solver calls, for iterating on an option; each number's sampling error is then about
# sqrt(8) = 2.8x the default's (1/4 and 2x where the floor applies), and results.json says so in
# its notes. An analysis whose cost does not scale with n sets QUICK = False (llc).
QUICK_DIVISOR = 8
QUICK_MIN_N = 64


def discover() -> dict[str, ModuleType]:
    """{name: module} of every analysis in this package (every folder on its `__path__`), in report
    order."""
    found = []
    for info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        mod = importlib.import_module(f"{__package__}.{info.name}")
        if all(hasattr(mod, attr) for attr in _PROTOCOL):
            found.append((mod.ORDER, info.name, mod))
    return {name: mod for _, name, mod in sorted(found)}


def default_analyses() -> list[str]:
    """What `abrupt analyze RUN` runs without --only: every analysis but those marked ON_REQUEST
    (costly or optional, e.g. llc), which run only when named."""
    return [n for n, m in discover().items() if not getattr(m, "ON_REQUEST", False)]


def options() -> dict[str, dict[str, Any]]:
    """{analysis: {option: default}} for every user-settable option."""
    out = {}
    for name, mod in discover().items():
        params = list(inspect.signature(mod.run).parameters.values())[1:]  # the first is the inputs
        out[name] = {p.name: p.default for p in params}
    return out


def parse_option(analysis: str, key: str, raw: str) -> Any:
    """The typed value of `--set analysis.key=raw`, checked against the option's rules."""
    analyses = discover()
    if analysis not in analyses:
        raise ValueError(f"unknown analysis '{analysis}'; choose from {', '.join(analyses)}")
    if key not in options()[analysis]:
        raise ValueError(
            f"unknown option '{analysis}.{key}'; {analysis} takes: {', '.join(options()[analysis])}"
        )
    typ = typing.get_type_hints(analyses[analysis].run)[key]
    try:
        if typ in (int, float, str):
            value = typ(raw)
        elif typing.get_origin(typ) is tuple and typing.get_args(typ):
            conv: Callable[[str], Any] = {int: int, float: float, str: str}[typing.get_args(typ)[0]]
            value = tuple(conv(x.strip()) for x in raw.split(",") if x.strip())
        else:
            raise ValueError(f"option '{analysis}.{key}' has an unsupported type {typ}")
    except ValueError as e:
        if "unsupported type" in str(e):
            raise
        raise ValueError(
            f"option '{analysis}.{key}': cannot read '{raw}' as {_type_name(typ)}"
        ) from None
    _check_rules(analysis, key, value)
    return value


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is tuple:
        return f"a comma-separated list of {typing.get_args(typ)[0].__name__}"
    return {int: "an integer", float: "a number", str: "text"}.get(typ, str(typ))


def _check_rules(analysis: str, key: str, value: Any) -> None:
    """ValueError for a value an option's rules refuse, or a list option that repeats a value (it
    would be computed, and counted, twice)."""
    if isinstance(value, tuple) and len(set(value)) < len(value):
        twice = next(v for i, v in enumerate(value) if v in value[:i])
        raise ValueError(f"option '{analysis}.{key}': '{twice}' given twice; give each value once")
    hint = typing.get_type_hints(discover()[analysis].run, include_extras=True)[key]
    for rule in getattr(hint, "__metadata__", ()):
        if isinstance(rule, Check) and not rule.ok(value):
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            raise ValueError(f"option '{analysis}.{key}': must be {rule.need}, got '{shown}'")


def plan(
    cfg: Config, names: list[str], opts: dict[str, dict[str, Any]]
) -> tuple[list[str], dict[str, str]]:
    """Validate every option of every chosen analysis against its rules and this run, before
    anything runs; returns the analyses to run and {name: why} for those this run cannot support."""
    analyses = discover()
    unknown = [n for n in list(names) + list(opts) if n not in analyses]
    if unknown:
        raise ValueError(
            f"unknown analysis {sorted(set(unknown))}; choose from {', '.join(analyses)}"
        )
    skipped = {}
    for name in names:
        mod = analyses[name]
        for key, value in opts.get(name, {}).items():
            if key not in options()[name]:
                raise ValueError(
                    f"unknown option '{name}.{key}'; {name} takes: {', '.join(options()[name])}"
                )
            _check_rules(name, key, value)
        why = missing(mod, cfg) or (mod.unsupported(cfg) if hasattr(mod, "unsupported") else None)
        if why:
            skipped[name] = why
        elif hasattr(mod, "check"):
            try:
                mod.check(opts.get(name, {}), cfg)
            except ValueError as e:
                raise ValueError(f"{name} options: {e}") from None
    return [n for n in names if n not in skipped], skipped


def missing(mod: ModuleType, cfg: Config) -> str | None:
    """Why the run's task cannot serve analysis `mod`: the capabilities it needs (`NEEDS`, every
    one) that the task does not provide, or none of those it can use (`NEEDS_ANY`, at least one);
    None when it provides enough."""
    provided = tasks.get(cfg.task.name).provides(cfg)
    lacking = sorted(set(getattr(mod, "NEEDS", ())) - provided)
    if lacking:
        return f"task {cfg.task.name} does not provide {', '.join(lacking)} (tasks/base.py)"
    any_of = sorted(getattr(mod, "NEEDS_ANY", ()))
    if any_of and not provided & set(any_of):
        return (
            f"task {cfg.task.name} provides none of {', '.join(any_of)} (one is needed; "
            "tasks/base.py)"
        )
    return None


def quick_options(
    names: list[str], opts: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """`opts` with each of `names`' sample size `n` reduced as `--quick` does (where the analysis
    has an `n` and the user did not set it), and {name: note} for each analysis reduced."""
    out = {k: dict(v) for k, v in opts.items()}
    notes = {}
    analyses, defaults = discover(), options()
    for name in names:
        default = defaults[name].get("n")
        if not getattr(analyses[name], "QUICK", True):  # its n is not what its time scales with
            continue
        if isinstance(default, int) and "n" not in out.get(name, {}):
            n = min(default, max(QUICK_MIN_N, default // QUICK_DIVISOR))
            out.setdefault(name, {})["n"] = n
            notes[name] = (
                f"--quick: n = {n} instead of {default}, so sampling errors are about "
                f"{(default / n) ** 0.5:.1f}x the default's"
            )
    return out, notes


@dataclass
class Prepared:
    """A run opened for its analyses, every option checked and the chosen checkpoints loaded once:
    `run_one` runs each of `names` on these same models (a caller that must outlive one failing
    analysis, or stop at a deadline, runs them one by one)."""

    view: RunView
    names: list[str]  # the analyses to run, in report order
    skipped: dict[str, str]  # {name: why this run cannot support it}
    steps: list[int]  # the chosen checkpoint steps
    asked: list[int] | None  # the steps as given (None: the default plateau and post-drop pair)
    opts: dict[str, dict[str, Any]]
    inputs: Inputs
    quick: dict[str, str] = field(default_factory=dict)  # {name: note} of those --quick reduced


def prepare(
    run_dir: Path,
    only: list[str] | None = None,
    steps: list[int] | None = None,
    opts: dict[str, dict[str, Any]] | None = None,
    verbose: bool = True,
    device: str = "cpu",
    quick: bool = False,
) -> Prepared:
    """Open the run, check the chosen analyses (default all) and their options (`quick`: sample
    sizes reduced, see QUICK_DIVISOR), record those this run cannot support in
    `analysis/skipped.json`, and load the checkpoints at `steps` (default: plateau and post-drop)
    onto `device`. Raises ValueError (bad options or steps, nothing to run)
    or CheckpointError before any analysis runs."""
    view = open_run(run_dir, device)
    if not steps and view.steps == [0]:  # the default would compare step 0 with itself
        raise ValueError(
            f"{view.path} has only its step-0 checkpoint (untrained): train it further "
            "(`abrupt train --resume`), or give --steps 0 to analyse the untrained model"
        )
    opts = opts or {}
    chosen_names = only or default_analyses()
    reduced: dict[str, str] = {}
    if quick:
        opts, reduced = quick_options(chosen_names, opts)
    names, skipped = plan(view.cfg, chosen_names, opts)
    for name, why in skipped.items():
        if verbose:
            print(f"  {name:11s} skipped: {why}", flush=True)
    if not names:
        raise ValueError(
            "none of the chosen analyses can run on this run: "
            + "; ".join(f"{n}: {w}" for n, w in skipped.items())
        )
    record = view.path / "analysis" / "skipped.json"
    earlier = read_json(record) if record.exists() else {}
    earlier = (
        {k: v for k, v in earlier.items() if k not in names} if isinstance(earlier, dict) else {}
    )
    atomic_write_json(record, {**earlier, **skipped})
    chosen = sorted(set(steps)) if steps else sorted({view.pre, view.post})
    absent = [s for s in chosen if s not in view.steps]
    if absent:
        raise ValueError(
            f"no checkpoint at step(s) {absent}; saved: {', '.join(map(str, view.steps))}"
        )
    reduced = {k: v for k, v in reduced.items() if k in names}
    return Prepared(view, names, skipped, chosen, steps, opts, view.inputs(chosen), reduced)


@functools.cache
def _source_digest() -> str:
    """sha256 of abrupt's source and matplotlib's version: what draws a figure besides its data."""
    h = hashlib.sha256(matplotlib.__version__.encode())
    for path in sorted(Path(__file__).parents[1].rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def _digest(obj: Any, h: Any) -> None:
    """Feed `obj` (nested dicts, lists and tuples of tensors, arrays and plain values) to the hash
    `h`, in order: equal digests, equal drawings."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        h.update(f"array{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        h.update(f"dict{len(obj)}".encode())
        for key, value in obj.items():
            _digest(key, h)
            _digest(value, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for value in obj:
            _digest(value, h)
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def _untimed(obj: Any) -> Any:
    """`obj` without the keys named seconds* (timings no figure draws, which differ every run)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not str(k).startswith("seconds")}
    if isinstance(obj, (list, tuple)):
        return [_untimed(v) for v in obj]
    return obj


def figure_key(result: Any) -> str:
    """What an analysis's figures show, as a digest: its numbers, its drawing data, the code."""
    h = hashlib.sha256(_source_digest().encode())
    _digest(_untimed(result.numbers), h)
    _digest(result.figure_data, h)
    return h.hexdigest()


def _kept_figures(out: Path, key: str) -> list[Path] | None:
    """The figures already in `out` if its results.json was drawn from the same `key`, else
    None."""
    path = out / "results.json"
    try:
        old = read_json(path) if path.exists() else None
    except (OSError, ValueError, RunDirError):
        return None
    if not isinstance(old, dict) or old.get("figure_key") != key:
        return None
    names = old.get("figures")
    if not isinstance(names, list) or not all(isinstance(f, str) for f in names):
        return None
    figures = [out / f for f in names]
    return figures if all(f.is_file() for f in figures) else None


def run_one(prepared: Prepared, name: str, verbose: bool = True) -> Path:
    """Run one analysis of `prepared` and write its `results.json` and figures (kept, not drawn
    again, when `figure_key` is unchanged); returns its folder. Whatever the analysis raises
    propagates (nothing is written for it then)."""
    t0 = time.perf_counter()
    mod = discover()[name]
    kwargs = dict(prepared.opts.get(name, {}))
    result = mod.run(prepared.inputs, **kwargs)
    if name in prepared.quick:
        result.numbers["notes"] = [*result.numbers.get("notes", []), prepared.quick[name]]
    out = prepared.view.path / "analysis" / name
    out.mkdir(parents=True, exist_ok=True)
    key = figure_key(result)
    kept = _kept_figures(out, key)
    if kept is None:
        # a drawing stopped halfway must not leave the old key beside half-new figures
        (out / "results.json").unlink(missing_ok=True)
        figures = mod.plot(result, out)
    else:
        figures = kept
    meta = {
        "analysis": name,
        "steps": prepared.steps,
        "selection": _selection_note(prepared.view, prepared.asked),
        "options": {**options()[name], **kwargs},
        "figures": [p.name for p in figures],
        "figure_key": key,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(out / "results.json", {**meta, **result.numbers})
    if verbose:
        same = " (figures unchanged, kept)" if kept is not None else ""
        print(f"  {name:11s} {meta['seconds']:6.1f}s  -> {out}{same}", flush=True)
        for note in result.numbers.get("notes", []):
            print(f"  {'':11s} note: {note}", flush=True)
    return out


def analyze(
    run_dir: Path,
    only: list[str] | None = None,
    steps: list[int] | None = None,
    opts: dict[str, dict[str, Any]] | None = None,
    verbose: bool = True,
    device: str = "cpu",
    quick: bool = False,
) -> dict[str, Path]:
    """Run the chosen analyses (default all) at `steps` (default: plateau and post-drop
    checkpoints), in report order (`quick`: see QUICK_DIVISOR); the first that raises stops the
    rest."""
    prepared = prepare(run_dir, only, steps, opts, verbose, device, quick)
    return {name: run_one(prepared, name, verbose) for name in prepared.names}


def _selection_note(view: RunView, steps: list[int] | None) -> str:
    if steps:
        return f"steps chosen on the command line: {sorted(set(steps))}"
    if view.pre == view.post:
        return (
            f"one trained checkpoint only (step {view.pre}): analysed alone, "
            "with nothing before it to compare"
        )
    return view.note


def load_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{name: results} of every analysis that has written results for this run, in report order."""
    found = {}
    for name in discover():
        path = Path(run_dir) / "analysis" / name / "results.json"
        if path.exists():
            found[name] = read_json(path)
    return found
