"""Fig. 8: one component trained alone. For each parameter group, start from a converged run,
re-initialise that group as at step 0, freeze everything else, and train the group alone; then
compare every group's L_mask curve with the full model's own.

It is a sweep (sweep.py) whose trials share the run's configuration and differ in
`train.reinit = train.trainable = GROUP`, written to RUN/components/ (or --out): each trial an
ordinary run directory, plus components.png and components.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..models import groups
from ..plots import figure, plt
from ..run.rundir import atomic_write_bytes, read_config, read_metrics
from .runner import Sweep, SweepSpec


def component_groups(model_cfg: ModelConfig) -> list[str]:
    """The paper's components: embeddings, each layer's attention and MLP, LayerNorms, read-out;
    those the model has (the GPT has no embedding LayerNorm)."""
    layers = model_cfg.layers
    names = [
        "tok_embed",
        "pos_embed",
        "ln_embed",
        *[f"attn.{l}" for l in range(layers)],
        *[f"mlp.{l}" for l in range(layers)],
        "layernorm",
        "readout",
    ]
    lacking = groups.absent(names, model_cfg)
    return [g for g in names if g not in lacking]


def spec(run: Path, steps: int, step: int | None = None) -> SweepSpec:
    cfg = read_config(run)
    names = component_groups(cfg.model)
    source = f"{Path(run).resolve()}@{step}" if step is not None else str(Path(run).resolve())
    return SweepSpec(
        base_run=str(Path(run).resolve()),
        preset=cfg.preset,
        fixed={"train.init_from": source, "train.steps": str(steps), "train.stop_after_drop": "0"},
        zip={"train.reinit": names, "train.trainable": names},
    )


def report(sweep: Sweep) -> Path:
    """components.png (every group's L_mask beside the full model's) and components.md (a table)."""
    full = read_metrics(Path(sweep.spec.base_run))
    rows = sweep.rows()
    table = [
        "| group trained alone | plateau from | drop step | steps on the plateau | final L_mask | "
        "status |",
        "|---|---|---|---|---|---|",
    ]
    path = sweep.out / "components.png"
    with figure(path, figsize=(8, 4.8)) as (fig, axes):
        ax = axes[0][0]
        ax.plot(
            [r["step"] for r in full],
            [r.get("eval_loss_mask") for r in full],
            color="black",
            lw=2,
            label="full model (from init)",
        )
        for i, trial in enumerate(sweep.trials):
            group = trial.overrides["train.trainable"]
            metrics = (
                read_metrics(sweep.out / trial.name) if (sweep.out / trial.name).is_dir() else []
            )
            if metrics:
                ax.plot(
                    [r["step"] for r in metrics],
                    [r.get("eval_loss_mask") for r in metrics],
                    lw=1,
                    color=plt.cm.tab20(i % 20),
                    label=group,
                )
            s: dict[str, Any] = (rows.get(trial.index) or {}).get("summary") or {}
            length = (
                s["drop_step"] - s["plateau_start"]
                if s.get("drop_step") is not None and s.get("plateau_start") is not None
                else None
            )
            final = s.get("final_level")
            table.append(
                f"| {group} | {s.get('plateau_start')} | {s.get('drop_step')} | {length} | "
                f"{final:.4g} | {(rows.get(trial.index) or {}).get('status', 'not run')} |"
                if isinstance(final, float)
                else f"| {group} | | | | | "
                f"{(rows.get(trial.index) or {}).get('status', 'not run')} |"
            )
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("step")
        ax.set_ylabel("L_mask (evaluation batch)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
    text = "\n".join(
        [
            f"# One component trained alone (Fig. 8): `{sweep.spec.base_run}`",
            "",
            *table,
            "",
            f"![components]({path.name})",
            "",
        ]
    )
    atomic_write_bytes(sweep.out / "components.md", text.encode())
    return path
