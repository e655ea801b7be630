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
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from ..config import Config, DataConfig, max_abs_entry
from ..data import id_to_value, seeded_batch, value_to_id
from ..hooks import act_name
from ..losses import evaluate
from ..model import MatrixBert
from .. import progress
from ..plots import figure
from .common import bert_only, Count, Inputs, Result, Seed, Table, Text, at_least, loss_cells

TITLE = "Embeddings (Fig. 7, 9, 10)"
PAPER = ("Token-embedding norm depends on |value| (symmetric about 0); the first two principal "
         "components separate sign and magnitude; position embeddings cluster by column after the drop, and "
         "permuting them destroys the model's accuracy (Fig. 7, 9, 10).")
ORDER = 40


def unsupported(cfg: Config) -> str | None:
    if cfg.data.m * cfg.data.n < 4:
        return "position embeddings need at least 4 positions (t-SNE, neighbours)"
    return bert_only(cfg)


def check(options: dict[str, Any], cfg: Config) -> None:
    """A `k` given explicitly must fit the run (the default is lowered to fit, with a note)."""
    t = cfg.data.m * cfg.data.n
    if "k" in options and options["k"] > t - 1:
        raise ValueError(f"embeddings.k={options['k']}: a position has only {t - 1} neighbours in a {cfg.data.m}x{cfg.data.n} matrix")


def fitted(k: int, perplexity: float, positions: int) -> tuple[int, float, list[str]]:
    """k and the t-SNE perplexity lowered to what `positions` points allow (k <= positions - 1,
    perplexity <= (positions - 1) / 3), with a note for each one lowered."""
    notes = []
    if k > positions - 1:
        notes.append(f"k lowered from {k} to {positions - 1}: a position has only {positions - 1} neighbours")
        k = positions - 1
    cap = (positions - 1) / 3
    if perplexity > cap:
        notes.append(f"t-SNE perplexity lowered from {perplexity:g} to {cap:g} = (positions - 1) / 3")
        perplexity = cap
    return k, perplexity, notes


def value_range(data: DataConfig) -> float:
    bound = max_abs_entry(data)
    return min(bound, 10.0) if np.isfinite(bound) else 3.0


def knn_purity(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    return progress.knn_purity(torch.as_tensor(x), torch.as_tensor(labels), k)


def token_table(model: MatrixBert, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    r = value_range(data)
    ids = torch.arange(value_to_id(torch.tensor([-r])).item(), value_to_id(torch.tensor([r])).item() + 1)
    return id_to_value(ids).numpy(), model.tok_embed.weight[ids.to(model.tok_embed.weight.device)].detach().cpu().numpy()


def _step_numbers(model: MatrixBert, data: DataConfig, seed: int, k: int, perplexity: float) -> tuple[dict, dict]:
    """One checkpoint's numbers and its drawing data."""
    t = data.m * data.n
    cols, rows_ = np.arange(t) % data.n, np.arange(t) // data.n
    values, tok = token_table(model, data)
    pos = model.pos_embed.weight[:t].detach().cpu().numpy()
    pca = PCA(n_components=2, random_state=seed).fit(tok)
    tok_pca = pca.transform(tok)
    norms = np.linalg.norm(tok, axis=1)
    neg, posv = norms[values < 0][::-1], norms[values > 0]
    m_ = min(len(neg), len(posv))
    tsne = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca", method="exact").fit_transform(pos)
    numbers = {
        "position_knn_purity_column": knn_purity(pos, cols, k),
        "position_knn_purity_row": knn_purity(pos, rows_, k),
        "token_norm_symmetry_corr": float(np.corrcoef(neg[:m_], posv[:m_])[0, 1]) if m_ > 2 else float("nan"),
        "token_pca_explained": pca.explained_variance_ratio_.tolist(),
        "token_pc_corr_with_value": [float(abs(np.corrcoef(tok_pca[:, i], values)[0, 1])) for i in range(2)],
        "token_pc_corr_with_abs_value": [float(abs(np.corrcoef(tok_pca[:, i], np.abs(values))[0, 1])) for i in range(2)],
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
    numbers: dict[str, Any] = {"seed": seed, "k": k, "perplexity": perplexity, "notes": notes,
                               "chance": {"column": (data.m - 1) / (t - 1), "row": (data.n - 1) / (t - 1)}, "steps": {}, "across": {}}
    draw: dict[str, Any] = {"grid": (data.m, data.n), "steps": {}, "across_xy": {}}
    for step, model in inputs.models.items():
        numbers["steps"][step], draw["steps"][step] = _step_numbers(model, data, seed, k, perplexity)
    # one fixed projection (fitted on the last checkpoint) for the position embeddings across training
    across = inputs.all_checkpoints()
    proj = PCA(n_components=2, random_state=seed).fit(across[max(across)].pos_embed.weight[:t].detach().cpu().numpy())
    for step, model in across.items():
        pos = model.pos_embed.weight[:t].detach().cpu().numpy()
        numbers["across"][step] = {"knn_purity_column": knn_purity(pos, cols, k), "knn_purity_row": knn_purity(pos, rows_, k)}
        draw["across_xy"][step] = proj.transform(pos)
    numbers["permutation"] = permutation_test(inputs.post, data, seed, n, permutations)
    return Result(numbers, draw)


def permutation_test(post: tuple[int, MatrixBert], data: DataConfig, seed: int, n: int, permutations: int) -> dict[str, Any]:
    """Losses of the final model with its position embeddings permuted (seeded permutations)."""
    step, model = post
    batch = seeded_batch(data, n, seed + 1)
    base = evaluate(model, batch)
    g = torch.Generator().manual_seed(seed)
    perms = []
    for _ in range(permutations):
        perm = torch.randperm(data.m * data.n, generator=g)
        perms.append(evaluate(model, batch, [(act_name("pos_embed"), lambda x, h, perm=perm: x[:, perm])]))
    return {"step": step, "original": base, "permuted": perms,
            "permuted_mean": {key: float(np.mean([p[key] for p in perms])) for key in base}}


def plot(result: Result, out: Path) -> list[Path]:
    d = result.figure_data
    m, n = d["grid"]
    paths = [_plot_step(step, e, m, n, out) for step, e in d["steps"].items()]
    steps = sorted(d["across_xy"])
    show = steps if len(steps) <= 8 else [steps[int(round(i * (len(steps) - 1) / 7))] for i in range(8)]
    path = out / "positions_across_training.png"
    title = "position embeddings in one PCA projection (fitted on the last checkpoint), coloured by column"
    with figure(path, 1, len(show), title=title, figsize=(2.6 * len(show), 2.8), dpi=100) as (fig, axes):
        for ax, step in zip(axes[0], show):
            xy = d["across_xy"][step]
            ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(m * n) % n, cmap="tab10", s=12)
            ax.set_title(f"step {step}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return paths + [path]


def _plot_step(step: int, e: dict[str, Any], m: int, n: int, out: Path) -> Path:
    path = out / f"embeddings_step{step}.png"
    with figure(path, 1, 4, title=f"step {step}", figsize=(16, 3.6), dpi=100) as (fig, axes):
        axes = axes[0]
        axes[0].plot(e["values"], e["norms"], lw=1)
        axes[0].set_xlabel("token value")
        axes[0].set_title("token embedding L2 norm")
        sc = axes[1].scatter(e["tok_pca"][:, 0], e["tok_pca"][:, 1], c=e["values"], cmap="coolwarm", s=6)
        fig.colorbar(sc, ax=axes[1], label="value")
        axes[1].set_title("token embeddings, PCA")
        for ax, labels, name in ((axes[2], np.arange(m * n) % n, "column"), (axes[3], np.arange(m * n) // n, "row")):
            ax.scatter(e["tsne"][:, 0], e["tsne"][:, 1], c=labels, cmap="tab10", s=30)
            for i, (x, y) in enumerate(e["tsne"]):
                ax.annotate(str(labels[i]), (x, y), fontsize=6)
            ax.set_title(f"position embeddings, t-SNE, by {name}")
    return path


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = [[s, e["position_knn_purity_column"], e["position_knn_purity_row"], e["token_norm_symmetry_corr"],
             e["token_pc_corr_with_value"][0], e["token_pc_corr_with_abs_value"][1]] for s, e in r["steps"].items()]
    p = r["permutation"]
    return [
        Text(f"k-NN purity of position embeddings (k = {r['k']}); chance: column {r['chance']['column']:.3f}, row {r['chance']['row']:.3f}."),
        Table(["step", "purity by column", "purity by row", "norm symmetry corr(−v, v)", "|corr(PC1, value)|", "|corr(PC2, |value|)|"], rows),
        Text(f"Permuting the position embeddings of step {p['step']} ({len(p['permuted'])} seeded permutations):"),
        Table(["", "L", "L_obs", "L_mask"], [["original", *loss_cells(p["original"])], ["permuted (mean)", *loss_cells(p["permuted_mean"])]]),
    ]
