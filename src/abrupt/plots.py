"""Every figure goes through here: matplotlib set up once (files only, no display), and the
save-and-close tail written once in `figure`. Also the loss curves drawn from a run's metrics."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import matplotlib

# Files only: no window and no display needed (servers, sweep workers). Inside a Jupyter kernel its
# inline backend stays, so that the user's own figures still show (examples/quickstart.ipynb);
# abrupt's figures are closed once saved, so none of them shows there.
if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .dynamics.transition import run_kind  # noqa: E402
from .progress import LABELS, PROGRESS_KEYS  # noqa: E402


@contextlib.contextmanager
def figure(
    path: Path, nrows: int = 1, ncols: int = 1, title: str | None = None, **kwargs: Any
) -> Iterator[tuple[Any, Any]]:
    """`with figure(path, 1, 3, figsize=...) as (fig, axes):` draw; on exit the figure is laid
    out, saved to `path` and closed. `axes` is always a 2-D array (squeeze=False)."""
    kwargs.setdefault("dpi", 110)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, **kwargs)
    try:
        yield fig, axes
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        _save(fig, Path(path))
    finally:
        plt.close(fig)


def _save(fig: Any, path: Path) -> None:
    """Save as the run's other files are written: a temporary file renamed into place, so a full
    disk or a kill leaves the previous figure or none, never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_losses(
    rows: list[dict[str, Any]], summary: dict[str, Any], path: Path, kind: str | None = None
) -> None:
    """The run's loss figure, laid out for its `kind` (transition.RUN_KINDS; None: guessed from
    the rows)."""
    kind = kind or run_kind(rows)
    if kind == "sequence":  # cross-entropy on the outputs and accuracies
        with figure(path, 2, 1, figsize=(6.4, 6.4), dpi=120, sharex=True) as (fig, axes):
            _draw_sequence(axes[0][0], axes[1][0], rows, summary)
        return
    if kind == "gpt":  # cross-entropy and accuracies
        with figure(path, 2, 1, figsize=(6.4, 6.4), dpi=120, sharex=True) as (fig, axes):
            _draw_gpt(axes[0][0], axes[1][0], rows, summary)
        return
    # train.progress: what the model organises, under the losses
    if rows and "prog_row_mass" in rows[0]:
        with figure(path, 2, 1, figsize=(6.4, 6.4), dpi=120, sharex=True) as (fig, axes):
            _draw_losses(axes[0][0], rows, summary)
            _draw_progress(axes[1][0], rows, summary)
        return
    with figure(path, figsize=(6.4, 4.0), dpi=120) as (fig, axes):
        _draw_losses(axes[0][0], rows, summary)


def _draw_progress(ax: Any, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The logged progress measures (train.progress; progress.py defines them) on [0, 1]."""
    for key in PROGRESS_KEYS:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.1, label=LABELS[key])
    _mark_transition(ax, summary, level=False)
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _draw_gpt(top: Any, bottom: Any, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    steps = [r["step"] for r in rows]
    top.plot(
        steps,
        [r["eval_loss"] for r in rows],
        color="black",
        lw=1.2,
        label="cross-entropy (written half)",
    )
    top.plot(
        steps,
        [r["eval_loss_obs"] for r in rows],
        color="tab:blue",
        lw=1.0,
        label="MSE of decoded value, observed",
    )
    top.plot(
        steps,
        [r["eval_loss_mask"] for r in rows],
        color="tab:red",
        lw=1.0,
        label="MSE of decoded value, hidden",
    )
    top.set_yscale("log")
    top.legend(fontsize=7)
    top.grid(alpha=0.3, which="both")
    bottom.plot(
        steps,
        [r["eval_acc_obs"] for r in rows],
        color="tab:blue",
        lw=1.2,
        label="accuracy, observed entries",
    )
    bottom.plot(
        steps,
        [r["eval_acc_mask"] for r in rows],
        color="tab:red",
        lw=1.2,
        label="accuracy, hidden entries",
    )
    _mark_transition(top, summary)
    _mark_transition(bottom, summary, level=False)
    bottom.set_ylim(0, 1)
    bottom.set_xlabel("step")
    bottom.legend(fontsize=7)
    bottom.grid(alpha=0.3)


def _draw_sequence(
    top: Any, bottom: Any, rows: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    """Cross-entropy on the outputs with the transition marked as on a matrix run's figure; under
    it the accuracies and, where logged (train.progress), the follow-up's measures on [0, 1]."""
    steps = [r["step"] for r in rows]
    top.plot(
        steps,
        [r["loss"] for r in rows],
        color="tab:gray",
        lw=0.8,
        label="cross-entropy, training batch",
    )
    top.plot(
        steps,
        [r["eval_loss"] for r in rows],
        color="black",
        lw=1.2,
        label="cross-entropy on outputs (evaluation)",
    )
    _mark_transition(top, summary)
    top.set_yscale("log")
    top.set_ylabel("nats per output token")
    top.legend(fontsize=7)
    top.grid(alpha=0.3, which="both")
    bottom.plot(
        steps, [r["eval_acc"] for r in rows], color="tab:blue", lw=1.2, label="token accuracy"
    )
    bottom.plot(
        steps,
        [r["eval_seq_acc"] for r in rows],
        color="tab:green",
        lw=1.2,
        label="whole-sequence accuracy",
    )
    measures = sorted({k for r in rows for k in r if k.startswith("prog_")})
    colors = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
    for key, color in zip(measures, colors * len(measures)):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        bottom.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color=color,
            lw=1.0,
            ls="--",
            label=LABELS.get(key, key),
        )
    _mark_transition(bottom, summary, level=False)
    bottom.set_ylim(0, 1)
    bottom.set_xlabel("step")
    bottom.legend(fontsize=7)
    bottom.grid(alpha=0.3)


def _draw_losses(ax: Any, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    steps = [r["step"] for r in rows]
    prefix = "eval_" if rows and "eval_loss" in rows[0] else ""
    for key, label, color in (
        ("loss", "L (all entries)", "black"),
        ("loss_obs", "L_obs (observed)", "tab:blue"),
        ("loss_mask", "L_mask (hidden)", "tab:red"),
    ):
        ax.plot(steps, [r[prefix + key] for r in rows], label=label, color=color, lw=1.2)
    sizes = sorted({k for r in rows[:1] for k in r if k.startswith("eval_loss_mask_")})
    for i, key in enumerate(sizes):
        ax.plot(
            steps,
            [r.get(key) for r in rows],
            lw=0.9,
            ls="--",
            color=plt.cm.viridis(i / max(len(sizes) - 1, 1)),
            label=f"L_mask {key.removeprefix('eval_loss_mask_')}",
        )
    _mark_transition(ax, summary)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (fixed evaluation batch)" if prefix else "MSE (training batch)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")


def _mark_transition(ax: Any, summary: dict[str, Any], level: bool = True) -> None:
    """The detector's findings in the words of summary.json (README, "Transition terms"): the
    plateau level, the escape from the plateau, and the drop only when the run `dropped`."""
    if level and summary.get("plateau_level"):
        ax.axhline(
            summary["plateau_level"],
            color="tab:red",
            ls=":",
            lw=0.8,
            label=f"plateau_level {summary['plateau_level']:.3g}",
        )
    if summary.get("escape_step") is not None:
        ax.axvline(
            summary["escape_step"],
            color="tab:orange",
            ls=":",
            lw=1.0,
            label=f"escape_step {summary['escape_step']}",
        )
    if summary.get("dropped") and summary.get("drop_step") is not None:
        ax.axvline(
            summary["drop_step"],
            color="gray",
            ls="--",
            lw=0.9,
            label=f"drop_step {summary['drop_step']} (dropped)",
        )
    end, p_steps = summary.get("plateau_end"), summary.get("plateau_steps")
    if level and end is not None and p_steps:  # the window rule's judge: F is read in this span
        f = summary.get("drop_factor")  # null on disk where the loss reached exactly 0: F unbounded
        f_text = f"{f:.3g}" if f is not None and math.isfinite(f) else "unbounded (loss 0)"
        ax.axvspan(
            end,
            end + p_steps / 4,
            color="tab:green",
            alpha=0.12,
            label=f"plateau_end {end} + P/4: F {f_text}"
            + (" (sudden)" if summary.get("sudden") else ""),
        )


def plot_forecast(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """The escape step forecast at each log (forecast.py) with its 90% interval (calibrated,
    calibration.py), against the step it was made at, and the escape as it came (summary's
    escape_step) with the share of the intervals made before it that held it."""
    made = [r for r in rows if r.get("forecast_escape") is not None]
    with figure(path, figsize=(6.4, 3.6), dpi=120) as (fig, axes):
        ax = axes[0][0]
        steps = [r["step"] for r in made]
        ax.fill_between(
            steps,
            [r["forecast_low"] for r in made],
            [r["forecast_high"] for r in made],
            color="tab:blue",
            alpha=0.2,
            step="mid",
            label="90% interval",
        )
        ax.plot(
            steps,
            [r["forecast_escape"] for r in made],
            ".",
            color="tab:blue",
            ms=3,
            label="forecast escape step",
        )
        if summary.get("escape_step") is not None:
            held = summary.get("forecast_record", {}).get("covered")
            ax.axhline(
                summary["escape_step"],
                color="tab:red",
                ls="--",
                lw=0.8,
                label=f"escape_step {summary['escape_step']}"
                + (f" (held by {held:.0%} of the intervals before it)" if held is not None else ""),
            )
        lo = min(steps + [r["step"] for r in rows[:1]])
        ax.plot(
            [lo, rows[-1]["step"]],
            [lo, rows[-1]["step"]],
            color="gray",
            ls=":",
            lw=0.8,
            label="now",
        )
        ax.set_xlabel("step the forecast was made at")
        ax.set_ylabel("forecast escape step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)


def plot_study_intervals(result: dict[str, Any], path: Path, ymax: float = 3.0) -> None:
    """The forecast study's figure from its `result` (dynamics/study.py `study`): per family, the
    calibrated forecasts of its best signal on the evaluation runs, with their 90% intervals, in
    units of each run's plateau length L from its start (x: when the forecast was made, y: the
    escape it forecast; the escape as it came is y = 1). Values above `ymax` are drawn at it."""
    points = result["points"]
    # the signal the error goal was judged on (the false-alarm goal's is "all signals")
    best = {g["family"]: g["signal"] for g in result["goals"] if g["goal"].startswith("median")}
    fams = sorted(best) or ["none"]
    with figure(path, 1, len(fams), figsize=(4.2 * len(fams), 3.8), dpi=110) as (fig, axes):
        for ax, fam in zip(axes[0], fams):
            sel = [p for p in points if p["family"] == fam and p["signal"] == best.get(fam)]
            for k, run in enumerate(sorted({p["run"] for p in sel})):
                mine = [p for p in sel if p["run"] == run]
                x = [(p["step"] - p["start"]) / p["L"] for p in mine]
                y = [min(ymax, (p["forecast"] - p["start"]) / p["L"]) for p in mine]
                lo = [min(ymax, (p["low"] - p["start"]) / p["L"]) for p in mine]
                hi = [min(ymax, (p["high"] - p["start"]) / p["L"]) for p in mine]
                color = f"C{k % 10}"
                ax.vlines(x, lo, hi, color=color, alpha=0.25, lw=2)
                ax.plot(x, y, ".", color=color, ms=3)
            ax.axhline(1.0, color="tab:red", ls="--", lw=0.8, label="the escape")
            ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=0.8, label="now")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, ymax)
            ax.set_xlabel("when made: (step - plateau start) / L")
            ax.set_ylabel("forecast escape: (step - plateau start) / L")
            ax.set_title(f"{fam}: {best.get(fam, '-')}, 90% intervals", fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
            ax.grid(alpha=0.3)
