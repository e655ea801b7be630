"""Attention ablation (Sec. 3 item 8): replace chosen heads' patterns and re-measure the losses.

Modes: `mean` replaces a head's pattern by its mean over the whole batch in the intact model (an
input-independent pattern, what the authors' "uniform" ablation actually did), `uniform` spreads
it evenly over the keys the query may see (all of them in the BERT, itself and earlier ones in the
GPT variant), `zero` zeroes the head's output (its hook_z). A layer x head table ablates each head
alone.

Every hook acts on each matrix and position alone, the batch mean being computed beforehand over
the whole batch: the numbers do not depend on how prediction splits the batch into chunks
(models.layers.CHUNK), and the GPT variant's cached greedy decoding gives the same as the full
reruns. On the BERT the intact pass and the patterns are read from the command's shared forward
passes (analysis/cache.py), and an ablated pass starts at the first ablated layer from the cached
residual stream (`MatrixBert.run_from`): the layers below it would compute the intact values
again. The numbers equal `ablate`'s, which reruns everything (a test holds them bit for bit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Iterable, Sequence

import torch

from .. import hooks
from ..config import Config
from ..data import Batch
from ..hooks import act_name
from ..losses import as_floats, evaluate, losses
from ..models import layers
from ..models.bert import MatrixBert
from .cache import predict_from
from .common import (
    Count,
    Inputs,
    Result,
    Seed,
    Table,
    Text,
    each,
    group_by_layer,
    loss_cells,
    needs_hidden,
    one_of,
    parse_heads,
    plot_head_tables,
)

TITLE = "Attention ablation"
PAPER = (
    "Replacing attention patterns by input-independent (batch-mean) or uniform ones raises the "
    "loss after the drop: the model needs input-dependent attention."
)
ORDER = 60
NEEDS = frozenset({"regions", "matrices"})  # task capabilities (tasks/base.py)

MODES = ("mean", "uniform", "zero")


def check_modes(modes: Sequence[str]) -> None:
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"ablation modes {list(modes)}: use one or more of {', '.join(MODES)}")


@torch.no_grad()
def mean_patterns(model: MatrixBert, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """{layer: (H, L, L)} each head's attention pattern averaged over the whole batch, on the
    sequences the intact model reads when it predicts (`prediction_inputs`: L = T for the BERT,
    2T for the GPT variant); summed in float64 over chunks of models.layers.CHUNK matrices, so the
    mean
    is the same whatever the chunk size."""
    names = [act_name("pattern", l) for l in range(len(model.blocks))]
    with hooks.mode(model):
        chunks = (
            model.run_with_cache(
                model.prediction_inputs(tokens[i : i + layers.CHUNK]), names=names
            )[1]
            for i in range(0, len(tokens), layers.CHUNK)
        )
        return _chunk_means(chunks, len(names), len(tokens))


def _chunk_means(
    chunks: Iterable[dict[str, torch.Tensor]], n_layers: int, count: int
) -> dict[int, torch.Tensor]:
    """{layer: (H, L, L)} the mean over `count` matrices of the patterns of each chunk (one dict
    of hook_pattern activations per CHUNK matrices), summed chunk by chunk in float64."""
    total: dict[int, torch.Tensor] = {}
    for cache in chunks:
        for l in range(n_layers):
            part = cache[act_name("pattern", l)].double().sum(dim=0)
            total[l] = part if l not in total else total[l] + part
    return {l: (s / count).float() for l, s in total.items()}


def ablation_hooks(
    heads: Sequence[tuple[int, int]],
    mode: str,
    causal: bool = False,
    means: dict[int, torch.Tensor] | None = None,
):
    """Hooks ablating `heads` by `mode`; `causal`: the model's queries see only earlier keys;
    `means`: the batch-mean patterns (`mean_patterns`) that mode `mean` writes. A hook's pattern
    is (B, H, Tq, Tk) with its queries the last Tq of Tk positions (fewer under a KV cache)."""
    check_modes([mode])
    if mode == "mean" and means is None:
        raise ValueError(
            "ablation mode 'mean' needs the batch-mean patterns (ablation.mean_patterns)"
        )
    hooks = []
    for layer, hs in group_by_layer(heads).items():
        if mode == "zero":

            def fn(z, point, hs=hs):
                z[:, :, hs] = 0  # the hook holds its own copy (hooks.HookPoint)

            hooks.append((act_name("z", layer), fn))
        else:

            def fn(p, point, hs=hs, layer=layer):
                tq, tk = p.shape[-2:]
                if mode == "mean":
                    p[:, hs] = means[layer][hs, tk - tq : tk, :tk].to(p)
                else:
                    seen = torch.ones(tq, tk, dtype=p.dtype, device=p.device)
                    seen = seen.tril(tk - tq) if causal else seen
                    p[:, hs] = seen / seen.sum(-1, keepdim=True)

            hooks.append((act_name("pattern", layer), fn))
    return hooks


def ablate(
    model: MatrixBert,
    batch: Batch,
    heads: Sequence[tuple[int, int]],
    mode: str,
    means: dict[int, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Losses with `heads` ablated; mode `mean` computes the batch-mean patterns unless given."""
    if mode == "mean" and means is None:
        means = mean_patterns(model, batch.tokens)
    return evaluate(model, batch, ablation_hooks(heads, mode, model.causal, means))


def check(options: dict[str, Any], cfg: Config) -> None:
    parse_heads(options.get("heads", "all"), cfg.model.layers, cfg.model.heads)


def unsupported(cfg: Config) -> str | None:
    return needs_hidden(cfg)


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 256,
    heads: str = "all",
    modes: Annotated[tuple[str, ...], each(one_of(*MODES))] = MODES,
) -> Result:
    """`heads` ('all' or 'L:H,...') are ablated together; the tables ablate each head alone."""
    batch = inputs.batch(n, seed)
    numbers: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "heads": heads,
        "modes": list(modes),
        "steps": {},
    }
    for step, model in inputs.models.items():
        layers, nheads = len(model.blocks), model.cfg.heads
        chosen = parse_heads(heads, layers, nheads)
        if isinstance(model, MatrixBert):
            stream = inputs.activations(step, batch)
            intact = as_floats(losses(stream[act_name("out")].float().cpu(), batch))
            means = (
                _batch_means(inputs.activations(step, batch, "patterns"))
                if "mean" in modes
                else None
            )

            def measure(hs, mode, model=model, stream=stream, means=means):
                return _ablate_from_stream(model, batch, stream, hs, mode, means)

        else:
            intact = evaluate(model, batch)
            means = mean_patterns(model, batch.tokens) if "mean" in modes else None

            def measure(hs, mode, model=model, means=means):
                return ablate(model, batch, hs, mode, means)

        entry: dict[str, Any] = {"none": intact, "chosen": {}, "per_head_loss_mask": {}}
        for mode in modes:
            entry["chosen"][mode] = measure(chosen, mode)
            entry["per_head_loss_mask"][mode] = [
                [measure([(l, h)], mode)["loss_mask"] for h in range(nheads)]
                for l in range(layers)
            ]
        numbers["steps"][step] = entry
    return Result(numbers)


def _batch_means(patterns: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """`mean_patterns` from a cached "patterns" pass, cut into the chunks it was run in."""
    count = len(next(iter(patterns.values())))
    chunks = (
        {name: p[i : i + layers.CHUNK] for name, p in patterns.items()}
        for i in range(0, count, layers.CHUNK)
    )
    return _chunk_means(chunks, len(patterns), count)


def _ablate_from_stream(
    model: MatrixBert,
    batch: Batch,
    stream: dict[str, torch.Tensor],
    heads: Sequence[tuple[int, int]],
    mode: str,
    means: dict[int, torch.Tensor] | None,
) -> dict[str, float]:
    """`ablate`, resumed at the first ablated layer from the cached "stream" pass."""
    first = min(l for l, _ in heads)
    with model.hooks(ablation_hooks(heads, mode, model.causal, means)):
        pred = predict_from(model, first, stream[act_name("resid_pre", first)], batch.pad)
    return as_floats(losses(pred, batch))


def plot(result: Result, out: Path) -> list[Path]:
    tables = {}
    for step, entry in result.numbers["steps"].items():
        for mode, table in entry["per_head_loss_mask"].items():
            base = entry["none"]["loss_mask"]
            tables[f"step {step}, {mode}: L_mask / unablated"] = [
                [v / base for v in row] for row in table
            ]
    return [
        plot_head_tables(
            tables,
            out / "ablation_per_head.png",
            "L_mask with one head ablated, relative to the intact model",
            center=1.0,
        )
    ]


def render(r: dict[str, Any]) -> list[Table | Text]:
    rows = []
    for step, e in r["steps"].items():
        rows.append([step, "none", *loss_cells(e["none"])])
        for mode, v in e["chosen"].items():
            rows.append([step, f"{mode} ({r['heads']})", *loss_cells(v)])
    return [Table(["step", "ablation", "L", "L_obs", "L_mask"], rows)]
