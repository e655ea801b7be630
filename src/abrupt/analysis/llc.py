"""The local learning coefficient (LLC) at checkpoints, a candidate early signal of the drop.

The LLC (singular learning theory; Lau et al. 2023) is estimated with the `devinterp` library
(optional: `pip install 'abrupt[devinterp]'`) by SGLD sampling around the checkpoint's weights on
the run's own training law: LLC = n_beta (mean sampled loss - loss at the checkpoint), the loss
being the training objective (MSE over all entries; for the sequence tasks, the cross-entropy
over the outputs). It is measured per checkpoint, so the cost is
`chains * draws` forward and backward passes of `batch` matrices each (plus `n` evaluations).
Not from the paper: it asks whether the LLC moves before the loss does.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import torch

from .. import tasks
from ..config import Config
from ..data import Batch, id_to_value, seeded_batch, value_to_id
from ..hooks import mode
from ..plots import figure
from .common import Count, Inputs, Result, Seed, Table, Text, at_least, bert_only, between, one_of

TITLE = "Local learning coefficient (devinterp)"
PAPER = (
    "Not in the paper. Developmental interpretability reads phase changes from the LLC, which "
    "estimates how many "
    "effective parameters the model uses at a point; a change across the drop, and whether it "
    "comes first, is the question."
)
ORDER = 6
NEEDS = frozenset()  # task capabilities (tasks/base.py)
ON_REQUEST = True  # minutes per checkpoint: `abrupt analyze RUN --only llc`
# --quick leaves n alone: the cost is chains x draws of `batch`, and n sets n_beta (the estimate)
QUICK = False


def unsupported(cfg: Config) -> str | None:
    try:
        import devinterp  # noqa: F401
    except ImportError:
        return "the devinterp library is not installed (pip install 'abrupt[devinterp]')"
    return bert_only(cfg) if "matrices" in tasks.get(cfg.task.name).provides(cfg) else None


def _pack(batch: Batch) -> torch.Tensor:
    """(B, 2T) ids: the input tokens, then the target values as value ids (devinterp passes one id
    tensor)."""
    return torch.cat([batch.tokens, value_to_id(batch.target, clip=True)], dim=1)


def _loss_fn(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(B, 2T - 1), devinterp's per-token shape: each matrix's mean squared error over all its
    entries in every column, so that the mean is the training objective."""
    t = ids.shape[1] // 2
    target = id_to_value(ids[:, t:].cpu()).to(ids.device)
    per_matrix = ((model(ids[:, :t]) - target) ** 2).mean(dim=1, keepdim=True)
    return per_matrix.expand(-1, ids.shape[1] - 1)


def _sequence_loss_fn(out_start: int):
    """The sequence tasks' objective in devinterp's shape: each sequence's cross-entropy over its
    outputs (teacher-forced, no attention-score intervention) in every column."""

    def loss_fn(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        logits = model(ids[:, :-1])[:, out_start - 1 :].float()
        ce = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), ids[:, out_start:], reduction="none"
        )
        return ce.mean(dim=1, keepdim=True).expand(-1, ids.shape[1] - 1)

    return loss_fn


# A chain whose sampled loss climbs this many times above where it started has left the basin (the
# step size is too large for the curvature): its number measures the divergence, not the LLC.
DIVERGED = 100.0
CALIBRATE = (
    "lower llc.lr (10x at a time) until every chain's loss rises from its start and levels off, "
    "as devinterp's calibration advises: sweep lr and localization and keep the largest lr whose "
    "chains settle"
)


def chain_failures(
    per_chain: list[float], traces: list[list[float]], init_loss: float
) -> list[str]:
    """Why each failed chain failed (empty: none did): a non-finite loss or LLC (devinterp's "Chain
    failed: Loss is NaN or Inf"), or a sampled loss more than DIVERGED times its starting level."""
    reasons = []
    for i, (value, trace) in enumerate(zip(per_chain, traces)):
        if not math.isfinite(value) or not all(math.isfinite(x) for x in trace):
            reasons.append(f"chain {i}: its loss became NaN or inf")
        elif max(trace) > DIVERGED * max(init_loss, trace[0], 1e-12):
            reasons.append(
                f"chain {i}: its loss rose {max(trace) / max(init_loss, trace[0], 1e-12):.3g}x "
                "above its start"
            )
    return reasons


def estimate(
    model: torch.nn.Module,
    ids: torch.Tensor,
    loss_fn,
    lr: float,
    n_beta: float,
    localization: float,
    chains: int,
    draws: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """{'llc': mean over chains, 'llc_std': standard deviation over chains (None for one chain:
    undefined), 'seconds': cost, 'failed': None}; where a chain failed or diverged, 'llc' and
    'llc_std' are None and 'failed' says why. devinterp's samples go to a temporary folder that is
    removed before returning."""
    import tempfile

    from datasets import Dataset
    from devinterp.slt.llc import llc

    data = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    t0 = time.perf_counter()
    with mode(model, training=True), tempfile.TemporaryDirectory(prefix="abrupt-llc-") as tmp:
        out = llc(
            model,
            data,
            {},
            lr=lr,
            n_beta=n_beta,
            localization=localization,
            num_chains=chains,
            num_draws=draws,
            batch_size=batch_size,
            num_init_loss_batches=max(1, len(ids) // batch_size),
            init_seed=seed,
            loss_fn=loss_fn,
            device="cpu",
            output_path=str(Path(tmp) / "samples.zarr"),
        )
        # read into memory before the folder goes: the result is backed by the zarr store
        per_chain = [float(v) for v in out["llc_per_chain"].values.reshape(-1)]
        traces = [
            [float(x) for x in row] for row in out["loss_trace"].values.reshape(len(per_chain), -1)
        ]
        init_loss = float(out["init_loss"].values)
        mean, spread = float(out["llc_mean"]), float(out["llc_std"])
    seconds = time.perf_counter() - t0
    reasons = chain_failures(per_chain, traces, init_loss)
    if reasons:
        return {
            "llc": None,
            "llc_std": None,
            "seconds": seconds,
            "chains": len(per_chain),
            "failed": f"{len(reasons)} of {len(per_chain)} chains failed ({'; '.join(reasons)}): "
            f"{CALIBRATE}",
        }
    std = spread if len(per_chain) > 1 else None  # a spread over one chain is undefined, not 0
    return {
        "llc": mean,
        "llc_std": std,
        "seconds": seconds,
        "chains": len(per_chain),
        "failed": None,
    }


def run(
    inputs: Inputs,
    checkpoints: Annotated[str, one_of("chosen", "all")] = "chosen",
    n: Count = 1024,
    batch: Count = 128,
    chains: Annotated[int, between(1, 64)] = 2,
    draws: Annotated[int, between(1, 10_000)] = 100,
    lr: Annotated[float, between(0, 1, open_lo=True)] = 1e-4,
    localization: Annotated[float, at_least(0)] = 100.0,
    seed: Seed = 0,
) -> Result:
    """LLC at the chosen (plateau, final) checkpoints or at every one, with n_beta = n / log n."""
    models = inputs.models if checkpoints == "chosen" else inputs.all_checkpoints()
    if "matrices" in inputs.task.provides(inputs.cfg):
        ids, loss_fn = _pack(seeded_batch(inputs.data, n, seed)), _loss_fn
    else:
        task_batch = inputs.task.seeded_batch(inputs.cfg, n, seed)
        ids, loss_fn = task_batch.tokens, _sequence_loss_fn(task_batch.out_start)
    n_beta = n / math.log(n) if n > 1 else 1.0
    rows = []
    for step, model in models.items():
        torch.manual_seed(seed)
        rows.append(
            {
                "step": step,
                **estimate(
                    model,
                    ids,
                    loss_fn,
                    lr,
                    n_beta,
                    localization,
                    chains,
                    draws,
                    min(batch, n),
                    seed,
                ),
            }
        )
    loss = {r["step"]: r.get("eval_loss_mask", r.get("eval_loss")) for r in inputs.metrics}
    for r in rows:
        r["eval_loss"] = loss.get(r["step"])
    numbers = {
        "n_beta": n_beta,
        "rows": rows,
        "drop_step": inputs.summary.get("drop_step"),
        "escape_step": inputs.summary.get("escape_step"),
        "seconds_per_checkpoint": sum(r["seconds"] for r in rows) / len(rows),
    }
    return Result(numbers, {"rows": rows})


def plot(result: Result, out: Path) -> list[Path]:
    # failed estimates have no point
    rows = [r for r in result.figure_data["rows"] if r["llc"] is not None]
    path = out / "llc.png"
    with figure(path, figsize=(6.4, 3.6)) as (fig, axes):
        ax = axes[0][0]
        ax.errorbar(
            [r["step"] for r in rows],
            [r["llc"] for r in rows],
            yerr=[r["llc_std"] or 0.0 for r in rows],
            marker="o",
            ms=3,
            lw=1,
            capsize=2,
            label="LLC (devinterp SGLD)",
        )
        for key, style in (("escape_step", ":"), ("drop_step", "--")):
            if result.numbers.get(key) is not None:
                ax.axvline(
                    result.numbers[key], color="gray", ls=style, lw=0.8, label=key.replace("_", " ")
                )
        ax.set_xlabel("step")
        ax.set_ylabel("estimated LLC")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return [path]


def render(r: dict[str, Any]) -> list[Table | Text]:
    failed = [x for x in r["rows"] if x.get("failed")]
    notes = [Text(f"Step {x['step']}: no estimate, {x['failed']}.") for x in failed]
    return [
        Text(
            f"SGLD with n_beta = {r['n_beta']:.4g}; {r['seconds_per_checkpoint']:.3g} s per "
            "checkpoint on this machine. "
            f"Escape at step {r['escape_step']}, drop at step {r['drop_step']}."
        ),
        Table(
            [
                "step",
                "LLC",
                "spread over chains (std; none for one chain)",
                "eval loss (L_mask; a task's cross-entropy)",
                "seconds",
            ],
            [
                [
                    x["step"],
                    "failed" if x.get("failed") else x["llc"],
                    x["llc_std"],
                    x["eval_loss"],
                    x["seconds"],
                ]
                for x in r["rows"]
            ],
        ),
        *notes,
    ]
