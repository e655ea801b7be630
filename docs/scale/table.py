"""The scale study's table, made from committed results only: each setting's runs judged
by the window rule of `abrupt.dynamics.transition` on their metrics.jsonl (the runs of this study,
under docs/scale/runs/) or read from a committed sweep's results.jsonl (the width-64 references).

    python docs/scale/table.py            # prints the table (Markdown) and writes curves.png

Columns: P, the plateau's length in steps; F, the fall within P/4 steps after leaving it (sudden:
F >= 5); the fold below the plateau at the last step; the final loss (L_mask on matrices, the
output cross-entropy in nats for a sequence task); minutes of one CPU thread per run.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

from abrupt.dynamics.transition import loss_series, summarize  # noqa: E402
from abrupt.run.rundir import read_config, upgrade_summary  # noqa: E402

# (label, intervention on attention, source): a folder of this study's runs, or (results.jsonl,
# a filter on the trials' overrides)
SETTINGS = [
    ("mws, width 256 (`mws_full`, the follow-up's size)", "none", "runs/mws_full"),
    ("mws, width 256, held-out seed", "none", "runs/mws_full_heldout"),
    (
        "mws, width 64 (`mws`)",
        "none",
        ("docs/tasks/sweeps/scale/results.jsonl", {"task.attn_scale": "1"}),
    ),
    ("prefix_sum, width 256 (`prefix_sum_full`)", "none", "runs/prefix_sum_full"),
    ("addition, width 256 (`addition_full`)", "none", "runs/addition_full"),
    ("histogram, width 256, 2 layers (`histogram_full`)", "none", "runs/histogram_full"),
    ("permutation, width 256, 2 layers (`permutation_full`)", "none", "runs/permutation_full"),
    (
        "4x4 rank 1, width 128, lr 1.5e-3 (width rule), batch 256, eps 1e-4",
        "none",
        "runs/small_w128_eps",
    ),
    (
        "4x4 rank 1, width 128, lr 1.5e-3 (width rule), batch 256, eps 1e-8",
        "none",
        "runs/small_w128",
    ),
    (
        "4x4 rank 1, width 192, lr 1e-3 (width rule), batch 256, eps 1e-8",
        "none",
        "runs/small_w192",
    ),
    ("4x4 rank 1, width 64, depth 6, batch 256, eps 1e-4", "none", "runs/small_depth6_eps"),
    (
        "4x4 rank 1, width 64, batch 256, eps 1e-8 (docs/plateau)",
        "none",
        ("docs/plateau/small_batch/results.jsonl", {}),
    ),
    (
        "7x7 rank 2, width 128, lr 1.5e-3 (width rule), batch 128, curriculum: mean 0.5, 600 steps",
        "none",
        "runs/paper_w128_curriculum",
    ),
    (
        "7x7 rank 2, width 128, lr 1.5e-3 (width rule), batch 128, no curriculum",
        "none",
        "runs/paper_w128_plain",
    ),
    (
        "4x4 rank 1, width 64, bias c = 3, batch 256, eps 1e-4 (`sudden`; seeds 0, 2, 3, 4)",
        "row/column bias",
        ("docs/plateau/small_bias3_b256_eps/results.jsonl", {}),
    ),
]


def _runs(source) -> list[dict]:
    """[{'summary', 'minutes', 'rows'}] of a setting's runs (rows None for results.jsonl trials)."""
    if isinstance(source, str):
        out = []
        for metrics in sorted((HERE / source).glob("*/metrics.jsonl")):
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            minutes = rows[-1]["time"] / 60 if rows else None
            out.append(
                {
                    # judged after a curriculum, as summary.json is
                    "summary": summarize(rows, after=read_config(metrics.parent).curriculum.end()),
                    "minutes": minutes,
                    "rows": rows,
                    "name": metrics.parent.name,
                }
            )
        return out
    path, where = source
    out = []
    for line in (ROOT / path).read_text().splitlines():
        trial = json.loads(line)
        if trial.get("status") == "done" and all(
            trial["overrides"].get(k) == v for k, v in where.items()
        ):
            out.append(
                {
                    "summary": upgrade_summary(trial["summary"]),
                    "minutes": trial["seconds"] / 60,
                    "rows": None,
                    "name": trial["trial"],
                }
            )
    return out


def _spread(values: list) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    fmt = (
        (lambda v: f"{v:.3g}")
        if any(isinstance(v, float) and v != int(v) for v in vals)
        else (lambda v: f"{v:g}")
    )
    if len(vals) == 1:
        return fmt(vals[0])
    return f"{fmt(statistics.median(vals))} [{fmt(min(vals))}–{fmt(max(vals))}]"


def table() -> str:
    lines = [
        "| setting | intervention on attention | seeds | P (steps) | F within P/4 | sudden | "
        "fold below the plateau at the end (step) | final loss | minutes a run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, intervention, source in SETTINGS:
        runs = _runs(source)
        if not runs:
            continue
        sums = [r["summary"] for r in runs]
        folds = [
            s["plateau_level"] / s["final_level"] if s.get("final_level") else None for s in sums
        ]
        left = sum(s.get("plateau_steps") is not None for s in sums)
        steps = _spread([s["steps"] for s in sums])
        lines.append(
            f"| {label} | {intervention} | {len(runs)} | "
            f"{_spread([s.get('plateau_steps') for s in sums])}"
            f"{'' if left == len(runs) else f' ({len(runs) - left} never left)'} | "
            f"{_spread([s.get('drop_factor') for s in sums])} | "
            f"{sum(bool(s.get('sudden')) for s in sums)} of {len(runs)} | "
            f"{_spread(folds)}x ({steps}) | {_spread([s.get('final_level') for s in sums])} | "
            f"{_spread([r['minutes'] for r in runs])} |"
        )
    return "\n".join(lines)


def curves(path: Path) -> None:
    """The loss of every run of this study against its step (the sequence tasks' steps on a log
    axis: their runs last 250 to 5 700 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for label, _, source in SETTINGS:
        if not isinstance(source, str):
            continue
        sequence = label.startswith(("mws", "prefix", "addition", "histogram", "permutation"))
        ax = axes[0] if sequence else axes[label.startswith("7x7") + 1]
        for i, run in enumerate(_runs(source)):
            steps, losses = loss_series(run["rows"])
            ax.plot(
                steps,
                losses,
                lw=1,
                label=label if i == 0 else None,
                color=f"C{[s[0] for s in SETTINGS].index(label)}",
            )
    axes[0].set_title("sequence tasks at the follow-up's size (cross-entropy, nats)")
    axes[0].set_xscale("log")
    axes[1].set_title("4x4 rank-1 matrix completion (evaluation L_mask)")
    axes[2].set_title("7x7 rank 2, the paper's problem (evaluation L_mask)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    print(table())
    curves(HERE / "curves.png")
