"""Named presets: a one-line description and the overrides applied to the schema's defaults (the
paper's values). `abrupt presets` lists them; `--preset NAME` picks one."""

from __future__ import annotations

from typing import Any

from .schema import Config, ConfigError, set_key

# The CPU-sized recipe (docs/preset-search.md): the paper's model family at width 64, with the
# paper's initialisation scaled to that width (0.02 * sqrt(768 / 64) = 0.07) and a short warm-up.
_CPU_RECIPE: dict[str, Any] = {
    "model.width": 64,
    "model.layers": 4,
    "model.heads": 4,
    "model.mlp": 256,
    "model.init_std": 0.07,
    "train.lr": 3e-3,
    "train.warmup": 200,
    "train.batch_size": 128,
    "train.steps": 20_000,
}

# The cheap problem (4x4 rank 1, p_mask 0.2) with the cpu recipe: `small`, and `sudden` on top of
# it.
_SMALL = {
    **_CPU_RECIPE,
    "data.m": 4,
    "data.n": 4,
    "data.rank": 1,
    "data.p_mask": 0.2,
    "train.ckpt_every": 500,
}

# Presets: (one-line description, overrides applied to the defaults above, which are the paper's).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "paper": (
        "the paper exactly: 4 layers, 8 heads, width 768, lr 1e-4, batch 256, 50k steps (GPU job)",
        {},
    ),
    "cpu": (
        "default: 7x7 rank 2 at CPU size with a factor-mean curriculum (mean 0.5 for 600 steps): "
        "leaves the plateau "
        "but slides, not sudden (docs/plateau.md)",
        {**_CPU_RECIPE, "train.ckpt_every": 1000, "curriculum.mean": 0.5, "curriculum.hold": 600},
    ),
    "cpu_plain": (
        "the paper's procedure at CPU size on 7x7 rank 2, no intervention: stays on the plateau "
        "here (docs/preset-search.md)",
        {**_CPU_RECIPE, "train.ckpt_every": 1000},
    ),
    "small": (
        "4x4 rank-1 matrices, p_mask 0.2, the cpu recipe: the fastest problem found that leaves "
        "the copying plateau on a 2-core CPU (then slides, about 7x by its end; ~20-25 min)",
        _SMALL,
    ),
    "sudden": (
        "4x4 rank 1 (small) with the row/column attention bias c = 3, batch 256, Adam eps 1e-4, "
        "no warm-up: "
        "the sudden drop by the window rule on 5 of 5 seeds, 20-25 minutes (an intervention on "
        "attention: docs/plateau)",
        {
            **_SMALL,
            "attn_bias.factor": 3.0,
            "train.batch_size": 256,
            "train.eps": 1e-4,
            "train.warmup": 0,
            "train.steps": 6000,
            "train.stop_after_drop": 1000,
            "train.progress": True,
        },
    ),
    "sizes": (
        "Fig. 16 at CPU size: rank-1 matrices of sizes 4x4, 5x5 and 6x6 mixed in every batch, "
        "p_mask 0.2, the cpu recipe",
        {
            **_CPU_RECIPE,
            "data.m": 6,
            "data.n": 6,
            "data.rank": 1,
            "data.p_mask": 0.2,
            "data.sizes": "4x4,5x5,6x6",
            "train.steps": 12_000,
            "train.ckpt_every": 1000,
        },
    ),
    "gpt": (
        "the paper's GPT variant (Fig. 11/12): decoder-only, 2 layers, 2 heads, width 256, "
        "next-token loss (GPU job)",
        {
            "model.arch": "gpt",
            "model.layers": 2,
            "model.heads": 2,
            "model.width": 256,
            "model.mlp": 1024,
            "model.ln_eps": 1e-5,
            "train.steps": 50_000,
        },
    ),
    "gpt_cpu": (
        "the GPT variant at CPU size: width 64, batch 64, lr 1e-3",
        {
            "model.arch": "gpt",
            "model.layers": 2,
            "model.heads": 2,
            "model.width": 64,
            "model.mlp": 256,
            "model.ln_eps": 1e-5,
            "model.init_std": 0.02,
            "train.lr": 1e-3,
            "train.warmup": 200,
            "train.batch_size": 64,
            "train.steps": 10_000,
            "train.ckpt_every": 1000,
        },
    ),
    "tiny": (
        "seconds-long smoke run (tests, demos): 2 layers, width 32; shows no drop",
        {
            "model.width": 32,
            "model.layers": 2,
            "model.heads": 2,
            "model.mlp": 64,
            "train.lr": 1e-3,
            "train.batch_size": 32,
            "train.steps": 60,
            "train.log_every": 10,
            "train.eval_size": 128,
            "train.ckpt_every": 20,
            "train.ckpt_log_points": 2,
        },
    ),
}

# The follow-up's sequence-task recipe (Gopalani & Hu 2025, public code): a GPT-2 style decoder with
# linear attention, 1 head, width 256, GPT-2 init; Adam lr 1e-4 on 256 fresh sequences a step, no
# warm-up, no clipping. The `<task>_full` presets are that exactly (about 1.3 s a step on one CPU
# core); the `<task>` presets keep the task, the depth and the optimiser, at width 64, batch 128 and
# lr 1e-3 (docs/tasks/README.md: the MWS drop in 1-2 minutes on one core). Logged every 10 steps
# on 512 fixed sequences.
_SEQ_RECIPE: dict[str, Any] = {
    "model.arch": "gpt",
    "model.attention": "linear",
    "model.layers": 1,
    "model.heads": 1,
    "model.width": 256,
    "model.mlp": 1024,
    "model.init_std": 0.02,
    "model.ln_eps": 1e-5,
    "train.lr": 1e-4,
    "train.batch_size": 256,
    "train.warmup": 0,
    "train.log_every": 10,
    "train.eval_size": 512,
    "train.ckpt_every": 100,
    "train.ckpt_log_points": 4,
    # the follow-up's measures (repetition, collapse, attention progress) at every log step: one
    # pass over 256 evaluation sequences, what `abrupt analyze` reads to explain the drop
    "train.progress": True,
}
_SEQ_CPU = {"model.width": 64, "model.mlp": 256, "train.batch_size": 128, "train.lr": 1e-3}

# (task, one-line description, the follow-up's steps, overrides, steps at CPU size)
_SEQ_TASKS = (
    (
        "mws",
        "moving-window sum: 16 integers 1..16, y_i = x_(i-1) + x_i mod 17; 1 layer",
        400,
        {},
        400,
    ),
    ("prefix_sum", "prefix sum mod 17 of 16 integers 1..16; 1 layer", 1000, {}, 1000),
    (
        "histogram",
        "histogram: for each of 16 letters of 12, its count in the sequence; 2 layers, "
        "grad clip 1.0",
        5000,
        {"model.layers": 2, "train.grad_clip": 1.0, "train.log_every": 25, "train.ckpt_every": 500},
        2500,
    ),
    (
        "permutation",
        "permutation: 16 values, a permutation of 1..16, then the permuted values; 2 layers",
        2000,
        {"model.layers": 2, "train.log_every": 20, "train.ckpt_every": 500},
        2000,
    ),
    (
        "addition",
        "4-digit addition, the sum written reversed (least significant digit first); 1 layer",
        10_000,
        {"train.log_every": 50, "train.ckpt_every": 1000},
        5000,
    ),
)


def _sequence_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    out = {}
    for name, what, steps, extra, cpu_steps in _SEQ_TASKS:
        out[f"{name}_full"] = (
            f"the follow-up's {what}: width 256, lr 1e-4, batch 256, {steps} steps (long on a CPU)",
            {**_SEQ_RECIPE, "task.name": name, "train.steps": steps, **extra},
        )
        out[name] = (
            f"the follow-up's {what}: at CPU size (width 64, lr 1e-3, batch 128), "
            f"{cpu_steps} steps",
            {**_SEQ_RECIPE, **_SEQ_CPU, "task.name": name, "train.steps": cpu_steps, **extra},
        )
    return out


PRESETS.update(_sequence_presets())

DEFAULT_PRESET = "cpu"


def preset(name: str) -> Config:
    """The configuration of preset `name` (ConfigError naming the presets for an unknown one)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    cfg = Config(preset=name)
    for key, value in PRESETS[name][1].items():
        set_key(cfg, key, value)
    return cfg
