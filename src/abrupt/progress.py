"""Progress measures: cheap numbers, logged during training, that may move before the loss does.

    prog_row_mass     the largest mean attention mass any head puts on the query's own row
    prog_col_mass     the same for the query's own column (chance: (n-1)/(mn), (m-1)/(mn))
    prog_collapse     representation collapse: mean pairwise cosine between last-layer hidden
                      states at different positions of one matrix (1: every position alike)
    prog_pos_purity   k-NN purity (k = 4) of the position embeddings by column (chance (m-1)/(mn-1))
    grad_norm_<part>  the gradient norm of each part of the model (groups.PARTS)

Also the attention-mass helpers the attention analysis uses, so that training never imports
from the analysis package. The sequence tasks' measures (repetition, collapse over output
positions, attention progress) are in tasks/sequence.py.
"""

from __future__ import annotations

import torch

from .hooks import act_name, mode

PROGRESS_KEYS = ("prog_row_mass", "prog_col_mass", "prog_collapse", "prog_pos_purity")
# figure legends (loss.png, the progress analysis), the sequence tasks' measures included
LABELS = {
    "prog_row_mass": "max row mass of a head",
    "prog_col_mass": "max column mass of a head",
    "prog_collapse": "representation collapse (mean cosine)",
    "prog_pos_purity": "position k-NN purity by column",
    "prog_repetition": "repetition (equal consecutive predictions)",
    "prog_attn_l0": "attention progress, layer 0",
    "prog_attn_l1": "attention progress, layer 1",
}


def relation_masks(m: int, n: int) -> dict[str, torch.Tensor]:
    """(T, T) boolean: key in the query's row / column (query itself excluded), or the query."""
    idx = torch.arange(m * n)
    row, col = idx // n, idx % n
    same = idx[:, None] == idx[None, :]
    return {
        "row": (row[:, None] == row[None, :]) & ~same,
        "column": (col[:, None] == col[None, :]) & ~same,
        "self": same,
    }


def head_masses(
    pats: torch.Tensor, hidden: torch.Tensor, m: int, n: int
) -> dict[str, torch.Tensor]:
    """Mean attention mass per (layer, head) on own row / column / self / observed keys, from
    patterns (L, B, H, T, T). Averaged over every query and, separately (suffix `_hidden`), over
    hidden queries only."""
    rel = {k: v.to(pats.device) for k, v in relation_masks(m, n).items()}
    hidden = hidden.to(pats.device)
    out: dict[str, torch.Tensor] = {}
    observed_keys = (~hidden).float()[None, :, None, None, :]  # (1, B, 1, 1, Tk)
    per_query = {name: (pats * r.float()).sum(-1) for name, r in rel.items()}  # (L, B, H, Tq)
    per_query["observed"] = (pats * observed_keys).sum(-1)
    q_hidden = hidden.float()[None, :, None, :]  # (1, B, 1, Tq)
    for name, v in per_query.items():
        out[name] = v.mean(dim=(1, 3)).cpu()
        out[f"{name}_hidden"] = (
            (v * q_hidden).sum(dim=(1, 3)) / q_hidden.sum(dim=(1, 3)).clamp_min(1)
        ).cpu()
    return out


def knn_purity(x: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of each point's k nearest neighbours (Euclidean, itself excluded) sharing its
    label."""
    d = torch.cdist(x.double(), x.double())
    d.fill_diagonal_(float("inf"))
    nn = d.topk(k, largest=False).indices
    return (labels[nn] == labels[:, None]).double().mean().item()


def collapse(states: torch.Tensor) -> float:
    """Mean pairwise cosine between positions' hidden states `states` (B, T, d), the diagonal
    excluded."""
    h = torch.nn.functional.normalize(states.double(), dim=-1)
    cos = h @ h.transpose(1, 2)  # (B, T, T)
    t = cos.shape[1]
    return ((cos.sum(dim=(1, 2)) - t) / (t * (t - 1))).mean().item() if t > 1 else 1.0


@torch.no_grad()
def measures(
    model,
    tokens: torch.Tensor,
    hidden: torch.Tensor,
    m: int,
    n: int,
    pad: torch.Tensor | None = None,
) -> dict[str, float]:
    """The progress measures of `model` on a batch (tokens and hidden-mask, (B, T); padding of a
    size mixture is attended by no query)."""
    layers = len(model.blocks)
    names = [act_name("pattern", l) for l in range(layers)] + [act_name("resid_post", layers - 1)]
    with mode(model):
        _, cache = model.run_with_cache(
            tokens, names=names, **({} if pad is None else {"pad": pad})
        )
    pats = torch.stack([cache[name] for name in names[:-1]])
    masses = head_masses(pats, hidden, m, n)
    t = m * n
    out = {
        "prog_row_mass": masses["row"].max().item() if n > 1 else float("nan"),
        "prog_col_mass": masses["column"].max().item() if m > 1 else float("nan"),
        "prog_collapse": collapse(cache[names[-1]]),
        "prog_pos_purity": knn_purity(
            model.pos_embed.weight[:t].detach().cpu(), torch.arange(t) % n, min(4, t - 1)
        )
        if t > 4
        else float("nan"),
    }
    return out
