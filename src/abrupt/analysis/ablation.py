"""Attention ablation (Sec. 3 item 8): replace chosen heads' patterns and re-measure the task.

Modes: `mean` replaces a head's pattern by its mean over the whole batch in the intact model (an
input-independent pattern, what the authors' "uniform" ablation actually did), `uniform` spreads
it evenly over the keys the query may see (all of them in the BERT, itself and earlier ones in a
decoder), `zero` zeroes the head's output (its hook_z). The intact and ablated models are scored
by the task's evaluation (`Task.evaluate`), led by its headline metric (`Task.headline`): L_mask
of the completed matrices (the GPT variant's greedy completions), the output cross-entropy of a
sequence task (with its token and sequence accuracy). A layer x head table ablates each head
alone.

Every hook acts on each example and position alone, the batch mean being computed beforehand over
the whole batch: the numbers do not depend on how evaluation splits the batch into chunks
(models.layers.CHUNK), and the GPT variant's cached greedy decoding gives the same as the full
reruns. Where the task's evaluation is the objective of its teacher-forced pass
(`Task.evaluates_teacher_forced`: the BERT, a sequence task), the intact pass and the patterns
are read from the command's shared forward passes (analysis/cache.py), and an ablated pass starts
at the first ablated layer from the cached residual stream (`run_from`): the layers below it
would compute the intact values again. The numbers equal `ablate`'s, which reruns everything (a
test holds them bit for bit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Iterable, Sequence

import torch

from .. import hooks
from ..config import Config
from ..hooks import HookedModule, act_name
from ..losses import as_floats
from ..models import layers
from ..tasks.base import Task, TaskBatch
from .cache import predict_from, run_chunked
from .common import (
    Count,
    Inputs,
    Result,
    Seed,
    Table,
    Text,
    each,
    group_by_layer,
    headline,
    headline_numbers,
    needs_hidden,
    number,
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
NEEDS: frozenset[str] = frozenset()  # task capabilities (tasks/base.py): evaluation alone

MODES = ("mean", "uniform", "zero")


def check_modes(modes: Sequence[str]) -> None:
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"ablation modes {list(modes)}: use one or more of {', '.join(MODES)}")


@torch.no_grad()
def mean_patterns(model: HookedModule, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """{layer: (H, L, L)} each head's attention pattern averaged over the whole batch, on the
    sequences a matrix model reads when it predicts (`prediction_inputs`: L = T for the BERT,
    2T for the GPT variant's greedy completions); summed in float64 over chunks of
    models.layers.CHUNK matrices, so the mean is the same whatever the chunk size."""
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


def evaluation_means(
    task: Task, cfg: Config, model: HookedModule, batch: TaskBatch
) -> dict[int, torch.Tensor]:
    """`mean_patterns` over the passes `task.evaluate` makes: the teacher-forced pass where it is
    the evaluation, else the sequences the model's prediction reads."""
    if task.evaluates_teacher_forced(cfg):
        return _batch_means(run_chunked(task, model, batch, "patterns"))
    return mean_patterns(model, batch.tokens)


def ablate(
    task: Task,
    cfg: Config,
    model: HookedModule,
    batch: TaskBatch,
    heads: Sequence[tuple[int, int]],
    mode: str,
    means: dict[int, torch.Tensor] | None = None,
) -> dict[str, float]:
    """`task.evaluate` with `heads` ablated; mode `mean` computes the batch-mean patterns
    (`evaluation_means`) unless given."""
    if mode == "mean" and means is None:
        means = evaluation_means(task, cfg, model, batch)
    return task.evaluate(model, batch, ablation_hooks(heads, mode, model.causal, means))


def check(options: dict[str, Any], cfg: Config) -> None:
    parse_heads(options.get("heads", "all"), cfg.model.layers, cfg.model.heads)


def unsupported(cfg: Config) -> str | None:
    # L_mask, the matrices' headline, is measured on hidden entries
    return needs_hidden(cfg)


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 256,
    heads: str = "all",
    modes: Annotated[tuple[str, ...], each(one_of(*MODES))] = MODES,
) -> Result:
    """`heads` ('all' or 'L:H,...') are ablated together; the tables ablate each head alone and
    hold the task's headline metric (`per_head_<headline>`)."""
    task, cfg = inputs.task, inputs.cfg
    batch = inputs.batch(n, seed)
    numbers: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "heads": heads,
        "modes": list(modes),
        **headline_numbers(inputs),
        "steps": {},
    }
    for step, model in inputs.models.items():
        layers, nheads = len(model.blocks), model.cfg.heads
        chosen = parse_heads(heads, layers, nheads)
        if task.evaluates_teacher_forced(cfg):
            stream = inputs.activations(step, batch)
            intact = as_floats(task.objective(model, stream[act_name("out")].float().cpu(), batch))
            means = (
                _batch_means(inputs.activations(step, batch, "patterns"))
                if "mean" in modes
                else None
            )
            forward = task.inputs(model, batch)[1]

            def measure(hs, mode, model=model, stream=stream, means=means, forward=forward):
                return _ablate_from_stream(task, model, batch, stream, forward, hs, mode, means)

        else:
            intact = task.evaluate(model, batch)
            means = evaluation_means(task, cfg, model, batch) if "mean" in modes else None

            def measure(hs, mode, model=model, means=means):
                return ablate(task, cfg, model, batch, hs, mode, means)

        table = f"per_head_{task.headline}"
        entry: dict[str, Any] = {"none": intact, "chosen": {}, table: {}}
        for mode in modes:
            entry["chosen"][mode] = measure(chosen, mode)
            entry[table][mode] = [
                [measure([(l, h)], mode)[task.headline] for h in range(nheads)]
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
    task: Task,
    model: HookedModule,
    batch: TaskBatch,
    stream: dict[str, torch.Tensor],
    forward: dict[str, Any],
    heads: Sequence[tuple[int, int]],
    mode: str,
    means: dict[int, torch.Tensor] | None,
) -> dict[str, float]:
    """`ablate`, resumed at the first ablated layer from the cached "stream" pass and scored by
    the task's objective (`forward`: the pass's other inputs, `Task.inputs`)."""
    first = min(l for l, _ in heads)
    with model.hooks(ablation_hooks(heads, mode, model.causal, means)):
        out = predict_from(model, first, stream[act_name("resid_pre", first)], **forward)
    return as_floats(task.objective(model, out, batch))


def plot(result: Result, out: Path) -> list[Path]:
    metric, words = headline(result.numbers)
    tables = {}
    for step, entry in result.numbers["steps"].items():
        base = entry["none"][metric]
        for mode, table in entry[f"per_head_{metric}"].items():
            tables[f"step {step}, {mode}: {metric} / unablated"] = [
                [v / base for v in row] for row in table
            ]
    return [
        plot_head_tables(
            tables,
            out / "ablation_per_head.png",
            f"{words} with one head ablated, relative to the intact model",
            center=1.0,
        )
    ]


def render(r: dict[str, Any]) -> list[Table | Text]:
    metric, words = headline(r)
    rows = []
    others: list[str] = []
    for step, e in r["steps"].items():
        others = others or [k for k in e["none"] if k != metric]
        rows.append([step, "none", *(e["none"][k] for k in (metric, *others))])
        for mode, v in e["chosen"].items():
            rows.append([step, f"{mode} ({r['heads']})", *(v[k] for k in (metric, *others))])
    return [Table(["step", "ablation", words, *others], rows)]


def findings(r: dict[str, Any]) -> list[list[str]]:
    """The report's story rows ([question, this run, the literature, verdict]): what ablating the
    chosen heads costs at the last chosen checkpoint."""
    metric, words = headline(r)
    step = list(r["steps"])[-1]
    e = r["steps"][step]
    costs = ", ".join(f"{mode} {number(v[metric])}" for mode, v in e["chosen"].items())
    mean = e["chosen"].get("mean", {}).get(metric)
    hurts = mean is not None and mean > 2 * e["none"][metric]
    return [
        [
            f"what ablating attention costs (step {step}, heads {r['heads']})",
            f"{words} {number(e['none'][metric])} intact; ablated: {costs}",
            "input-independent (batch-mean) attention raises the loss after the drop (paper)",
            "agrees" if hurts else "differs" if mean is not None else "",
        ]
    ]
