"""Figures drawn from a run's metrics (no model needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_losses(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    steps = [r["step"] for r in rows]
    prefix = "eval_" if rows and "eval_loss" in rows[0] else ""
    for key, label, color in (
        ("loss", "L (all entries)", "black"),
        ("loss_obs", "L_obs (observed)", "tab:blue"),
        ("loss_mask", "L_mask (hidden)", "tab:red"),
    ):
        ax.plot(steps, [r[prefix + key] for r in rows], label=label, color=color, lw=1.2)
    if summary.get("plateau_loss_mask"):
        ax.axhline(summary["plateau_loss_mask"], color="tab:red", ls=":", lw=0.8, label="plateau L_mask")
    if summary.get("drop_step") is not None:
        ax.axvline(summary["drop_step"], color="gray", ls="--", lw=0.8, label=f"drop (step {summary['drop_step']})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (fixed evaluation batch)" if prefix else "MSE (training batch)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
