"""What every analysis shares: its inputs and result types, choosing checkpoints, head specs.

An analysis is one module in this package with:
    TITLE, PAPER, ORDER     its heading, the paper's finding (for the report), its place in it
    run(inputs, **options) -> Result     options typed by their annotations (`--set name.option=v`),
                                         with `Annotated[type, Check]` rules on their meaning
and optionally:
    NEEDS                                the task capabilities it asks for (tasks/base.py): it
                                         runs on every task that provides them all
    NEEDS_ANY                            capabilities of which it needs one at least (each
                                         gives a part of its answer): it runs where one is
    check(options, cfg)                  raise ValueError for options that do not fit this run
    unsupported(cfg) -> str | None       why this analysis cannot run on such a run (it is skipped)
    plot(result, out) -> list[Path]      figures written into `out`
    render(numbers) -> [Text | Table]    the report's paragraphs and tables for its numbers
                                         (escaped there)
    findings(numbers) -> [[str] * 4]     rows of the report's opening table: a question, this
                                         run's answer, the paper's or follow-up's, a verdict
The registry finds such modules by themselves: a new analysis is one new file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
import torch

from .. import tasks
from ..baselines import SolutionCache
from ..config import Config, DataConfig, ModelConfig
from ..hooks import HookedModule
from ..models.registry import supports
from ..plots import figure
from ..run import checkpoints
from ..run.rundir import read_config, read_metrics, read_summary
from ..tasks.base import Task, TaskBatch
from ..tasks.matrix import analysis_data
from .cache import ForwardCache


@dataclass(frozen=True)
class Check:
    """A rule on an option's value, attached with `Annotated[type, check]` in an analysis's `run`
    signature; the registry applies it to `--set` values before any analysis runs."""

    ok: Callable[[Any], bool]
    need: str


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(lo: float) -> Check:
    return Check(lambda v: _finite(v) and v >= lo, f">= {lo:g}")


def between(lo: float, hi: float, open_hi: bool = False, open_lo: bool = False) -> Check:
    def ok(v: Any) -> bool:
        return _finite(v) and (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)

    return Check(ok, f"in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}")


def one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, f"one of {', '.join(choices)}")


def each(check: Check) -> Check:
    """A non-empty tuple whose every element passes `check`."""
    return Check(
        lambda vs: len(vs) > 0 and all(check.ok(v) for v in vs),
        f"a non-empty comma-separated list, each {check.need}",
    )


def bert_only(cfg: Config) -> str | None:
    """For `unsupported`: analyses that read one scalar prediction, or the BERT's value tokens, per
    position."""
    return (
        "it reads one scalar prediction per position, which the GPT variant does not make"
        if not supports(cfg.model.arch, "scalar_readout")
        else None
    )


def needs_hidden(cfg: Config) -> str | None:
    """For `unsupported`: on matrices (a task providing `matrices`) an analysis measured on
    hidden entries cannot run without any; other tasks have no hidden entries to need."""
    if "matrices" not in tasks.get(cfg.task.name).provides(cfg):
        return None
    return (
        "it is measured on hidden entries, and this run has none (data.p_mask = 0)"
        if cfg.data.p_mask == 0
        else None
    )


Count = Annotated[int, at_least(1)]  # how many matrices an analysis evaluates
Seed = Annotated[int, between(0, 2**62, open_hi=True)]


@dataclass
class Text:
    """A paragraph of the report (plain text: the report escapes it)."""

    text: str


@dataclass
class Table:
    """A table of the report: a header and rows of plain values (numbers shown by `number`)."""

    header: list[str]
    rows: list[list[Any]]

    def text(self) -> str:
        """The table as aligned plain text, for a terminal."""
        cells = [list(self.header)] + [[number(v) for v in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.header))]
        # numbers right-aligned, text left-aligned, each header as its column
        right = [
            all(isinstance(row[i], (int, float)) for row in self.rows)
            for i in range(len(self.header))
        ]
        return "\n".join(
            "  ".join(
                c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right)
            ).rstrip()
            for line in cells
        )


def number(v: Any) -> str:
    """A value as shown in reports and tables: floats to 3 significant digits (large ones whole),
    None as a dash, anything else as it is."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return "—" if v is None else str(v)


@dataclass
class Result:
    """What an analysis returns: `numbers` (plain JSON values, written to results.json and read by
    the report) and `figure_data` (arrays its `plot` draws, never written). `numbers["notes"]`, a
    list of sentences, says where a default was lowered to fit a small run (printed by `abrupt
    analyze`, shown by the report)."""

    numbers: dict[str, Any]
    figure_data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inputs:
    """What an analysis runs on: the chosen checkpoints' models (step -> model, ascending), the
    run's data configuration (matrix runs: the model's whole grid) and, for analyses that follow
    a quantity across training, a loader of every checkpoint (by default the chosen ones).
    `config`: the run's whole configuration, whose task answers what the analyses ask (None:
    matrix completion on `data` with the models' own configuration)."""

    models: dict[int, HookedModule]
    data: DataConfig
    load_all: Callable[[], dict[int, HookedModule]] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the run's metrics.jsonl rows
    summary: dict[str, Any] = field(default_factory=dict)  # its summary.json
    config: Config | None = None
    run_dir: Path | None = None  # where the inputs come from (None: built in memory)
    _all: dict[int, HookedModule] | None = field(default=None, repr=False)
    _forwards: ForwardCache | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("an analysis needs at least one model")
        self.models = dict(sorted(self.models.items()))
        if self.config is None:
            # a stand-in model of a test may carry no configuration: the default's
            model_cfg = getattr(next(iter(self.models.values())), "cfg", None)
            self.config = Config(data=self.data, model=model_cfg or ModelConfig())
        self._forwards = ForwardCache(self.task, self.config)

    @property
    def cfg(self) -> Config:
        assert self.config is not None  # set by __post_init__
        return self.config

    @property
    def task(self) -> Task:
        """The run's task: what the analyses ask for batches, regions, key groups, ..."""
        return tasks.get(self.cfg.task.name)

    @property
    def pre(self) -> tuple[int, HookedModule]:
        step = min(self.models)
        return step, self.models[step]

    @property
    def post(self) -> tuple[int, HookedModule]:
        step = max(self.models)
        return step, self.models[step]

    def batch(self, n: int, seed: int, data: DataConfig | None = None) -> TaskBatch:
        """The task's seeded batch (`Task.seeded_batch`; with `data`, matrix runs only: the
        matrices of that data configuration), one object per (data, n, seed) for the whole
        command, so that analyses on the same batch share its forward passes."""
        return self._forwards.batch(n, seed, data)

    def activations(
        self, step: int, batch: TaskBatch, kind: str = "stream"
    ) -> dict[str, torch.Tensor]:
        """{hook name: (B, ...)} of checkpoint `step` on `batch`, from a pass of `kind` run once
        per command (analysis/cache.py: which hooks each kind holds, and why two kinds)."""
        return self._forwards.activations(step, self.models[step], batch, kind)

    def solutions(self) -> SolutionCache | None:
        """The run's nuclear-norm solutions kept from earlier analyses (`RUN/analysis/cache/`,
        baselines.SolutionCache); None for inputs built without a run directory."""
        return None if self.run_dir is None else SolutionCache(self.run_dir / "analysis" / "cache")

    def all_checkpoints(self) -> dict[int, HookedModule]:
        if self._all is None:
            self._all = dict(sorted((self.load_all() if self.load_all else self.models).items()))
        return self._all


@dataclass
class RunView:
    """A run directory opened for analysis: configuration, checkpoints, the default pre/post
    steps."""

    path: Path
    cfg: Config
    steps: list[int]  # every complete checkpoint
    pre: int
    post: int
    note: str  # how pre/post were chosen, for the report

    device: str = "cpu"

    def model(self, step: int) -> HookedModule:
        return checkpoints.load_model(self.cfg, checkpoints.find(self.path, step), self.device)

    summary: dict[str, Any] = field(default_factory=dict)

    def inputs(self, steps: list[int]) -> Inputs:
        models = {s: self.model(s) for s in steps}
        data = analysis_data(self.cfg)
        return Inputs(
            models,
            data,
            lambda: {s: models[s] if s in models else self.model(s) for s in self.steps},
            read_metrics(self.path),
            self.summary,
            config=self.cfg,
            run_dir=self.path,
        )


def open_run(path: Path, device: str = "cpu") -> RunView:
    path = Path(path)
    cfg = read_config(path)
    steps = [c.step for c in checkpoints.list_checkpoints(path / "checkpoints", verify=False)]
    if not steps:
        raise checkpoints.CheckpointError(f"no checkpoints in {path / 'checkpoints'}")
    summary = read_summary(path)
    pre, post, note = choose_pre_post(steps, summary, read_metrics(path))
    return RunView(path, cfg, steps, pre, post, note, device=device, summary=summary)


def choose_pre_post(
    steps: list[int], summary: dict[str, Any], rows: list[dict[str, Any]] | None = None
) -> tuple[int, int, str]:
    """Plateau checkpoint: the last one before the drop whose evaluation L_mask is still within 10%
    of the plateau level (a drop can start with a slow slide before the detected halving);
    post-drop: the last one. Without a drop: the earliest trained and the last checkpoint."""
    trained = [s for s in steps if s > 0] or steps
    drop, start, level = (
        summary.get("drop_step"),
        summary.get("plateau_start"),
        summary.get("plateau_level"),
    )
    if drop is not None:
        before = [s for s in trained if s < drop]
        on_plateau = [s for s in before if start is None or s >= start]
        if rows and level:
            logged = {r["step"]: r.get("eval_loss_mask", r.get("loss_mask")) for r in rows}
            flat = [s for s in on_plateau if logged.get(s) is not None and logged[s] >= 0.9 * level]
            on_plateau = flat or on_plateau
        pre = (on_plateau or before or trained)[-1]
        return (
            pre,
            trained[-1],
            f"pre-drop step {pre} (on the plateau; drop detected at step {drop}), post-drop step "
            f"{trained[-1]}",
        )
    return (
        trained[0],
        trained[-1],
        (
            "no drop detected in this run: comparing the earliest trained checkpoint (step "
            f"{trained[0]}) "
            f"with the last (step {trained[-1]})"
        ),
    )


def group_by_layer(
    heads: list[tuple[int, int]] | tuple[tuple[int, int], ...],
) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return by_layer


def parse_heads(spec: str, layers: int, heads: int) -> list[tuple[int, int]]:
    """'all', or 'L:H' pairs separated by commas, with '*' for every layer or head: '1:0,2:*'."""
    if spec.strip() in ("all", "*", "*:*"):
        return [(l, h) for l in range(layers) for h in range(heads)]
    out = []
    for item in spec.split(","):
        layer_s, sep, head_s = item.strip().partition(":")
        if not sep:
            raise ValueError(f"head '{item}': expected LAYER:HEAD, e.g. 1:0 or 2:*")
        ls = range(layers) if layer_s == "*" else [int(layer_s)]
        hs = range(heads) if head_s == "*" else [int(head_s)]
        for l in ls:
            for h in hs:
                if not (0 <= l < layers and 0 <= h < heads):
                    raise ValueError(f"head {l}:{h} out of range: {layers} layers x {heads} heads")
                out.append((l, h))
    return out


def plot_head_tables(
    tables: dict[str, list[list[float]]], path: Path, title: str, center: float | None = None
) -> Path:
    """One layer x head heatmap per entry of `tables`, numbers written in the cells (which is why
    there is no colour bar: it would repeat them, and it doubles the time to lay out the figure)."""
    heads = len(next(iter(tables.values()))[0])
    size = (0.9 + 0.75 * heads * len(tables) + 0.5 * len(tables), 3.4)
    with figure(path, 1, len(tables), title=title, figsize=size) as (fig, axes):
        for ax, (name, table) in zip(axes[0], tables.items()):
            arr = np.array(table, dtype=float)
            spread = np.nanmax(np.abs(arr - center)) if center is not None else 0.0
            kw = (
                {"cmap": "RdBu_r", "vmin": center - spread, "vmax": center + spread}
                if center is not None
                else {"cmap": "viridis"}
            )
            ax.imshow(arr, aspect="auto", **kw)
            for (l, h), v in np.ndenumerate(arr):
                ax.text(
                    h,
                    l,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if center is not None else "white",
                )
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(arr.shape[1]))
            ax.set_yticks(range(arr.shape[0]))
            ax.set_title(name, fontsize=8)
    return path


def solver_outcomes(rows: list[dict[str, Any]]) -> str:
    """A sentence on the problems a solver did not solve cleanly ('' when every one was)."""
    failed = sum(r.get("failures", 0) for r in rows)
    inaccurate = sum(r.get("inaccurate", 0) for r in rows)
    if not failed and not inaccurate:
        return ""
    return (
        f" Nuclear-norm problems not converged: {failed}; solved only inaccurately (CVXPY "
        f"optimal_inaccurate): {inaccurate}"
        " (rows: failures, inaccurate)."
    )


def loss_cells(d: dict[str, float]) -> list[float]:
    """L, L_obs, L_mask of a losses dict in that order (report tables never rely on dict order)."""
    return [d["loss"], d["loss_obs"], d["loss_mask"]]


def headline_numbers(inputs: Inputs) -> dict[str, str]:
    """{"headline": metric key, "headline_label": what it is} of the run's task, for an analysis's
    numbers; {} on matrices, whose results keep the layout the paper's numbers were pinned in
    (`headline` reads L_mask for them)."""
    task = inputs.task
    if "matrices" in task.provides(inputs.cfg):
        return {}
    return {"headline": task.headline, "headline_label": task.headline_label}


def headline(r: dict[str, Any]) -> tuple[str, str]:
    """(metric key, label) of the headline metric of results `r` (`headline_numbers`)."""
    return r.get("headline", "loss_mask"), r.get("headline_label", "L_mask")
