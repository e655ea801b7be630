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
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from ..config import DataConfig, max_abs_entry  # noqa: E402
from ..data import id_to_value, value_to_id  # noqa: E402
from ..model import MatrixBert  # noqa: E402
from .common import evaluate_with_hooks, seeded  # noqa: E402


def value_range(data: DataConfig) -> float:
    bound = max_abs_entry(data)
    return min(bound, 10.0) if np.isfinite(bound) else 3.0


def knn_purity(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of each point's k nearest neighbours (Euclidean, itself excluded) sharing its label."""
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return float((labels[nn] == labels[:, None]).mean())


def token_table(model: MatrixBert, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    r = value_range(data)
    ids = torch.arange(value_to_id(torch.tensor([-r])).item(), value_to_id(torch.tensor([r])).item() + 1)
    return id_to_value(ids).numpy(), model.tok_embed.weight[ids].detach().numpy()


def run(
    models: dict[int, MatrixBert],
    data: DataConfig,
    seed: int = 0,
    n: int = 512,
    k: int = 4,
    permutations: int = 5,
    perplexity: float = 10.0,
    across: dict[int, MatrixBert] | None = None,
) -> dict[str, Any]:
    steps = sorted(models)
    final_step = steps[-1]
    t = data.m * data.n
    cols = np.arange(t) % data.n
    rows_ = np.arange(t) // data.n
    result: dict[str, Any] = {"seed": seed, "k": k, "chance": {"column": (data.m - 1) / (t - 1), "row": (data.n - 1) / (t - 1)},
                              "steps": {}, "_draw": {}}
    for step in steps:
        model = models[step]
        values, tok = token_table(model, data)
        pos = model.pos_embed.weight[:t].detach().numpy()
        pca = PCA(n_components=2, random_state=seed).fit(tok)
        norms = np.linalg.norm(tok, axis=1)
        neg, posv = norms[values < 0][::-1], norms[values > 0]
        m_ = min(len(neg), len(posv))
        tsne = TSNE(n_components=2, perplexity=min(perplexity, (t - 1) / 3), random_state=seed, init="pca", method="exact").fit_transform(pos)
        result["steps"][step] = {
            "position_knn_purity_column": knn_purity(pos, cols, k),
            "position_knn_purity_row": knn_purity(pos, rows_, k),
            "token_norm_symmetry_corr": float(np.corrcoef(neg[:m_], posv[:m_])[0, 1]) if m_ > 2 else float("nan"),
            "token_pca_explained": pca.explained_variance_ratio_.tolist(),
            "token_pc_corr_with_value": [float(abs(np.corrcoef(pca.transform(tok)[:, i], values)[0, 1])) for i in range(2)],
            "token_pc_corr_with_abs_value": [float(abs(np.corrcoef(pca.transform(tok)[:, i], np.abs(values))[0, 1])) for i in range(2)],
        }
        result["_draw"][step] = {"values": values, "norms": norms, "tok_pca": pca.transform(tok), "tsne": tsne}
    # one fixed projection (fitted on the last checkpoint) for the position embeddings across training
    across = across or models
    last = across[max(across)].pos_embed.weight[:t].detach().numpy()
    proj = PCA(n_components=2, random_state=seed).fit(last)
    result["across"] = {}
    result["_across_xy"] = {}
    for step in sorted(across):
        pos = across[step].pos_embed.weight[:t].detach().numpy()
        result["across"][step] = {"knn_purity_column": knn_purity(pos, cols, k), "knn_purity_row": knn_purity(pos, rows_, k)}
        result["_across_xy"][step] = proj.transform(pos)
    # permutation test on the final model
    model = models[final_step]
    batch = seeded(data, n, seed + 1)
    base = evaluate_with_hooks(model, batch)
    g = torch.Generator().manual_seed(seed)
    perms = []
    for _ in range(permutations):
        perm = torch.randperm(t, generator=g)
        hook = ("hook_pos_embed", lambda x, h, perm=perm: x[:, perm])
        perms.append(evaluate_with_hooks(model, batch, [hook]))
    result["permutation"] = {"step": final_step, "original": base, "permuted": perms,
                             "permuted_mean": {key: float(np.mean([p[key] for p in perms])) for key in base}}
    result["_grid"] = (data.m, data.n)
    return result


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    m, n = result["_grid"]
    for step, d in result["_draw"].items():
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=100)
        axes[0].plot(d["values"], d["norms"], lw=1)
        axes[0].set_xlabel("token value")
        axes[0].set_title("token embedding L2 norm")
        sc = axes[1].scatter(d["tok_pca"][:, 0], d["tok_pca"][:, 1], c=d["values"], cmap="coolwarm", s=6)
        fig.colorbar(sc, ax=axes[1], label="value")
        axes[1].set_title("token embeddings, PCA")
        for ax, labels, name in ((axes[2], np.arange(m * n) % n, "column"), (axes[3], np.arange(m * n) // n, "row")):
            ax.scatter(d["tsne"][:, 0], d["tsne"][:, 1], c=labels, cmap="tab10", s=30)
            for i, (x, y) in enumerate(d["tsne"]):
                ax.annotate(str(labels[i]), (x, y), fontsize=6)
            ax.set_title(f"position embeddings, t-SNE, by {name}")
        fig.suptitle(f"step {step}", fontsize=9)
        fig.tight_layout()
        path = out / f"embeddings_step{step}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    steps = sorted(result["_across_xy"])
    show = steps if len(steps) <= 8 else [steps[int(round(i * (len(steps) - 1) / 7))] for i in range(8)]
    fig, axes = plt.subplots(1, len(show), figsize=(2.6 * len(show), 2.8), dpi=100, squeeze=False)
    for ax, step in zip(axes[0], show):
        xy = result["_across_xy"][step]
        ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(m * n) % n, cmap="tab10", s=12)
        ax.set_title(f"step {step}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("position embeddings in one PCA projection (fitted on the last checkpoint), coloured by column", fontsize=9)
    fig.tight_layout()
    path = out / "positions_across_training.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    return paths
