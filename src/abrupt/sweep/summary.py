"""A sweep's summary.md and figures: a table of every trial (with the window rule's plateau length
P, drop factor F and the fold below the plateau at the end), the same across seeds when `seed` is
swept, the drop statistics, and per swept key the drop step and final L_mask against its value;
every trial's L_mask curve on one plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..run.rundir import atomic_write_text, read_metrics

if TYPE_CHECKING:  # the runner calls this module; only its type is named here
    from .runner import Sweep


def _number(v: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            continue
    return v


def write_summary(sweep: Sweep) -> Path:
    """summary.md: a table of every trial, the drop statistics and the figures."""
    rows = sweep.rows()
    keys = sweep.spec.swept_keys()
    base = (
        f"the configuration of run `{sweep.spec.base_run}`"
        if sweep.spec.base_run
        else f"preset `{sweep.spec.preset}`"
    )
    lines = [
        f"# Sweep `{sweep.out.name}`",
        "",
        f"Base: {base}; fixed: "
        + (", ".join(f"`{k}={v}`" for k, v in sweep.spec.fixed.items()) or "none")
        + ".",
        "",
        "| trial | "
        + " | ".join(keys)
        + " | status | escape_step | drop_step | dropped | P | F | sudden "
        "| plateau_level | final L_mask | end fold | seconds |",
        "|---" * (len(keys) + 12) + "|",
    ]
    for t in sweep.trials:
        r = rows.get(t.index, {"status": "not run"})
        s = r.get("summary") or {}
        cells = [t.overrides.get(k, "") for k in keys]
        lines.append(
            f"| {t.name} | "
            + " | ".join(cells)
            + f" | {r['status']} | {s.get('escape_step')} | {s.get('drop_step')} | "
            f"{s.get('dropped')} | "
            f"{s.get('plateau_steps')} | {_fmt(s.get('drop_factor'))} | {s.get('sudden')} | "
            + _fmt(s.get("plateau_level"))
            + " | "
            + _fmt(_final(s))
            + " | "
            + _fmt(end_fold(s))
            + f" | {r.get('seconds', '')} |"
        )
    failed = [r for r in rows.values() if r.get("status") == "failed"]
    if failed:
        lines += ["", "Failed trials:", ""] + [f"- {r['trial']}: {r['error']}" for r in failed]
    if "seed" in keys:
        lines += ["", *_across_seeds(sweep, rows, [k for k in keys if k != "seed"])]
    lines += ["", _drop_stats(rows.values()), ""]
    try:
        lines += [f"![{p.stem}]({p.name})" for p in _figures(sweep, rows, keys)]
        failed_figures = None
    # a full disk: the table may still fit, and says why the figures are missing
    except OSError as e:
        failed_figures = e
        lines.append(f"Figures not written: {e.strerror or e}.")
    path = sweep.out / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    if failed_figures is not None:
        raise failed_figures
    return path


def _final(summary: dict[str, Any]) -> Any:
    """The final headline loss: L_mask on matrices, the cross-entropy on outputs for a sequence
    task."""
    return (
        summary.get("final_loss")
        if summary.get("final_level") is None
        else summary["final_level"]
    )


def end_fold(summary: dict[str, Any]) -> float | None:
    """How many times below its plateau level the run ended (plateau L_mask / final L_mask)."""
    level, final = summary.get("plateau_level"), _final(summary)
    if not isinstance(level, (int, float)) or not isinstance(final, (int, float)) or final <= 0:
        return None
    return level / final


def spread(values: list[Any]) -> str:
    """'median [min–max]' of the numbers among values ('—' when none)."""
    xs = sorted(v for v in values if isinstance(v, (int, float)))
    if not xs:
        return "—"
    median = statistics.median(xs)
    return _fmt(median) if len(xs) == 1 else f"{_fmt(median)} [{_fmt(xs[0])}–{_fmt(xs[-1])}]"


def _across_seeds(sweep: Sweep, rows: dict[int, dict[str, Any]], keys: list[str]) -> list[str]:
    """One row per setting (the swept values other than the seed): how many finished seeds were
    sudden, and P, F, the end fold, the final L_mask and the wall time as median [min–max]."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for t in sweep.trials:
        groups.setdefault(tuple(t.overrides.get(k, "") for k in keys), []).append(
            rows.get(t.index, {})
        )
    lines = [
        "Across seeds (median [min–max] over the finished seeds):",
        "",
        "| "
        + " | ".join(
            keys + ["seeds done", "sudden", "P", "F", "end fold", "final L_mask", "seconds"]
        )
        + " |",
        "|---" * (len(keys) + 7) + "|",
    ]
    for setting, group in groups.items():
        done = [r for r in group if r.get("status") == "done" and r.get("summary")]
        sums = [r["summary"] for r in done]
        cells = [
            *setting,
            f"{len(done)} of {len(group)}",
            f"{sum(1 for s in sums if s.get('sudden'))} of {len(done)}",
            spread([s.get("plateau_steps") for s in sums]),
            spread([s.get("drop_factor") for s in sums]),
            spread([end_fold(s) for s in sums]),
            spread([_final(s) for s in sums]),
            spread([r.get("seconds") for r in done]),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _figures(sweep: Sweep, rows: dict[int, dict[str, Any]], keys: list[str]) -> list[Path]:
    """Per swept key, drop step and final L_mask against its value; every trial's L_mask curve."""
    from ..plots import figure, plt

    figures = []
    for key in keys:
        path = sweep.out / f"by_{key.replace('.', '_')}.png"
        with figure(path, 1, 2, figsize=(9, 3.4)) as (fig, axes):
            for ax, field_, label in (
                (axes[0][0], "drop_step", "drop_step"),
                (axes[0][1], "final_level", "final L_mask"),
            ):
                found = [(t, rows.get(t.index, {}).get("summary") or {}) for t in sweep.trials]
                pts = [
                    (
                        _number(t.overrides.get(key, "")),
                        _final(s) if field_ == "final_level" else s.get(field_),
                    )
                    for t, s in found
                ]
                pts = [(x, y) for x, y in pts if isinstance(y, (int, float))]
                ax.scatter([x for x, _ in pts], [y for _, y in pts], color="tab:red")
                ax.set_xlabel(key)
                ax.set_ylabel(label)
                if field_ == "final_level":
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
        figures.append(path)
    curves = sweep.out / "curves.png"
    # one colour per setting (the swept values other than the seed), so the seeds of a setting share
    # it
    color_keys = [k for k in keys if k != "seed"] or keys
    setting = lambda t: ", ".join(
        f"{k.split('.')[-1]}={t.overrides.get(k, '')}" for k in color_keys
    )  # noqa: E731
    values = list(dict.fromkeys(setting(t) for t in sweep.trials))
    with figure(curves, figsize=(7, 4.2)) as (fig, axes):
        ax = axes[0][0]
        labelled = set()
        for t in sweep.trials:
            metrics = read_metrics(sweep.out / t.name) if (sweep.out / t.name).is_dir() else []
            if not metrics:
                continue
            v = setting(t)
            color = (
                plt.cm.viridis(values.index(v) / max(len(values) - 1, 1))
                if color_keys
                else "tab:red"
            )
            label = v if color_keys and v not in labelled else None
            labelled.add(v)
            ax.plot(
                [m["step"] for m in metrics],
                [m.get("eval_loss_mask", m.get("eval_loss")) for m in metrics],
                color=color,
                lw=1,
                label=label,
            )
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("L_mask (evaluation batch; cross-entropy for a sequence task)")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:  # none where no trial wrote metrics
            ax.legend(fontsize=7)
    return figures + [curves]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def _drop_stats(rows: Iterable[dict[str, Any]]) -> str:
    rows = [r for r in rows if r.get("status") == "done"]
    escapes = sorted(
        r["summary"]["escape_step"] for r in rows if r["summary"].get("escape_step") is not None
    )
    drops = sorted(
        r["summary"]["drop_step"] for r in rows if r["summary"].get("drop_step") is not None
    )
    tenfold = sum(1 for r in rows if r["summary"].get("dropped"))
    if drops:
        text = (
            f"drop_step (below half the plateau) in {len(drops)} of {len(rows)} finished trials: "
            f"median {statistics.median(drops):g}, "
            f"range {drops[0]}–{drops[-1]}; dropped (also 10x below it at the end): {tenfold}."
        )
    else:
        text = (
            f"drop_step: no trial of {len(rows)} fell below half its plateau; dropped: {tenfold}."
        )
    if escapes:
        text += (
            f" escape_step (20% below the plateau): median {statistics.median(escapes):g}, "
            f"range {escapes[0]}–{escapes[-1]}."
        )
    return text
