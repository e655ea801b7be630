"""Token and position embeddings (Fig. 7, 9, 10) and the position-permutation test.

- token embeddings: L2 norm against value, and a 2-D PCA of the value tokens in the range the
  training data reaches, coloured by value;
- position embeddings: t-SNE (seeded) coloured by column and by row, and a number that needs no
  picture: k-nearest-neighbour purity by column and by row in the embedding space (chance:
  (n-1)/(T-1) and (m-1)/(T-1));
- the same across checkpoints, all drawn in one fixed PCA projection (fitted on the last);
- permuting the position embeddings of the final model (seeded, several permutations): L, L_obs,
  L_mask before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from matplotlib.lines import Line2D

from .. import progress
from ..config import Config, DataConfig, max_abs_entry
from ..data import id_to_value, seeded_batch, value_to_id
from ..hooks import act_name
from ..losses import evaluate
from ..models.bert import MatrixBert
from ..plots import figure, plt
from .common import Count, Inputs, Result, Seed, Table, Text, at_least, bert_only, loss_cells

TITLE = "Embeddings (Fig. 7, 9, 10)"
PAPER = (
    "Token-embedding norm depends on |value| (symmetric about 0); the first two principal "
    "components separate sign and magnitude; position embeddings cluster by column after the "
    "drop, and "
    "permuting them destroys the model's accuracy (Fig. 7, 9, 10)."
)
ORDER = 40
NEEDS = frozenset({"embeddings", "matrices"})  # task capabilities (tasks/base.py)


def unsupported(cfg: Config) -> str | None:
    if cfg.data.m * cfg.data.n < 4:
        return "position embeddings need at least 4 positions (t-SNE, neighbours)"
    return bert_only(cfg)


def check(options: dict[str, Any], cfg: Config) -> None:
    """A `k` given explicitly must fit the run (the default is lowered to fit, with a note)."""
    t = cfg.data.m * cfg.data.n
    if "k" in options and options["k"] > t - 1:
        raise ValueError(
            f"embeddings.k={options['k']}: a position has only {t - 1} neighbours in a "
            f"{cfg.data.m}x{cfg.data.n} matrix"
        )


def fitted(k: int, perplexity: float, positions: int) -> tuple[int, float, list[str]]:
    """k and the t-SNE perplexity lowered to what `positions` points allow (k <= positions - 1,
    perplexity <= (positions - 1) / 3), with a note for each one lowered."""
    notes = []
    if k > positions - 1:
        notes.append(
            f"k lowered from {k} to {positions - 1}: a position has only {positions - 1} neighbours"
        )
        k = positions - 1
    cap = (positions - 1) / 3
    if perplexity > cap:
        notes.append(
            f"t-SNE perplexity lowered from {perplexity:g} to {cap:g} = (positions - 1) / 3"
        )
        perplexity = cap
    return k, perplexity, notes


def value_range(data: DataConfig) -> float:
    bound = max_abs_entry(data)
    return min(bound, 10.0) if np.isfinite(bound) else 3.0


def knn_purity(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    return progress.knn_purity(torch.as_tensor(x), torch.as_tensor(labels), k)


def token_table(model: MatrixBert, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    r = value_range(data)
    ids = torch.arange(
        value_to_id(torch.tensor([-r])).item(), value_to_id(torch.tensor([r])).item() + 1
    )
    return id_to_value(ids).numpy(), model.tok_embed.weight[
        ids.to(model.tok_embed.weight.device)
    ].detach().cpu().numpy()


def _step_numbers(
    model: MatrixBert, data: DataConfig, seed: int, k: int, perplexity: float
) -> tuple[dict, dict]:
    """One checkpoint's numbers and its drawing data."""
    # scikit-learn takes ~2 s to import: paid only when this analysis runs, not by every command
    # that discovers the analyses
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    t = data.m * data.n
    cols, rows_ = np.arange(t) % data.n, np.arange(t) // data.n
    values, tok = token_table(model, data)
    pos = model.pos_embed.weight[:t].detach().cpu().numpy()
    pca = PCA(n_components=2, random_state=seed).fit(tok)
    tok_pca = pca.transform(tok)
    norms = np.linalg.norm(tok, axis=1)
    neg, posv = norms[values < 0][::-1], norms[values > 0]
    m_ = min(len(neg), len(posv))
    tsne = TSNE(
        n_components=2, perplexity=perplexity, random_state=seed, init="pca", method="exact"
    ).fit_transform(pos)
    numbers = {
        "position_knn_purity_column": knn_purity(pos, cols, k),
        "position_knn_purity_row": knn_purity(pos, rows_, k),
        "token_norm_symmetry_corr": float(np.corrcoef(neg[:m_], posv[:m_])[0, 1])
        if m_ > 2
        else float("nan"),
        "token_pca_explained": pca.explained_variance_ratio_.tolist(),
        "token_pc_corr_with_value": [
            float(abs(np.corrcoef(tok_pca[:, i], values)[0, 1])) for i in range(2)
        ],
        "token_pc_corr_with_abs_value": [
            float(abs(np.corrcoef(tok_pca[:, i], np.abs(values))[0, 1])) for i in range(2)
        ],
    }
    return numbers, {"values": values, "norms": norms, "tok_pca": tok_pca, "tsne": tsne}


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 512,
    k: Annotated[int, at_least(1)] = 4,
    permutations: Annotated[int, at_least(1)] = 5,
    perplexity: Annotated[float, at_least(1)] = 10.0,
) -> Result:
    """`k` and `perplexity` above what the run's positions allow are lowered, with a note."""
    data = inputs.data
    t = data.m * data.n
    k, perplexity, notes = fitted(k, perplexity, t)
    cols, rows_ = np.arange(t) % data.n, np.arange(t) // data.n
    numbers: dict[str, Any] = {
        "seed": seed,
        "k": k,
        "perplexity": perplexity,
        "notes": notes,
        "chance": {"column": (data.m - 1) / (t - 1), "row": (data.n - 1) / (t - 1)},
        "steps": {},
        "across": {},
    }
    draw: dict[str, Any] = {"grid": (data.m, data.n), "steps": {}, "across_xy": {}}
    for step, model in inputs.models.items():
        numbers["steps"][step], draw["steps"][step] = _step_numbers(
            model, data, seed, k, perplexity
        )
    from sklearn.decomposition import PCA  # imported here for the reason in _step_numbers

    # one fixed projection (fitted on the last checkpoint) for the position embeddings across
    # training
    across = inputs.all_checkpoints()
    proj = PCA(n_components=2, random_state=seed).fit(
        across[max(across)].pos_embed.weight[:t].detach().cpu().numpy()
    )
    for step, model in across.items():
        pos = model.pos_embed.weight[:t].detach().cpu().numpy()
        numbers["across"][step] = {
            "knn_purity_column": knn_purity(pos, cols, k),
            "knn_purity_row": knn_purity(pos, rows_, k),
        }
        draw["across_xy"][step] = proj.transform(pos)
    numbers["permutation"] = permutation_test(inputs.post, data, seed, n, permutations)
    return Result(numbers, draw)


def permutation_test(
    post: tuple[int, MatrixBert], data: DataConfig, seed: int, n: int, permutations: int
) -> dict[str, Any]:
    """Losses of the final model with its position embeddings permuted (seeded permutations)."""
    step, model = post
    batch = seeded_batch(data, n, seed + 1)
    base = evaluate(model, batch)
    g = torch.Generator().manual_seed(seed)
    perms = []
    for _ in range(permutations):
        perm = torch.randperm(data.m * data.n, generator=g)
        perms.append(
            evaluate(model, batch, [(act_name("pos_embed"), lambda x, h, perm=perm: x[:, perm])])
        )
    return {
        "step": step,
        "original": base,
        "permuted": perms,
        "permuted_mean": {key: float(np.mean([p[key] for p in perms])) for key in base},
    }


def plot(result: Result, out: Path) -> list[Path]:
    d = result.figure_data
    m, n = d["grid"]
    paths = [_plot_step(step, e, m, n, out) for step, e in d["steps"].items()]
    steps = sorted(d["across_xy"])
    show = (
        steps
        if len(steps) <= 8
        else [steps[int(round(i * (len(steps) - 1) / 7))] for i in range(8)]
    )
    path = out / "positions_across_training.png"
    title = (
        "position embeddings in one PCA projection (fitted on the last checkpoint), "
        "coloured by column"
    )
    cols = min(len(show), 4)
    rows = -(-len(show) // cols)
    with figure(path, rows, cols, title=title, figsize=(2.5 * cols, 0.4 + 2.4 * rows), dpi=100) as (
        fig,
        axes,
    ):
        for i, ax in enumerate(axes.flat):
            if i >= len(show):
                ax.axis("off")
                continue
            xy = d["across_xy"][show[i]]
            ax.scatter(xy[:, 0], xy[:, 1], c=_colours(np.arange(m * n) % n), s=12)
            ax.set_title(f"step {show[i]}", fontsize=8)
            ax.set_xlabel("PC1", fontsize=7)
            ax.set_ylabel("PC2", fontsize=7)
            ax.tick_params(labelsize=6)
        _legend(axes.flat[min(len(show), cols) - 1], n, "column")
    return paths + [path]


def _colours(labels: np.ndarray) -> list[Any]:
    return [plt.cm.tab10(int(i) % 10) for i in labels]


def _legend(ax: Any, count: int, name: str) -> None:
    """A legend of the colours of labels 0..count-1 (`name` 0, 1, ...), beside `ax`."""
    handles = [Line2D([], [], ls="", marker="o", ms=5, color=c) for c in _colours(np.arange(count))]
    ax.legend(
        handles,
        [str(i) for i in range(count)],
        title=name,
        fontsize=6,
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0,
    )


def _plot_step(step: int, e: dict[str, Any], m: int, n: int, out: Path) -> Path:
    """Two by two: token-embedding norm against value, token PCA coloured by value, and the
    position embeddings' t-SNE coloured by column and by row (a colour legend, not a label per
    point)."""
    path = out / f"embeddings_step{step}.png"
    with figure(path, 2, 2, title=f"embeddings, step {step}", figsize=(9.0, 7.0), dpi=100) as (
        fig,
        axes,
    ):
        norm_ax, pca_ax = axes[0]
        norm_ax.plot(e["values"], e["norms"], lw=1)
        norm_ax.set_xlabel("token value")
        norm_ax.set_ylabel("L2 norm")
        norm_ax.set_title("token embedding norm", fontsize=9)
        sc = pca_ax.scatter(
            e["tok_pca"][:, 0], e["tok_pca"][:, 1], c=e["values"], cmap="coolwarm", s=6
        )
        fig.colorbar(sc, ax=pca_ax, label="token value")
        pca_ax.set_xlabel("PC1")
        pca_ax.set_ylabel("PC2")
        pca_ax.set_title("token embeddings, PCA", fontsize=9)
        for ax, labels, count, name in (
            (axes[1][0], np.arange(m * n) % n, n, "column"),
            (axes[1][1], np.arange(m * n) // n, m, "row"),
        ):
            ax.scatter(e["tsne"][:, 0], e["tsne"][:, 1], c=_colours(labels), s=30)
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
            ax.set_title(f"position embeddings, t-SNE, coloured by {name}", fontsize=9)
            _legend(ax, count, name)
    return path


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = [
        [
            s,
            e["position_knn_purity_column"],
            e["position_knn_purity_row"],
            e["token_norm_symmetry_corr"],
            e["token_pc_corr_with_value"][0],
            e["token_pc_corr_with_abs_value"][1],
        ]
        for s, e in r["steps"].items()
    ]
    p = r["permutation"]
    return [
        Text(
            f"k-NN purity of position embeddings (k = {r['k']}); chance: column "
            f"{r['chance']['column']:.3f}, row {r['chance']['row']:.3f}."
        ),
        Table(
            [
                "step",
                "purity by column",
                "purity by row",
                "norm symmetry corr(−v, v)",
                "|corr(PC1, value)|",
                "|corr(PC2, |value|)|",
            ],
            rows,
        ),
        Text(
            f"Permuting the position embeddings of step {p['step']} ({len(p['permuted'])} seeded "
            "permutations):"
        ),
        Table(
            ["", "L", "L_obs", "L_mask"],
            [
                ["original", *loss_cells(p["original"])],
                ["permuted (mean)", *loss_cells(p["permuted_mean"])],
            ],
        ),
    ]
