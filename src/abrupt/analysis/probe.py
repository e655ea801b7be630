"""Linear probes on hidden states (Fig. 6): what each layer stores about the input matrix.

Per layer (0 = embeddings, l = output of block l), a least-squares linear map with bias from each
token's hidden state to:
  row      the token's row of the masked input (hidden entries as 0)        MSE, mean |cosine|
  value    the token's true value, reported on masked and observed tokens   MSE, R^2
  singular the top right singular vector of the true matrix (sign fixed so   MSE, mean |cosine|
           its largest entry is positive; the cosine is sign-invariant)
Fit on a seeded set of matrices, scored on held-out matrices (a split by matrix, not by token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch

from ..config import Config
from ..data import seeded_batch
from ..hooks import act_name
from ..models.bert import MatrixBert
from ..plots import figure
from .common import Inputs, Result, Seed, Table, Text, at_least, bert_only, between

TITLE = "Linear probes (Fig. 6)"
PAPER = (
    "The deeper layers (3 and 4) store the input matrix: the row of the masked input is linearly "
    "decodable from their hidden states after the drop, not before (Fig. 6)."
)
ORDER = 30
NEEDS = frozenset({"probe_targets", "matrices"})  # task capabilities (tasks/base.py)


def hidden_states(model: MatrixBert, tokens: torch.Tensor) -> torch.Tensor:
    """(layers + 1, B, T, d): the embedding output and each block's output, on the model's
    device (the probes are fitted there: at width 768 the states of 1024 matrices are 770 MB)."""
    names = [act_name("embed")] + [act_name("resid_post", l) for l in range(len(model.blocks))]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=names)
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


def targets(batch, m: int, n: int) -> dict[str, torch.Tensor]:
    """Per-token targets, flattened to (B*T, k)."""
    b, t = batch.tokens.shape
    masked_input = torch.where(batch.mask, torch.zeros_like(batch.target), batch.target).reshape(
        b, m, n
    )
    rows = masked_input[:, torch.arange(t) // n, :].reshape(b * t, n)  # each token's own row
    _, _, vh = torch.linalg.svd(batch.matrix.double())
    v1 = vh[:, 0, :]
    sign = torch.sign(v1.gather(1, v1.abs().argmax(1, keepdim=True)))
    v1 = (v1 * sign).float()
    return {
        "row": rows,
        "value": batch.target.reshape(b * t, 1),
        "singular": v1[:, None, :].expand(b, t, n).reshape(b * t, n),
    }


def check(options: dict[str, Any], cfg: Config) -> None:
    n, holdout = options.get("n", 1024), options.get("holdout", 0.25)
    n_test = max(1, int(round(n * holdout)))
    if n - n_test < 1:
        raise ValueError(
            f"probe.n={n} with probe.holdout={holdout} leaves no matrix to fit on; raise probe.n "
            "or lower probe.holdout"
        )


def unsupported(cfg: Config) -> str | None:
    return bert_only(cfg)


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
    data = inputs.data
    batch = seeded_batch(data, n, seed)
    t = data.m * data.n
    n_test = max(1, int(round(n * holdout)))
    # the fits run where the models are (the targets are small: moved once)
    device = next(next(iter(inputs.models.values())).parameters()).device
    split = (torch.arange(n * t) < (n - n_test) * t).to(device)  # first matrices fit, last test
    tg = {k: v.to(device) for k, v in targets(batch, data.m, data.n).items()}
    hidden_tok = batch.mask.reshape(-1).to(device)
    rows = []
    for step, model in inputs.models.items():
        states = hidden_states(model, batch.tokens)  # (L+1, B, T, d)
        for layer in range(states.shape[0]):
            x = states[layer].reshape(n * t, -1)
            row: dict[str, Any] = {"step": step, "layer": layer}
            for name, y in tg.items():
                w = fit_probe(x[split], y[split], ridge)
                pred = apply_probe(w, x[~split])
                err = ((pred - y[~split].double()) ** 2).mean(dim=1)
                if name == "value":
                    h = hidden_tok[~split]
                    for part, sel in (("masked", h), ("observed", ~h)):
                        mse = err[sel].mean().item()
                        row[f"value_{part}_mse"] = mse
                        row[f"value_{part}_r2"] = r_squared(mse, y[~split][sel])
                else:
                    row[f"{name}_mse"] = err.mean().item()
                    row[f"{name}_abs_cos"] = mean_abs_cosine(pred, y[~split])
            rows.append(row)
    return Result({"rows": rows, "seed": seed, "n": n, "holdout": holdout})


def plot(result: Result, out: Path) -> list[Path]:
    rows = result.numbers["rows"]
    steps = sorted({r["step"] for r in rows})
    panels = [
        ("row_abs_cos", "row of masked input: mean |cos|"),
        ("value_masked_r2", "true value, masked tokens: R²"),
        ("value_observed_r2", "true value, observed tokens: R²"),
        ("singular_abs_cos", "top singular vector: mean |cos|"),
    ]
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
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("layer (0 = embeddings)")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
    return [path]


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = [
        [
            x["step"],
            x["layer"],
            x["row_mse"],
            x["row_abs_cos"],
            x["value_masked_r2"],
            x["value_observed_r2"],
            x["singular_abs_cos"],
        ]
        for x in r["rows"]
    ]
    return [
        Table(
            [
                "step",
                "layer",
                "row MSE",
                "row |cos|",
                "value R² (masked)",
                "value R² (observed)",
                "top singular vector |cos|",
            ],
            rows,
        )
    ]
