"""What every analysis shares: choosing checkpoints, seeded batches, losses of predictions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoints
from ..config import Config, DataConfig
from ..data import Batch, generator, sample_batch
from ..model import MatrixBert
from ..train import losses, read_metrics


@dataclass
class RunView:
    """A run directory opened for analysis: configuration, checkpoints, the default pre/post steps."""

    path: Path
    cfg: Config
    steps: list[int]  # every complete checkpoint
    pre: int
    post: int
    note: str  # how pre/post were chosen, for the report

    def model(self, step: int) -> MatrixBert:
        return checkpoints.load_model(self.cfg, checkpoints.find(self.path, step))


def open_run(path: Path) -> RunView:
    path = Path(path)
    cfg = checkpoints.read_config(path)
    steps = [c.step for c in checkpoints.list_checkpoints(path / "checkpoints", verify=False)]
    if not steps:
        raise checkpoints.CheckpointError(f"no checkpoints in {path / 'checkpoints'}")
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    pre, post, note = choose_pre_post(steps, summary, read_metrics(path))
    return RunView(path, cfg, steps, pre, post, note)


def choose_pre_post(
    steps: list[int], summary: dict[str, Any], rows: list[dict[str, Any]] | None = None
) -> tuple[int, int, str]:
    """Plateau checkpoint: the last one before the drop whose evaluation L_mask is still within 10%
    of the plateau level (a drop can start with a slow slide before the detected halving);
    post-drop: the last one. Without a drop: the earliest trained and the last checkpoint."""
    trained = [s for s in steps if s > 0] or steps
    drop, start, level = summary.get("drop_step"), summary.get("plateau_start"), summary.get("plateau_loss_mask")
    if drop is not None:
        before = [s for s in trained if s < drop]
        on_plateau = [s for s in before if start is None or s >= start]
        if rows and level:
            logged = {r["step"]: r.get("eval_loss_mask", r.get("loss_mask")) for r in rows}
            flat = [s for s in on_plateau if logged.get(s) is not None and logged[s] >= 0.9 * level]
            on_plateau = flat or on_plateau
        pre = (on_plateau or before or trained)[-1]
        return pre, trained[-1], f"pre-drop step {pre} (on the plateau; drop detected at step {drop}), post-drop step {trained[-1]}"
    return trained[0], trained[-1], (
        f"no drop detected in this run: comparing the earliest trained checkpoint (step {trained[0]}) "
        f"with the last (step {trained[-1]})"
    )


def seeded(data: DataConfig, count: int, seed: int) -> Batch:
    return sample_batch(data, count, generator(seed))


def loss_dict(pred: torch.Tensor, batch: Batch) -> dict[str, float]:
    parts = losses(pred.to(batch.target.device), batch)
    return {k: parts[k].item() for k in ("loss", "loss_obs", "loss_mask")}


def evaluate_with_hooks(model: MatrixBert, batch: Batch, fwd_hooks=()) -> dict[str, float]:
    with torch.no_grad(), model.hooks(fwd_hooks):
        return loss_dict(model.predict(batch.tokens), batch)


def group_by_layer(heads: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> dict[int, list[int]]:
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


def plot_head_tables(tables: dict[str, list[list[float]]], path: Path, title: str, center: float | None = None) -> Path:
    """One layer x head heatmap per entry of `tables`, numbers written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(0.9 + 0.75 * len(next(iter(tables.values()))[0]) * len(tables) + 1.2 * len(tables), 3.4), dpi=110, squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        arr = torch.tensor(table).numpy()
        kw = {"cmap": "RdBu_r", "vmin": center - abs(arr - center).max(), "vmax": center + abs(arr - center).max()} if center is not None else {"cmap": "viridis"}
        im = ax.imshow(arr, aspect="auto", **kw)
        for (l, h), v in np.ndenumerate(arr):
            ax.text(h, l, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if center is not None else "white")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(arr.shape[1]))
        ax.set_yticks(range(arr.shape[0]))
        ax.set_title(name, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
