"""Run analyses on a run directory: choose checkpoints, pass options, write results and figures.

Each analysis writes `RUN/analysis/<name>/results.json` and its PNG figures. Options reach the
analysis functions as keyword arguments (`--set probe.n=2048`), typed from their signatures, so no
experiment needs a code edit; `options()` lists them.
"""

from __future__ import annotations

import inspect
import json
import time
import typing
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoints import atomic_write_json
from . import ablation, attention, copying, embeddings, patching, probe, switching
from .common import RunView, open_run

ANALYSES = {
    "copying": copying,
    "attention": attention,
    "probe": probe,
    "embeddings": embeddings,
    "patching": patching,
    "ablation": ablation,
    "switching": switching,
}
_FIXED = {"models", "data", "across", "pre", "post"}


def options() -> dict[str, dict[str, Any]]:
    """{analysis: {option: default}} for every user-settable option."""
    out = {}
    for name, mod in ANALYSES.items():
        sig = inspect.signature(mod.run)
        out[name] = {p.name: p.default for p in sig.parameters.values() if p.name not in _FIXED}
    return out


def parse_option(analysis: str, key: str, raw: str) -> Any:
    if analysis not in ANALYSES:
        raise ValueError(f"unknown analysis '{analysis}'; choose from {', '.join(ANALYSES)}")
    hints = typing.get_type_hints(ANALYSES[analysis].run)
    if key not in options()[analysis]:
        raise ValueError(f"unknown option '{analysis}.{key}'; {analysis} takes: {', '.join(options()[analysis])}")
    typ = hints[key]
    try:
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is str:
            return raw
        args = typing.get_args(typ)
        if typing.get_origin(typ) is tuple and args:
            conv: Callable[[str], Any] = {int: int, float: float, str: str}[args[0]]
            return tuple(conv(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"option '{analysis}.{key}': cannot read '{raw}' as {typ}") from None
    raise ValueError(f"option '{analysis}.{key}' has an unsupported type {typ}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def analyze(
    run_dir: Path,
    only: list[str] | None = None,
    steps: list[int] | None = None,
    opts: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Run the chosen analyses (default all) at `steps` (default: plateau and post-drop checkpoints)."""
    view = open_run(run_dir)
    names = only or list(ANALYSES)
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise ValueError(f"unknown analysis {unknown}; choose from {', '.join(ANALYSES)}")
    opts = opts or {}
    chosen = sorted(set(steps)) if steps else sorted({view.pre, view.post})
    missing = [s for s in chosen if s not in view.steps]
    if missing:
        raise ValueError(f"no checkpoint at step(s) {missing}; saved: {', '.join(map(str, view.steps))}")
    models = {s: view.model(s) for s in chosen}
    across_needed = any(n in ("attention", "embeddings") for n in names)
    across = {s: (models[s] if s in models else view.model(s)) for s in view.steps} if across_needed else {}
    written = {}
    for name in names:
        t0 = time.perf_counter()
        mod = ANALYSES[name]
        kwargs = dict(opts.get(name, {}))
        if name == "switching":
            first, last = chosen[0], chosen[-1]
            result = mod.run((first, models[first]), (last, models[last]), view.cfg.data, **kwargs)
        elif name in ("attention", "embeddings"):
            result = mod.run(models, view.cfg.data, across=across, **kwargs)
        else:
            result = mod.run(models, view.cfg.data, **kwargs)
        out = view.path / "analysis" / name
        out.mkdir(parents=True, exist_ok=True)
        figures = mod.plot(result, out)
        meta = {"analysis": name, "steps": chosen, "selection": _selection_note(view, steps), "options": {**options()[name], **kwargs},
                "figures": [p.name for p in figures], "seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_json(out / "results.json", _jsonable({**meta, **result}))
        written[name] = out
        if progress:
            print(f"  {name:11s} {meta['seconds']:6.1f}s  -> {out}", flush=True)
    return written


def _selection_note(view: RunView, steps: list[int] | None) -> str:
    return f"steps chosen on the command line: {sorted(set(steps))}" if steps else view.note


def load_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for name in list(ANALYSES) + ["compare", "ood"]:
        path = Path(run_dir) / "analysis" / name / "results.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found
