"""Token and position embeddings (Fig. 7, 9, 10) and the position-permutation test.

Driven by the task's `token_labels` (the tokens its inputs use and the number each stands for)
and `position_labels` (labels of the positions the model reads):

- token embeddings: L2 norm against the token's number, and a 2-D PCA coloured by it, with
  |corr(PC, number)|; where the numbers have both signs (matrix values) also the norm's symmetry
  corr(norm(-v), norm(v)) and |corr(PC2, |number|)|; where the task computes in a modulus p
  (`token_modulus`: mws and prefix_sum 17, addition 10), whether the tokens lie on a circle in
  the order of their residues, the grokking literature's "clock" (`circle`);
- position embeddings: t-SNE (seeded) coloured by each label, and a number that needs no
  picture: k-nearest-neighbour purity by each label in the embedding space, beside its chance
  (the share of other positions with the same label);
- the same purities (and the circle's R) across checkpoints, the positions drawn in one fixed
  PCA projection (fitted on the last);
- permuting the position embeddings of the final model (seeded, several permutations): every
  metric of the task's `evaluate` before and after.

Matrices: the value tokens of the training range (the GPT variant: its own ids of them) and the
positions of the masked matrix (the GPT variant: its first m*n), labelled by column and row.
Sequences: the input tokens, the L - 1 positions read, labelled by segment (inputs, outputs) and
index within it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any, Iterator

import numpy as np
import torch
from matplotlib.lines import Line2D

from .. import progress, tasks
from ..config import Config
from ..hooks import HookedModule
from ..plots import figure, plt
from ..tasks.base import Task
from .common import Count, Inputs, Result, Seed, Table, Text, at_least

TITLE = "Embeddings (Fig. 7, 9, 10)"
PAPER = (
    "Token-embedding norm depends on |value| (symmetric about 0); the first two principal "
    "components separate sign and magnitude; position embeddings cluster by column after the "
    "drop, and "
    "permuting them destroys the model's accuracy (Fig. 7, 9, 10). For modular arithmetic the "
    "grokking literature finds the tokens on circles in residue order (Nanda et al. 2023, "
    "Progress measures for grokking)."
)
ORDER = 40
NEEDS = frozenset({"embeddings"})  # task capabilities (tasks/base.py)
# the circle holds where at least this share of the tokens' angular successors (in the PCA
# plane) are their successors in residue order, and R beats CIRCLE_SHUFFLES shuffled numbers'
CIRCLE_ORDER = 0.9
CIRCLE_SHUFFLES = 200
CIRCLE_QUANTILE = 0.99


def positions(cfg: Config) -> dict[str, np.ndarray]:
    """{label: (P,) int} of the positions the embeddings analysis reads (Task.position_labels)."""
    return tasks.get(cfg.task.name).position_labels(cfg)


def unsupported(cfg: Config) -> str | None:
    if len(next(iter(positions(cfg).values()))) < 4:
        return "position embeddings need at least 4 positions (t-SNE, neighbours)"
    return None


def check(options: dict[str, Any], cfg: Config) -> None:
    """A `k` given explicitly must fit the run (the default is lowered to fit, with a note)."""
    t = len(next(iter(positions(cfg).values())))
    if "k" in options and options["k"] > t - 1:
        raise ValueError(
            f"embeddings.k={options['k']}: a position has only {t - 1} neighbours among the {t} "
            "positions the model reads"
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


def knn_purity(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    return progress.knn_purity(torch.as_tensor(x), torch.as_tensor(labels), k)


def knn_chance(labels: np.ndarray) -> float:
    """k-NN purity of embeddings that ignore the labels: the share of a position's others with
    its label, sum_c c (c - 1) / (P (P - 1)) over the labels' counts c, as an exact quotient (a
    matrix's column: (m - 1) / (mn - 1))."""
    counts = np.unique(labels, return_counts=True)[1].astype(int).tolist()
    p = len(labels)
    return sum(c * (c - 1) for c in counts) / (p * (p - 1))


def circle(
    xy: np.ndarray, numbers: np.ndarray, modulus: int, seed: int
) -> dict[str, float | int | bool]:
    """Whether tokens whose PCA coordinates are `xy` (N, 2) lie on a circle in the order of their
    numbers' residues mod `modulus` (the grokking literature's modular "clock", at some frequency
    f coprime with p: token r at angle 2 pi f r / p, up to a rotation; f and p - f are its two
    orientations).

    r          mean resultant length |mean exp(i (angle - 2 pi f r / p))| at the best f: 1 when
               the angles are those of the residues exactly, about 1/sqrt(N) when unrelated
    r_chance   the CIRCLE_QUANTILE quantile of r over CIRCLE_SHUFFLES seeded shuffles of the
               numbers (each at its own best f)
    frequency  that best f
    order      the share of tokens whose next token by angle is the next by f * residue mod p
               (1: the circle is in residue order)
    holds      order >= CIRCLE_ORDER and r > r_chance
    """
    angle = np.arctan2(xy[:, 1], xy[:, 0])  # PCA coordinates are centred
    residue = np.mod(np.rint(numbers).astype(int), modulus)
    # frequencies coprime with p, so that f * residue orders the residues (f = 5 of p = 10 would
    # put them at two angles)
    freqs = np.array([f for f in range(1, modulus) if np.gcd(f, modulus) == 1])

    def best(r: np.ndarray) -> tuple[float, int]:
        phase = 2 * np.pi * np.outer(freqs, r) / modulus  # (frequencies, N)
        length = np.abs(np.exp(1j * (angle[None] - phase)).mean(1))
        return float(length.max()), int(freqs[length.argmax()])

    r, f = best(residue)
    rng = np.random.default_rng(seed)
    shuffled = [best(rng.permutation(residue))[0] for _ in range(CIRCLE_SHUFFLES)]
    chance = float(np.quantile(shuffled, CIRCLE_QUANTILE))
    order = float(np.mean(_successor(angle) == _successor((f * residue) % modulus)))
    return {
        "modulus": modulus,
        "frequency": f,
        "r": r,
        "r_chance": chance,
        "order": order,
        "holds": bool(order >= CIRCLE_ORDER and r > chance),
    }


def _successor(key: np.ndarray) -> np.ndarray:
    """(N,) the index of each item's cyclic successor when sorted by `key`."""
    ranked = np.argsort(key, kind="stable")
    out = np.empty(len(key), dtype=int)
    out[ranked] = np.roll(ranked, -1)
    return out


def _tables(
    model: HookedModule, task: Task, cfg: Config
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numbers (N,), token embeddings (N, d), position embeddings (P, d)) of `model`, as the
    task labels them."""
    ids, numbers = task.token_labels(cfg)
    weight = model.tok_embed.weight
    count = len(next(iter(task.position_labels(cfg).values())))
    tok = weight[ids.to(weight.device)].detach().cpu().numpy()
    return numbers, tok, model.pos_embed.weight[:count].detach().cpu().numpy()


def _step_numbers(
    model: HookedModule,
    task: Task,
    cfg: Config,
    labels: dict[str, np.ndarray],
    seed: int,
    k: int,
    perplexity: float,
) -> tuple[dict, dict]:
    """One checkpoint's numbers and its drawing data."""
    # scikit-learn takes ~2 s to import: paid only when this analysis runs, not by every command
    # that discovers the analyses
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    values, tok, pos = _tables(model, task, cfg)
    pca = PCA(n_components=2, random_state=seed).fit(tok)
    tok_pca = pca.transform(tok)
    norms = np.linalg.norm(tok, axis=1)
    tsne = TSNE(
        n_components=2, perplexity=perplexity, random_state=seed, init="pca", method="exact"
    ).fit_transform(pos)
    numbers: dict[str, Any] = {
        f"position_knn_purity_{name}": knn_purity(pos, lab, k) for name, lab in labels.items()
    }
    numbers["token_pca_explained"] = pca.explained_variance_ratio_.tolist()
    numbers["token_pc_corr_with_value"] = [
        float(abs(np.corrcoef(tok_pca[:, i], values)[0, 1])) for i in range(2)
    ]
    if (values < 0).any() and (values > 0).any():  # signed numbers: is the norm's |v| even?
        neg, posv = norms[values < 0][::-1], norms[values > 0]
        m_ = min(len(neg), len(posv))
        numbers["token_norm_symmetry_corr"] = (
            float(np.corrcoef(neg[:m_], posv[:m_])[0, 1]) if m_ > 2 else float("nan")
        )
        numbers["token_pc_corr_with_abs_value"] = [
            float(abs(np.corrcoef(tok_pca[:, i], np.abs(values))[0, 1])) for i in range(2)
        ]
    modulus = _modulus(task, cfg)
    if modulus:
        numbers["token_circle"] = circle(tok_pca, values, modulus, seed)
    return numbers, {"values": values, "norms": norms, "tok_pca": tok_pca, "tsne": tsne}


def _modulus(task: Task, cfg: Config) -> int | None:
    """The task's `token_modulus`, an optional part of its "embeddings" capability."""
    of = getattr(task, "token_modulus", None)
    return of(cfg) if of is not None else None


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 512,
    k: Annotated[int, at_least(1)] = 4,
    permutations: Annotated[int, at_least(1)] = 5,
    perplexity: Annotated[float, at_least(1)] = 10.0,
) -> Result:
    """`k` and `perplexity` above what the run's positions allow are lowered, with a note; `n`
    examples (seed + 1) for the permutation test."""
    task, cfg = inputs.task, inputs.cfg
    labels = task.position_labels(cfg)
    t = len(next(iter(labels.values())))
    k, perplexity, notes = fitted(k, perplexity, t)
    numbers: dict[str, Any] = {
        "seed": seed,
        "k": k,
        "perplexity": perplexity,
        "notes": notes,
        "chance": {name: knn_chance(lab) for name, lab in labels.items()},
        "steps": {},
        "across": {},
    }
    draw: dict[str, Any] = {"labels": labels, "steps": {}, "across_xy": {}}
    for step, model in inputs.models.items():
        numbers["steps"][step], draw["steps"][step] = _step_numbers(
            model, task, cfg, labels, seed, k, perplexity
        )
    from sklearn.decomposition import PCA  # imported here for the reason in _step_numbers

    # one fixed projection (fitted on the last checkpoint) for the position embeddings across
    # training
    across = inputs.all_checkpoints()
    proj = PCA(n_components=2, random_state=seed).fit(_tables(across[max(across)], task, cfg)[2])
    modulus = _modulus(task, cfg)
    for step, model in across.items():
        values, tok, pos = _tables(model, task, cfg)
        numbers["across"][step] = {
            f"knn_purity_{name}": knn_purity(pos, lab, k) for name, lab in labels.items()
        }
        if modulus:
            xy = PCA(n_components=2, random_state=seed).fit_transform(tok)
            numbers["across"][step]["token_circle"] = circle(xy, values, modulus, seed)
        draw["across_xy"][step] = proj.transform(pos)
    batch = inputs.batch(n, seed + 1)
    numbers["permutation"] = permutation_test(task, inputs.post, batch, seed, t, permutations)
    return Result(numbers, draw)


@contextlib.contextmanager
def permuted_positions(model: HookedModule, perm: torch.Tensor) -> Iterator[None]:
    """The model with the embeddings of its first len(perm) positions permuted (row i holds row
    perm[i]'s), restored on exit. Written into the table, not by a hook, so that a pass that
    reads the positions a few at a time (a decoder's KV-cached greedy completion) sees the same
    permutation as a whole-sequence pass."""
    weight = model.pos_embed.weight
    kept = weight.detach()[: len(perm)].clone()
    with torch.no_grad():
        weight[: len(perm)] = kept[perm.to(weight.device)]
    try:
        yield
    finally:
        with torch.no_grad():
            weight[: len(perm)] = kept


def permutation_test(
    task: Task,
    post: tuple[int, HookedModule],
    batch: Any,
    seed: int,
    count: int,
    permutations: int,
) -> dict[str, Any]:
    """The task's metrics (`evaluate`) of the final model on `batch`, and with the embeddings of
    its first `count` positions permuted (seeded permutations)."""
    step, model = post
    base = task.evaluate(model, batch)
    g = torch.Generator().manual_seed(seed)
    perms = []
    for _ in range(permutations):
        with permuted_positions(model, torch.randperm(count, generator=g)):
            perms.append(task.evaluate(model, batch))
    return {
        "step": step,
        "original": base,
        "permuted": perms,
        "permuted_mean": {key: float(np.mean([p[key] for p in perms])) for key in base},
    }


def plot(result: Result, out: Path) -> list[Path]:
    d = result.figure_data
    labels = d["labels"]
    paths = [_plot_step(step, e, labels, out) for step, e in d["steps"].items()]
    steps = sorted(d["across_xy"])
    show = (
        steps
        if len(steps) <= 8
        else [steps[int(round(i * (len(steps) - 1) / 7))] for i in range(8)]
    )
    name, first = next(iter(labels.items()))
    path = out / "positions_across_training.png"
    title = (
        "position embeddings in one PCA projection (fitted on the last checkpoint), "
        f"coloured by {name}"
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
            ax.scatter(xy[:, 0], xy[:, 1], c=_colours(first), s=12)
            ax.set_title(f"step {show[i]}", fontsize=8)
            ax.set_xlabel("PC1", fontsize=7)
            ax.set_ylabel("PC2", fontsize=7)
            ax.tick_params(labelsize=6)
        _legend(axes.flat[min(len(show), cols) - 1], first, name)
    return paths + [path]


def _colours(labels: np.ndarray) -> list[Any]:
    """A colour per label: tab10's for up to 10 labels, else viridis over their range (a
    sequence's index)."""
    top = int(labels.max())
    if top < 10:
        return [plt.cm.tab10(int(i)) for i in labels]
    return [plt.cm.viridis(int(i) / top) for i in labels]


def _legend(ax: Any, labels: np.ndarray, name: str) -> None:
    """A legend of the colours of `labels` (`name` 0, 1, ...; a few of them where many), beside
    `ax`."""
    values = np.unique(labels)
    if len(values) > 10:
        values = values[np.linspace(0, len(values) - 1, 5).round().astype(int)]
    handles = [Line2D([], [], ls="", marker="o", ms=5, color=c) for c in _colours(values)]
    ax.legend(
        handles,
        [str(i) for i in values],
        title=name,
        fontsize=6,
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0,
    )


def _plot_step(step: int, e: dict[str, Any], labels: dict[str, np.ndarray], out: Path) -> Path:
    """Token-embedding norm against the token's number, token PCA coloured by it (each token's
    number written beside it where there are few), and the position embeddings' t-SNE coloured
    by each label (a colour legend, not a label per point), two panels a row."""
    path = out / f"embeddings_step{step}.png"
    rows = 1 + -(-len(labels) // 2)
    title = f"embeddings, step {step}"
    with figure(path, rows, 2, title=title, figsize=(9.0, 3.5 * rows), dpi=100) as (fig, axes):
        norm_ax, pca_ax = axes[0]
        order = np.argsort(e["values"])
        norm_ax.plot(e["values"][order], e["norms"][order], lw=1, marker=".")
        norm_ax.set_xlabel("token's number")
        norm_ax.set_ylabel("L2 norm")
        norm_ax.set_title("token embedding norm", fontsize=9)
        xy = e["tok_pca"]
        sc = pca_ax.scatter(xy[:, 0], xy[:, 1], c=e["values"], cmap="coolwarm", s=6)
        if len(xy) <= 32:  # few tokens (a sequence task's): their order on a circle is readable
            for (x, y), v in zip(xy, e["values"]):
                pca_ax.annotate(
                    f"{v:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points"
                )
        fig.colorbar(sc, ax=pca_ax, label="token's number")
        pca_ax.set_xlabel("PC1")
        pca_ax.set_ylabel("PC2")
        pca_ax.set_title("token embeddings, PCA", fontsize=9)
        panels = list(axes[1:].flat)
        for ax, (name, lab) in zip(panels, labels.items()):
            ax.scatter(e["tsne"][:, 0], e["tsne"][:, 1], c=_colours(lab), s=30)
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
            ax.set_title(f"position embeddings, t-SNE, coloured by {name}", fontsize=9)
            _legend(ax, lab, name)
        for ax in panels[len(labels) :]:
            ax.axis("off")
    return path


def render(r: dict[str, Any]) -> list[Table | Text]:
    chance = r["chance"]
    steps = r["steps"]
    last = steps[max(steps, key=int)] if steps else {}
    columns = [(f"position_knn_purity_{name}", f"purity by {name}") for name in chance]
    columns.append(("token_norm_symmetry_corr", "norm symmetry corr(−v, v)"))
    columns = [c for c in columns if c[0] in last]
    rows = []
    for s, e in steps.items():
        row = [int(s), *[e[key] for key, _ in columns], e["token_pc_corr_with_value"][0]]
        if "token_pc_corr_with_abs_value" in e:
            row.append(e["token_pc_corr_with_abs_value"][1])
        if "token_circle" in e:
            c = e["token_circle"]
            row += [c["r"], c["order"], "yes" if c["holds"] else "no"]
        rows.append(row)
    header = ["step", *[h for _, h in columns], "|corr(PC1, number)|"]
    if "token_pc_corr_with_abs_value" in last:
        header.append("|corr(PC2, |number|)|")
    out: list[Table | Text] = [
        Text(
            f"k-NN purity of position embeddings (k = {r['k']}); chance: "
            + ", ".join(f"{name} {c:.3f}" for name, c in chance.items())
            + "."
        )
    ]
    if "token_circle" in last:
        c = last["token_circle"]
        header += ["circle R", "circle order", "on a circle"]
        out.append(
            Text(
                f"Token embeddings on a circle in residue order mod {c['modulus']} (first two "
                f"principal components): R is the agreement of their angles with f · residue "
                f"(best frequency f = {c['frequency']} at the last step; 1 exact, "
                f"{c['r_chance']:.2f} the {CIRCLE_QUANTILE:.0%} level of shuffled numbers); "
                "order, the share of tokens whose angular neighbour is their neighbour in "
                "f · residue; "
                f"it holds where order >= {CIRCLE_ORDER:g} and R beats the shuffled level: "
                f"{'it holds' if c['holds'] else 'it does not hold'} at the last step."
            )
        )
    out.append(Table(header, rows))
    p = r["permutation"]
    metrics = list(p["original"])
    out += [
        Text(
            f"Permuting the position embeddings of step {p['step']} ({len(p['permuted'])} seeded "
            "permutations): the task's evaluation metrics."
        ),
        Table(
            ["", *metrics],
            [
                ["original", *[p["original"][m] for m in metrics]],
                ["permuted (mean)", *[p["permuted_mean"][m] for m in metrics]],
            ],
        ),
    ]
    return out
