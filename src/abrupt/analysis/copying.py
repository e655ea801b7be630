"""Copying and repetition on the plateau: does the model copy or repeat its input?

On matrices (capability `substitute`; the paper's Table 1): a value token is put for MASK at
hidden positions. A model that copies its input predicts the substituted value at hidden entries
(MSE to the substitute near 0) while still fitting observed entries; a model that completes the
matrix ignores the substitute. Run on low-rank inputs and on random full-rank inputs with the
same entry variance.

On a task with `outputs` (the sequence tasks; the follow-up's repetition bias, Gopalani & Hu
2025): at each chosen checkpoint, the model's argmax outputs (teacher-forced) on the analyses'
seeded batch, as shares of output tokens: the repeat fraction (an output equal to the one
before it) and the copy fraction (an output equal to the input token at the same index), each
beside the same share in the data's correct outputs, and the task's headline metric.

It runs where the task provides either capability (NEEDS_ANY), each part where its own is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import torch

from .. import tasks
from ..config import VOCAB_MAX, Config, DataConfig
from ..data import MASK_ID, generator, make_batch, sample_matrices
from ..losses import as_floats, losses
from ..plots import figure
from ..tasks.base import Outputs
from .common import (
    Count,
    Inputs,
    Result,
    Seed,
    Table,
    Text,
    between,
    each,
    headline,
    headline_numbers,
    needs_hidden,
    number,
)

TITLE = "Copying before the drop (Table 1); repetition on sequence tasks"
PAPER = (
    "Before the drop the model copies its input: with a value token put at hidden positions "
    "its predictions there equal that value (MSE to the substitute near 0), on low-rank and "
    "random inputs alike, while L_obs stays near 0 (Table 1). On sequence tasks the follow-up "
    "(Gopalani & Hu, 2025) finds a repetition bias on the plateau: the outputs repeat one token "
    "far more often than the data's outputs do."
)
ORDER = 10
NEEDS_ANY = frozenset({"substitute", "outputs"})  # task capabilities (tasks/base.py)


def unsupported(cfg: Config) -> str | None:
    # only the substitution part scores hidden entries; outputs are there whatever data.p_mask
    if "outputs" in tasks.get(cfg.task.name).provides(cfg):
        return None
    return needs_hidden(cfg)


def full_rank_like(data: DataConfig, count: int, gen: torch.Generator) -> torch.Tensor:
    """I.i.d. uniform entries with the low-rank matrices' second moment (full rank almost
    surely)."""
    second = sample_matrices(data, 4096, torch.Generator().manual_seed(0)).pow(2).mean().item()
    half_width = (3 * second) ** 0.5
    return (torch.rand((count, data.m, data.n), generator=gen) * 2 - 1) * half_width


def shares(tokens: torch.Tensor, inputs: torch.Tensor) -> dict[str, float]:
    """Of output tokens (B, n): the share equal to the output before them (`repeat`, over the
    n - 1 pairs) and to the input token (B, m) at the same index (`copy`, over the first
    min(n, m))."""
    k = min(tokens.shape[1], inputs.shape[1])
    return {
        "repeat": (tokens[:, 1:] == tokens[:, :-1]).float().mean().item(),
        "copy": (tokens[:, :k] == inputs[:, :k]).float().mean().item(),
    }


def output_rows(inputs: Inputs, n: int, seed: int) -> list[dict[str, Any]]:
    """One row per chosen checkpoint: the model's and the data's repeat and copy fractions, and
    the task's metrics, on the seeded batch."""
    task, batch = inputs.task, inputs.batch(n, seed)
    rows = []
    for step, model in inputs.models.items():
        out: Outputs = task.outputs(model, inputs.cfg, batch)
        model_s, data_s = shares(out.pred, out.inputs), shares(out.target, out.inputs)
        rows.append(
            {
                "step": step,
                "repeat": model_s["repeat"],
                "data_repeat": data_s["repeat"],
                "copy": model_s["copy"],
                "data_copy": data_s["copy"],
                "metrics": task.evaluate(model, batch),
            }
        )
    return rows


def substitute_rows(
    inputs: Inputs, n: int, seed: int, substitutes: tuple[float, ...]
) -> list[dict[str, Any]]:
    """Table 1: at each chosen checkpoint, on low-rank and full-rank inputs, MASK or each
    substitute at the hidden entries."""
    data = dataclasses.replace(inputs.data, clip=True)
    low_rank = inputs.batch(n, seed, data)
    full_rank = make_batch(full_rank_like(data, n, generator(seed + 1)), low_rank.mask, clip=True)
    rows = []
    for step, model in inputs.models.items():
        for kind, base in (("low-rank", low_rank), ("full-rank", full_rank)):
            for value in (None, *substitutes):
                batch = inputs.task.substitute(base, value)
                pred = model.predict(batch.tokens)
                sub = 0.0 if value is None else round(value, 2)
                rows.append(
                    {
                        "step": step,
                        "input": kind,
                        "substitute": "MASK" if value is None else value,
                        **{
                            k: v
                            for k, v in as_floats(losses(pred, batch)).items()
                            if k != "mask_value"
                        },
                        "mse_to_substitute": ((pred[batch.mask] - sub) ** 2).mean().item(),
                    }
                )
    return rows


def run(
    inputs: Inputs,
    seed: Seed = 0,
    n: Count = 512,
    substitutes: Annotated[tuple[float, ...], each(between(-VOCAB_MAX, VOCAB_MAX))] = (0.44, -0.24),
) -> Result:
    provided = inputs.task.provides(inputs.cfg)
    numbers: dict[str, Any] = {"n": n, "seed": seed}
    if "substitute" in provided and needs_hidden(inputs.cfg) is None:
        numbers["rows"] = substitute_rows(inputs, n, seed, substitutes)
        numbers["mask_token"] = MASK_ID
    if "outputs" in provided:
        numbers.update(headline_numbers(inputs))
        numbers["outputs"] = output_rows(inputs, n, seed)
    return Result(numbers)


def plot(result: Result, out: Path) -> list[Path]:
    paths = []
    if "rows" in result.numbers:
        paths.append(_plot_substitutes(result.numbers["rows"], out))
    if "outputs" in result.numbers:
        paths.append(_plot_outputs(result.numbers["outputs"], out))
    return paths


def _plot_substitutes(rows: list[dict[str, Any]], out: Path) -> Path:
    steps = sorted({r["step"] for r in rows})
    kinds = list(dict.fromkeys(r["input"] for r in rows))
    subs = list(dict.fromkeys(str(r["substitute"]) for r in rows))
    width = 0.8 / len(steps)
    path = out / "copying.png"
    with figure(path, 1, len(kinds), figsize=(5.5 * len(kinds), 3.6)) as (fig, axes):
        for ax, kind in zip(axes[0], kinds):
            for i, step in enumerate(steps):
                vals = [
                    next(
                        r["mse_to_substitute"]
                        for r in rows
                        if r["step"] == step and r["input"] == kind and str(r["substitute"]) == s
                    )
                    for s in subs
                ]
                ax.bar([j + i * width for j in range(len(subs))], vals, width, label=f"step {step}")
            ax.set_xticks([j + width * (len(steps) - 1) / 2 for j in range(len(subs))], subs)
            ax.set_title(f"{kind} inputs: MSE(hidden prediction, substitute)")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
    return path


def _plot_outputs(rows: list[dict[str, Any]], out: Path) -> Path:
    """Repeat and copy fractions of the outputs per checkpoint, the data's as a dashed line."""
    path = out / "repetition.png"
    labels = [str(r["step"]) for r in rows]
    with figure(path, 1, 2, figsize=(8, 3.4)) as (fig, axes):
        for ax, key, what in zip(
            axes[0],
            ("repeat", "copy"),
            ("output equal to the one before", "output equal to the input at its index"),
        ):
            ax.bar(labels, [r[key] for r in rows], color="tab:blue", label="model (argmax)")
            ax.axhline(rows[0][f"data_{key}"], color="gray", ls="--", lw=1, label="data")
            ax.set_ylim(0, 1)
            ax.set_xlabel("checkpoint step")
            ax.set_title(f"share of outputs: {what}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        axes[0][0].legend(fontsize=8)
    return path


def render(r: dict[str, Any]) -> list[Table | Text]:
    out: list[Table | Text] = []
    if "rows" in r:
        rows = [
            [
                x["step"],
                x["input"],
                x["substitute"],
                x["loss_obs"],
                x["mse_to_substitute"],
                x["loss_mask"],
            ]
            for x in r["rows"]
        ]
        out.append(
            Table(
                ["step", "input", "at hidden", "L_obs", "MSE to substitute", "L_mask (vs truth)"],
                rows,
            )
        )
    if "outputs" in r:
        out += _render_outputs(r)
    return out


def _render_outputs(r: dict[str, Any]) -> list[Table | Text]:
    key, label = headline(r)
    rows = r["outputs"]
    first = rows[0]
    words = [
        f"At step {x['step']} ({label} {x['metrics'][key]:.3g}) {x['repeat']:.0%} of the "
        f"model's outputs repeat the output before them and {x['copy']:.0%} copy the input "
        "token at their index."
        for x in rows
    ]
    # the checkpoint whose outputs repeat most, beside the data's: a repetition bias or not
    most = max(rows, key=lambda x: x["repeat"] - x["data_repeat"])
    biased = most["repeat"] > 1.5 * most["data_repeat"] and most["repeat"] > 0
    verdict = (
        "the follow-up's repetition bias"
        if biased
        else "unlike the follow-up's repetition bias (outputs repeating well beyond the data's)"
    )
    return [
        Text(
            f"The model's argmax outputs (teacher-forced) on {r['n']} sequences. In the data "
            f"{first['data_repeat']:.0%} of outputs repeat the one before and "
            f"{first['data_copy']:.0%} equal the input at their index. "
            + " ".join(words)
            + f" At most (step {most['step']}) the outputs repeat {most['repeat']:.1%} of the "
            f"time against the data's {most['data_repeat']:.1%}: {verdict}."
        ),
        Table(
            ["step", label, "repeat (model)", "repeat (data)", "copy (model)", "copy (data)"],
            [
                [
                    x["step"],
                    x["metrics"][key],
                    x["repeat"],
                    x["data_repeat"],
                    x["copy"],
                    x["data_copy"],
                ]
                for x in rows
            ],
        ),
    ]


def findings(r: dict[str, Any]) -> list[list[str]]:
    """The report's story rows ([question, this run, the literature, verdict]): what the model
    does on the plateau, at the first chosen checkpoint."""
    if "outputs" in r:
        x = r["outputs"][0]
        biased = x["repeat"] > 1.5 * x["data_repeat"] and x["repeat"] > 0
        return [
            [
                f"what the model outputs on the plateau (step {x['step']})",
                f"{x['repeat']:.1%} of its outputs repeat the one before (the data's "
                f"{x['data_repeat']:.1%}); {x['copy']:.1%} copy the input at their index (the "
                f"data's {x['data_copy']:.1%})",
                "a repetition bias: repeated outputs on the plateau (follow-up)",
                "agrees" if biased else "differs",
            ]
        ]
    rows = [x for x in r.get("rows", []) if x["input"] == "low-rank" and x["substitute"] != "MASK"]
    if not rows:
        return []
    step = rows[0]["step"]
    first = [x for x in rows if x["step"] == step]
    worst = max(x["mse_to_substitute"] for x in first)
    return [
        [
            f"does the plateau model copy its input (step {step})",
            f"MSE of hidden predictions to a substituted value at most {number(worst)} "
            f"(L_obs {number(first[0]['loss_obs'])})",
            "it copies: MSE to the substitute near 0 (Table 1)",
            "agrees" if worst < 0.01 else "differs",
        ]
    ]
