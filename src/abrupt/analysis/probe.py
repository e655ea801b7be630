"""Linear probes on hidden states (Fig. 6): what each layer stores of the task's probe targets.

Per layer (0 = embeddings, l = output of block l), a least-squares linear map with bias from each
position's hidden state in the task's teacher-forced pass to each of its `probe_targets`
(tasks/base.ProbeTarget), fitted on a seeded set of examples and scored on held-out examples (a
split by example, not by position), at the positions the target is defined at:
  a value target     MSE, and R^2 (one number a position) or mean |cosine| (a vector), on each
                     of its parts where it has parts
  a class target     accuracy of the argmax of the least-squares map onto one-hot rows, beside
                     chance: the held-out share of the fitting set's most common class

Matrices (BERT and GPT variant, at the masked matrix's positions): `row`, the entry's row of the
masked input (MSE, |cos|); `value`, its true value (MSE, R^2 on masked and observed entries
apart); `singular`, the top right singular vector of the true matrix (MSE, |cos|: the sign is
fixed, the cosine sign-invariant). Sequences (at the output-predicting positions): `answer`, the
next output token; `key_first` / `key_last`, the input tokens at the first / last correct key of
the last layer (what its attention must bring to the query), each as a class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
from matplotlib.ticker import MaxNLocator

from ..config import Config
from ..hooks import HookedModule, act_name
from ..plots import figure
from ..tasks.base import ProbeTarget, Task, TaskBatch
from .common import Inputs, Result, Seed, Table, Text, at_least, between

TITLE = "Linear probes (Fig. 6)"
PAPER = (
    "The deeper layers (3 and 4) store the input matrix: the row of the masked input is linearly "
    "decodable from their hidden states after the drop, not before (Fig. 6). A sequence task's "
    "probes (the next output, the tokens at the correct keys) have no counterpart in the "
    "paper."
)
ORDER = 30
NEEDS = frozenset({"probe_targets"})  # task capabilities (tasks/base.py)
# how each score is shown (results.json keys end in these); the MSEs stay in results.json, and a
# class's chance (`<name>_chance`) is shown beside its accuracy
SCORES = {"_r2": "R²", "_abs_cos": "|cos|", "_acc": "accuracy"}


def hidden_states(task: Task, model: HookedModule, batch: TaskBatch) -> torch.Tensor:
    """(layers + 1, B, P, d): the embedding output and each block's output over the positions of
    the task's teacher-forced pass, on the model's device (the probes are fitted there: at width
    768 the states of 1024 matrices are 770 MB). One pass over the whole batch."""
    names = [act_name("embed")] + [act_name("resid_post", l) for l in range(len(model.blocks))]
    (tokens,), kwargs = task.inputs(model, batch)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=names, **kwargs)
    return torch.stack([cache[n] for n in names])


def fit_probe(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """Least squares with bias (tiny ridge for rank-deficient features): (N, d), (N, k) -> (d+1,
    k)."""
    xb = torch.cat([x, x.new_ones(len(x), 1)], dim=1).double()
    eye = torch.eye(xb.shape[1], dtype=torch.float64, device=x.device)
    gram = xb.T @ xb + ridge * eye * len(xb)
    return torch.linalg.solve(gram, xb.T @ y.double())


def apply_probe(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(len(x), 1)], dim=1).double() @ w


def mean_abs_cosine(pred: torch.Tensor, target: torch.Tensor) -> float:
    cos = torch.nn.functional.cosine_similarity(pred, target.double(), dim=1, eps=1e-12)
    return cos.abs().mean().item()


def check(options: dict[str, Any], cfg: Config) -> None:
    n, holdout = options.get("n", 1024), options.get("holdout", 0.25)
    n_test = max(1, int(round(n * holdout)))
    if n - n_test < 1:
        raise ValueError(
            f"probe.n={n} with probe.holdout={holdout} leaves no example to fit on; raise probe.n "
            "or lower probe.holdout"
        )


def r_squared(mse: float, y: torch.Tensor) -> float:
    """Coefficient of determination 1 - MSE / Var(y), both over the same n points (the variance
    with divisor n, as scikit-learn's r2_score): 0 for the constant predictor at the mean. NaN when
    y is constant or empty (undefined)."""
    var = y.double().var(correction=0).item() if y.numel() else 0.0
    return 1 - mse / var if var > 0 else float("nan")


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Annotated[int, at_least(2)] = 1024,
    holdout: Annotated[float, between(0, 1, open_lo=True, open_hi=True)] = 0.25,
    ridge: Annotated[float, at_least(0)] = 1e-6,
) -> Result:
    """`n` examples of the task's seeded batch: the first n - round(n * holdout) fit, the rest
    score."""
    task, batch = inputs.task, inputs.batch(n, seed)
    n_test = max(1, int(round(n * holdout)))
    # the fits run where the models are (the targets are small: moved once)
    device = next(next(iter(inputs.models.values())).parameters()).device
    targets = {k: _on(t, device) for k, t in task.probe_targets(inputs.cfg, batch).items()}
    example = torch.arange(n, device=device)[:, None]  # each row's example: the split is by it
    rows = []
    for step, model in inputs.models.items():
        states = hidden_states(task, model, batch)  # (layers + 1, B, P, d)
        for layer in range(states.shape[0]):
            row: dict[str, Any] = {"step": step, "layer": layer}
            for name, target in targets.items():
                at = target.where
                fit = example.expand_as(at)[at] < n - n_test  # first examples fit, last test
                x, y = states[layer][at], target.y[at]
                w = fit_probe(x[fit], y[fit], ridge)
                pred = apply_probe(w, x[~fit])
                if target.kind == "class":
                    row.update(_class_scores(name, pred, y[fit], y[~fit]))
                    continue
                err = ((pred - y[~fit].double()) ** 2).mean(dim=1)
                parts = {f"{name}_{p}": sel[at][~fit] for p, sel in target.parts.items()}
                for key, sel in (parts or {name: torch.ones_like(err, dtype=torch.bool)}).items():
                    row.update(_value_scores(key, err[sel], pred[sel], y[~fit][sel]))
            rows.append(row)
    return Result({"rows": rows, "seed": seed, "n": n, "holdout": holdout})


def _on(target: ProbeTarget, device: torch.device) -> ProbeTarget:
    return ProbeTarget(
        target.y.to(device),
        target.where.to(device),
        target.kind,
        {k: p.to(device) for k, p in target.parts.items()},
    )


def _value_scores(
    key: str, err: torch.Tensor, pred: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """MSE of held-out positions (err (N,) their squared errors averaged over the target's k
    entries), and R^2 of a scalar target or mean |cosine| of a vector one (pred, y (N, k))."""
    mse = err.mean().item()
    if y.shape[1] == 1:  # the cosine of two scalars is their sign product: R^2 instead
        return {f"{key}_mse": mse, f"{key}_r2": r_squared(mse, y)}
    return {f"{key}_mse": mse, f"{key}_abs_cos": mean_abs_cosine(pred, y)}


def _class_scores(
    name: str, pred: torch.Tensor, y_fit: torch.Tensor, y_test: torch.Tensor
) -> dict[str, float]:
    """Held-out accuracy of the argmax of `pred` (N, classes) against one-hot `y_test`, and
    chance: the held-out share of the fitting rows' most common class (the best constant guess
    the fitting set allows)."""
    truth = y_test.argmax(1)
    majority = y_fit.sum(0).argmax()
    return {
        f"{name}_acc": (pred.argmax(1) == truth).double().mean().item(),
        f"{name}_chance": (truth == majority).double().mean().item(),
    }


def scores(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(key, heading) of every score of SCORES the rows hold, in the rows' order."""
    out = []
    for key in rows[0] if rows else {}:
        for end, label in SCORES.items():
            if key.endswith(end):
                out.append((key, f"{key[: -len(end)].replace('_', ' ')} {label}"))
    return out


def plot(result: Result, out: Path) -> list[Path]:
    rows = result.numbers["rows"]
    steps = sorted({r["step"] for r in rows})
    panels = scores(rows)
    path = out / "probe.png"
    with figure(path, 1, len(panels), figsize=(4 * len(panels), 3.3)) as (fig, axes):
        for ax, (key, title) in zip(axes[0], panels):
            for step in steps:
                sel = [r for r in rows if r["step"] == step]
                ax.plot(
                    [r["layer"] for r in sel],
                    [r[key] for r in sel],
                    marker="o",
                    label=f"step {step}",
                )
            chance = key.removesuffix("_acc") + "_chance"
            if key.endswith("_acc") and chance in rows[0]:
                ax.axhline(rows[0][chance], color="grey", ls="--", lw=1, label="chance")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("layer (0 = embeddings)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
    return [path]


def render(r: dict[str, Any]) -> list[Table | Text]:
    """One row per checkpoint and layer: every held-out score (a class's chance beside its
    accuracy); the MSEs are in results.json."""
    rows = r["rows"]
    columns = []
    for key, heading in scores(rows):
        columns.append((key, heading))
        chance = key.removesuffix("_acc") + "_chance"
        if key.endswith("_acc") and rows and chance in rows[0]:
            columns.append((chance, f"{key.removesuffix('_acc').replace('_', ' ')} chance"))
    return [
        Text(
            f"Held-out scores of linear probes ({r['n']} examples, {r['holdout']:g} held out), per "
            "checkpoint and layer (0 = embeddings)."
        ),
        Table(
            ["step", "layer", *[h for _, h in columns]],
            [[x["step"], x["layer"], *[x[k] for k, _ in columns]] for x in rows],
        ),
    ]
