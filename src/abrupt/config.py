"""Typed run configuration, named presets and `section.key=value` overrides.

Every value a run depends on lives here, so that `config.json` in a run directory is enough to
rebuild the run exactly. Validation happens before anything is written: a bad value is a
`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

VOCAB_MAX = 10.0  # value tokens cover -10.00 .. 10.00 in steps of 0.01
MAX_POSITIONS = 1024  # m * n: attention is quadratic in it; the paper's 7x7 is 49
MAX_SEED = 2**62  # leaves room for the per-stream offsets added to the seed
MAX_CHECKPOINTS = 10_000  # per run (train.steps / train.ckpt_every)
MAX_LOG_POINTS = 1_000  # log-spaced early checkpoints (more cannot be distinct below any sane ckpt_every)
MAX_LOG_ROWS = 1_000_000  # metrics rows per run (train.steps / train.log_every), each kept in memory
DISTRIBUTIONS = ("uniform", "gaussian", "laplace", "signed")
TASKS = ("matrix", "mws", "prefix_sum", "histogram", "permutation", "addition")  # modules of src/abrupt/tasks/


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclass
class DataConfig:
    m: int = 7
    n: int = 7
    rank: int = 2
    p_mask: float = 0.3
    distribution: str = "uniform"
    low: float = -1.0  # uniform factors: U[low, high]
    high: float = 1.0
    sigma: float = 1.0  # gaussian factors: N(0, sigma^2)
    scale: float = 0.25  # laplace factors: Laplace(0, scale)
    mag_low: float = 0.3  # signed factors: a random sign times U[mag_low, mag_high] (zero mean, |factor| >= mag_low)
    mag_high: float = 1.0
    clip: bool = False  # clip values to [-10, 10] instead of raising on out-of-vocabulary entries
    sizes: str = ""  # a mixture of matrix sizes, e.g. "4x4,5x5,6x6" (equal shares); the largest must be m x n

    def size_list(self) -> list[tuple[int, int]]:
        """[(rows, columns), ...] of the mixture ([(m, n)] without one)."""
        if not self.sizes.strip():
            return [(self.m, self.n)]
        out = []
        for item in (x.strip() for x in self.sizes.split(",") if x.strip()):
            rows, sep, cols = item.lower().partition("x")
            if not sep or not rows.isdigit() or not cols.isdigit():
                raise ConfigError(f"data.sizes: '{item}' is not ROWSxCOLUMNS, e.g. 5x5")
            out.append((int(rows), int(cols)))
        return out


@dataclass
class ModelConfig:
    hidden: int = 768
    layers: int = 4
    heads: int = 8
    mlp: int = 3072
    init_std: float = 0.02
    pos_init_std: float = 0.0  # 0 means: same as init_std
    ln_eps: float = 1e-12
    attn_temperature: float = 1.0  # intervention: attention logits divided by this (1 = the paper)
    arch: str = "bert"  # bert (the paper's main model) | gpt (the decoder-only variant, Fig. 11/12)
    norm: str = "post"  # post (the paper's BERT: LayerNorm after each residual sum) | pre (LayerNorm before each sublayer)
    # Levers against the slow fall (docs/plateau/); each off by default, and then bit-identical.
    value_init: str = "random"  # random (the paper) | line: value-token rows start at random + value * d (a number line)
    value_init_scale: float = 1.0  # line: |d| = this times the expected norm of a random row
    attn_bias: float = 1.0  # c: attention weights on keys in the query's row or column multiplied by c (log c added to their logits); 1 = off
    attn_bias_layers: str = ""  # layers that get the bias, e.g. "0,1" (empty = every layer)
    attn_bias_until: int = 0  # > 0: the bias is switched off after this training step (0 = on for the whole run)
    attention: str = "softmax"  # softmax | linear (the follow-up's: scores QK^T/sqrt(d_head), future keys 0, no softmax); GPT only


@dataclass
class TrainConfig:
    steps: int = 50_000
    batch_size: int = 256
    lr: float = 1e-4
    warmup: int = 0  # linear warm-up steps; 0 = constant lr as in the paper
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8  # Adam's epsilon (torch's default); far above a weight's gradient scale, that weight's steps become SGD-like
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = False  # bf16 autocast of the training forward (for GPUs; on CPU it runs, slower, so CPU checks cover it); losses in fp32
    compile: bool = False  # torch.compile the training forward (about 1.14x on the cpu preset, after ~1 min of compiling)
    log_every: int = 50
    eval_size: int = 1024  # fixed, seeded evaluation batch
    ckpt_every: int = 1000  # fixed checkpoint interval ...
    ckpt_log_points: int = 8  # ... plus this many log-spaced early checkpoints below it
    keep_optim: int = 2  # optimizer/RNG state kept for the newest N checkpoints (resume needs one)
    stop_after_drop: int = 0  # >0: end this many steps after L_mask first falls 10x below plateau
    tf32: bool = False  # CUDA only: TF32 matmuls (recorded; fp32 otherwise)
    optimizer: str = "adam"  # adam (the paper) | adamw (decoupled weight decay)
    weight_decay: float = 0.0  # adamw only
    lr_width_ref: int = 0  # > 0: width rule, the lr used is lr * lr_width_ref / model.hidden (Adam's step size per weight does not shrink with width)
    group_lr: str = ""  # intervention: lr multipliers per parameter group, e.g. "pos_embed=10,mlp=0.5" (groups.py)
    grokfast_alpha: float = 0.0  # intervention: gradient low-pass filter (Grokfast EMA); 0 = off
    grokfast_lambda: float = 0.0  # ... the filtered gradient is amplified by this and added
    forecast: bool = True  # forecast the escape step at each log (forecast.py): metrics.jsonl and the progress bar
    forecast_signal: str = "loss"  # loss (the evaluation loss) or a logged progress measure, e.g. prog_attn_l0
    forecast_target: float = 0.0  # the signal's departure at the escape (0: 0.2 for loss); a measure's comes from `abrupt forecast`
    progress: bool = False  # log progress measures (attention row/column mass, collapse, position purity, per-group grad norms)
    init_from: str = ""  # start from another run's weights: RUN or RUN@STEP (default its last checkpoint)
    trainable: str = "all"  # train only these parameter groups (comma-separated); the rest stay frozen
    reinit: str = ""  # re-initialise these groups (as at step 0) after init_from
    clip: float = 0.0  # > 0: clip the gradient's global norm to this (the follow-up's histogram: 1.0); 0 = off (the paper)


@dataclass
class TaskConfig:
    """What the model learns (one module per task in src/abrupt/tasks/). `matrix` is the paper's
    masked matrix completion, parameterised by the `data` section; the others are the follow-up's
    sequence tasks (Gopalani & Hu 2025): a decoder reads `length` inputs and a separator, then
    writes the outputs, with next-token cross-entropy on the outputs only."""

    name: str = "matrix"  # matrix | mws | prefix_sum | histogram | permutation | addition
    length: int = 16  # inputs per sequence (mws, prefix_sum, histogram, permutation)
    low: int = 1  # inputs drawn uniformly from low..high (mws, prefix_sum, permutation)
    high: int = 16
    modulus: int = 17  # mws, prefix_sum: outputs are sums mod this
    alphabet: int = 12  # histogram: letters 1..alphabet
    digits: int = 4  # addition: digits of each operand (the sum is written reversed, digits + 1 long)
    attn_scale: float = 1.0  # intervention c: attention on the task's correct keys multiplied by c (1 = off)
    attn_scale_from: int = 0  # ... from this training step on (0 = the whole run; the follow-up's "late" switch)
    attn_scale_layers: str = ""  # ... in these layers, e.g. "1" (empty: every layer with correct keys)


@dataclass
class CurriculumConfig:
    """Training-data curriculum (an intervention; off by default). The evaluation batch always
    comes from the target distribution in `data`."""

    mean: float = 0.0  # factor-mean shift: training factors are U[low, high] + mean ...
    hold: int = 0  # ... for this many steps ...
    decay: int = 0  # ... then fall linearly to 0 over this many steps
    rank: int = 0  # > 0: training matrices of this rank for the first `hold` steps
    p_mask: float = -1.0  # >= 0: training masks at this rate for the first `hold` steps

    def end(self) -> int:
        """The last step of the curriculum (0 when none is active)."""
        active = bool(self.mean) or bool(self.rank) or self.p_mask >= 0
        return self.hold + self.decay if active else 0

    def data_at(self, data: "DataConfig", step: int) -> "DataConfig":
        """The training data's configuration at `step` (the target `data` once the curriculum ends)."""
        if step > self.hold or (not self.rank and self.p_mask < 0):
            return data
        return dataclasses.replace(data, rank=self.rank or data.rank, p_mask=data.p_mask if self.p_mask < 0 else self.p_mask)

    def shift(self, step: int) -> float:
        """The factor-mean shift of the training batch at `step` (1-based)."""
        if not self.mean or step > self.hold + self.decay:
            return 0.0
        if step <= self.hold:
            return self.mean
        return self.mean * (1.0 - (step - self.hold) / self.decay)


@dataclass
class Config:
    preset: str = "paper"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = cls()
        for key in ("preset", "seed"):
            if key in d:
                setattr(cfg, key, d[key])
        for section in ("data", "model", "train", "curriculum", "task"):
            for k, v in d.get(section, {}).items():
                set_key(cfg, f"{section}.{k}", v)
        validate(cfg)
        return cfg


# The CPU-sized recipe (docs/preset-search.md): the paper's model family at width 64, with the
# paper's initialisation scaled to that width (0.02 * sqrt(768 / 64) = 0.07) and a short warm-up.
_CPU_RECIPE: dict[str, Any] = {
    "model.hidden": 64,
    "model.layers": 4,
    "model.heads": 4,
    "model.mlp": 256,
    "model.init_std": 0.07,
    "train.lr": 3e-3,
    "train.warmup": 200,
    "train.batch_size": 128,
    "train.steps": 20_000,
}

# The cheap problem (4x4 rank 1, p_mask 0.2) with the cpu recipe: `small`, and `sudden` on top of it.
_SMALL = {**_CPU_RECIPE, "data.m": 4, "data.n": 4, "data.rank": 1, "data.p_mask": 0.2, "train.ckpt_every": 500}

# Presets: (one-line description, overrides applied to the defaults above, which are the paper's).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "paper": (
        "the paper exactly: 4 layers, 8 heads, width 768, lr 1e-4, batch 256, 50k steps (GPU job)",
        {},
    ),
    "cpu": (
        "default: 7x7 rank 2 at CPU size with a factor-mean curriculum (mean 0.5 for 600 steps): leaves the plateau "
        "but slides, not sudden (docs/plateau.md)",
        {**_CPU_RECIPE, "train.ckpt_every": 1000, "curriculum.mean": 0.5, "curriculum.hold": 600},
    ),
    "cpu_plain": (
        "the paper's procedure at CPU size on 7x7 rank 2, no intervention: stays on the plateau here (docs/preset-search.md)",
        {**_CPU_RECIPE, "train.ckpt_every": 1000},
    ),
    "small": (
        "4x4 rank-1 matrices, p_mask 0.2, the cpu recipe: the fastest problem found that drops 10x on a 2-core CPU",
        _SMALL,
    ),
    "sudden": (
        "4x4 rank 1 (small) with the row/column attention bias c = 3, batch 256, Adam eps 1e-4, no warm-up: "
        "the sudden drop by the window rule on 5 of 5 seeds, 20-25 minutes (an intervention on attention: docs/plateau)",
        {**_SMALL, "model.attn_bias": 3.0, "train.batch_size": 256, "train.eps": 1e-4, "train.warmup": 0,
         "train.steps": 6000, "train.stop_after_drop": 1000, "train.progress": True},
    ),
    "sizes": (
        "Fig. 16 at CPU size: rank-1 matrices of sizes 4x4, 5x5 and 6x6 mixed in every batch, p_mask 0.2, the cpu recipe",
        {**_CPU_RECIPE, "data.m": 6, "data.n": 6, "data.rank": 1, "data.p_mask": 0.2, "data.sizes": "4x4,5x5,6x6",
         "train.steps": 12_000, "train.ckpt_every": 1000},
    ),
    "gpt": (
        "the paper's GPT variant (Fig. 11/12): decoder-only, 2 layers, 2 heads, width 256, next-token loss (GPU job)",
        {"model.arch": "gpt", "model.layers": 2, "model.heads": 2, "model.hidden": 256, "model.mlp": 1024,
         "model.ln_eps": 1e-5, "train.steps": 50_000},
    ),
    "gpt_cpu": (
        "the GPT variant at CPU size: width 64, batch 64, lr 1e-3",
        {"model.arch": "gpt", "model.layers": 2, "model.heads": 2, "model.hidden": 64, "model.mlp": 256,
         "model.ln_eps": 1e-5, "model.init_std": 0.02, "train.lr": 1e-3, "train.warmup": 200, "train.batch_size": 64,
         "train.steps": 10_000, "train.ckpt_every": 1000},
    ),
    "tiny": (
        "seconds-long smoke run (tests, demos): 2 layers, width 32; shows no drop",
        {
            "model.hidden": 32,
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
    "model.hidden": 256,
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
}
_SEQ_CPU = {"model.hidden": 64, "model.mlp": 256, "train.batch_size": 128, "train.lr": 1e-3}

# (task, one-line description, the follow-up's steps, overrides, steps at CPU size)
_SEQ_TASKS = (
    ("mws", "moving-window sum: 16 integers 1..16, y_i = x_(i-1) + x_i mod 17; 1 layer", 400, {}, 400),
    ("prefix_sum", "prefix sum mod 17 of 16 integers 1..16; 1 layer", 1000, {}, 1000),
    ("histogram", "histogram: for each of 16 letters of 12, its count in the sequence; 2 layers, clip 1.0", 5000,
     {"model.layers": 2, "train.clip": 1.0, "train.log_every": 25, "train.ckpt_every": 500}, 2500),
    ("permutation", "permutation: 16 values, a permutation of 1..16, then the permuted values; 2 layers", 2000,
     {"model.layers": 2, "train.log_every": 20, "train.ckpt_every": 500}, 2000),
    ("addition", "4-digit addition, the sum written reversed (least significant digit first); 1 layer", 10_000,
     {"train.log_every": 50, "train.ckpt_every": 1000}, 5000),
)


def _sequence_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    out = {}
    for name, what, steps, extra, cpu_steps in _SEQ_TASKS:
        out[f"{name}_full"] = (f"the follow-up's {what}: width 256, lr 1e-4, batch 256, {steps} steps (long on a CPU)",
                               {**_SEQ_RECIPE, "task.name": name, "train.steps": steps, **extra})
        out[name] = (f"the follow-up's {what}: at CPU size (width 64, lr 1e-3, batch 128), {cpu_steps} steps",
                     {**_SEQ_RECIPE, **_SEQ_CPU, "task.name": name, "train.steps": cpu_steps, **extra})
    return out


PRESETS.update(_sequence_presets())

DEFAULT_PRESET = "cpu"


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    cfg = Config(preset=name)
    for key, value in PRESETS[name][1].items():
        set_key(cfg, key, value)
    return cfg


def _sections(cfg: Config) -> dict[str, Any]:
    return {"data": cfg.data, "model": cfg.model, "train": cfg.train, "curriculum": cfg.curriculum, "task": cfg.task}


def all_keys() -> list[str]:
    cfg = Config()
    keys = ["seed"]
    for name, section in _sections(cfg).items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(section)]
    return keys


def _coerce(key: str, raw: Any, typ: type) -> Any:
    if isinstance(raw, str):
        text = raw.strip()
        if typ is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ConfigError(f"{key}: expected true/false, got '{raw}'")
        if typ is int:
            try:
                f = float(text)
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got '{raw}'") from None
            if not f.is_integer():
                raise ConfigError(f"{key}: expected an integer, got '{raw}'")
            return int(f)
        if typ is float:
            try:
                return float(text)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got '{raw}'") from None
        return text
    if typ is bool and not isinstance(raw, bool):
        raise ConfigError(f"{key}: expected true/false, got {raw!r}")
    if typ is int and (isinstance(raw, bool) or not isinstance(raw, int)):
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        raise ConfigError(f"{key}: expected an integer, got {raw!r}")
    if typ is float and (isinstance(raw, bool) or not isinstance(raw, (int, float))):
        raise ConfigError(f"{key}: expected a number, got {raw!r}")
    if typ is float:
        return float(raw)
    if typ is str and not isinstance(raw, str):
        raise ConfigError(f"{key}: expected a string, got {raw!r}")
    return raw


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def set_key(cfg: Config, key: str, raw: Any) -> None:
    """Set `section.key` (or `seed`) from a string or a typed value, with type checking."""
    if key == "seed":
        cfg.seed = _coerce(key, raw, int)
        return
    if key == "preset":  # the label of the values a run started from: an override would relabel it
        raise ConfigError("preset: not a key; choose the preset with --preset NAME (or a sweep spec's preset:)")
    section_name, _, name = key.partition(".")
    sections = _sections(cfg)
    if section_name not in sections or not name:
        raise ConfigError(f"unknown key '{key}'; keys look like data.m, model.hidden, train.lr")
    section = sections[section_name]
    fields = {f.name: f for f in dataclasses.fields(section)}
    if name not in fields:
        raise ConfigError(
            f"unknown key '{key}'; {section_name} keys are: {', '.join(fields)}"
        )
    typ = _TYPES[str(fields[name].type)]
    setattr(section, name, _coerce(key, raw, typ))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        set_key(cfg, key.strip(), value)
    validate(cfg)
    return cfg


def max_abs_entry(d: DataConfig) -> float:
    """Largest |X_ij| the factor distribution can produce (inf for unbounded ones)."""
    if d.distribution == "uniform":
        return d.rank * max(abs(d.low), abs(d.high)) ** 2
    if d.distribution == "signed":
        return d.rank * d.mag_high**2
    return math.inf


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate_data(d: DataConfig) -> None:
    need = _need
    need(d.m >= 1, f"data.m: must be >= 1, got {d.m}")
    need(d.n >= 1, f"data.n: must be >= 1, got {d.n}")
    need(1 <= d.rank <= min(d.m, d.n), f"data.rank: must be in [1, min(m, n)] = [1, {min(d.m, d.n)}], got {d.rank}")
    need(0.0 <= d.p_mask < 1.0, f"data.p_mask: must be in [0, 1), got {d.p_mask}")
    need(d.distribution in DISTRIBUTIONS, f"data.distribution: must be one of {', '.join(DISTRIBUTIONS)}, got '{d.distribution}'")
    if d.distribution == "uniform":
        need(d.low < d.high, f"data.low/data.high: need low < high, got [{d.low}, {d.high}]")
    need(math.isfinite(d.low) and math.isfinite(d.high), f"data.low/data.high: must be finite, got [{d.low}, {d.high}]")
    need(0 < d.sigma < math.inf, f"data.sigma: must be a positive number, got {d.sigma}")
    need(0 < d.scale < math.inf, f"data.scale: must be a positive number, got {d.scale}")
    need(0 <= d.mag_low < d.mag_high < math.inf, f"data.mag_low/data.mag_high: need 0 <= mag_low < mag_high, got [{d.mag_low}, {d.mag_high}]")
    sizes = d.size_list()
    if d.sizes.strip():
        need(len(set(sizes)) == len(sizes) and len(sizes) >= 2, f"data.sizes: give two or more distinct sizes, got '{d.sizes}'")
        need(max(r for r, _ in sizes) == d.m and max(c for _, c in sizes) == d.n,
             f"data.sizes: the largest rows and columns must be data.m x data.n = {d.m}x{d.n} (the model's grid), got '{d.sizes}'")
        need(all(d.rank <= min(r, c) for r, c in sizes), f"data.sizes: data.rank {d.rank} exceeds a size in '{d.sizes}'")
    need(d.m * d.n <= MAX_POSITIONS, f"data.m x data.n: at most {MAX_POSITIONS} entries (a sequence of m*n tokens), got {d.m}x{d.n}")
    need(d.distribution in ("uniform", "signed") or d.clip,
         f"data.distribution={d.distribution} has unbounded support, so some entries fall outside the vocabulary "
         f"[-{VOCAB_MAX:g}, {VOCAB_MAX:g}]: set data.clip=true to clip them (recorded in config.json)")
    bound = max_abs_entry(d)
    if math.isfinite(bound) and not d.clip:
        need(
            bound <= VOCAB_MAX,
            f"data: rank-{d.rank} products of its factors reach |x| = {bound:g}, "
            f"beyond the vocabulary's [-{VOCAB_MAX:g}, {VOCAB_MAX:g}]; narrow the range or set data.clip=true",
        )


def group_lr(spec: str) -> dict[str, float]:
    """'pos_embed=10,mlp=0.5' -> {'pos_embed': 10.0, 'mlp': 0.5}."""
    out = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        name, sep, value = item.partition("=")
        try:
            scale = float(value)
        except ValueError:
            scale = math.nan
        if not sep or not 0 < scale < math.inf:
            raise ConfigError(f"train.group_lr: '{item}' is not GROUP=POSITIVE_NUMBER")
        out[name.strip()] = scale
    return out


def _check_groups(cfg: Config) -> None:
    from . import groups

    t = cfg.train
    for key, spec in (("train.trainable", t.trainable), ("train.reinit", t.reinit), ("train.group_lr", ",".join(group_lr(t.group_lr)))):
        try:
            groups.check(groups.split(spec), cfg.model.layers)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    for key, spec in (("train.trainable", t.trainable), ("train.reinit", t.reinit)):
        lacking = groups.absent(groups.split(spec), cfg.model)
        _need(not lacking, f"{key}: model.arch={cfg.model.arch} has no parameters in group(s) {', '.join(lacking)}")
    _need(bool(groups.split(t.trainable)), "train.trainable: name at least one group (all = everything)")
    _need(not t.reinit or t.init_from, "train.reinit: only with train.init_from (re-initialise part of a trained model)")


def layer_list(spec: str, layers: int, key: str) -> list[int]:
    """'0,2' -> [0, 2]; '' -> every layer. Raises ConfigError naming `key` for a layer the model lacks."""
    if not spec.strip():
        return list(range(layers))
    out = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        if not item.isdigit() or int(item) >= layers:
            raise ConfigError(f"{key}: '{item}' is not a layer of 0..{layers - 1}")
        out.append(int(item))
    return sorted(set(out))


def _check_levers(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    need = _need
    need(m.norm in ("post", "pre"), f"model.norm: must be post or pre, got '{m.norm}'")
    need(m.norm == "post" or m.arch == "bert", "model.norm=pre: the GPT variant is pre-LN already; use it with model.arch=bert")
    need(m.value_init in ("random", "line"), f"model.value_init: must be random or line, got '{m.value_init}'")
    need(0 < m.value_init_scale < math.inf, f"model.value_init_scale: must be a positive number, got {m.value_init_scale}")
    need(0 < m.attn_bias < math.inf, f"model.attn_bias: must be a positive number (1 = off), got {m.attn_bias}")
    need(m.attn_bias_until >= 0, f"model.attn_bias_until: must be >= 0 (0 = the whole run), got {m.attn_bias_until}")
    need(m.attn_bias == 1.0 or m.arch == "bert", "model.attn_bias: built for model.arch=bert")
    need(m.value_init == "random" or m.arch == "bert", "model.value_init=line: built for model.arch=bert")
    layer_list(m.attn_bias_layers, m.layers, "model.attn_bias_layers")
    need(t.lr_width_ref >= 0, f"train.lr_width_ref: must be >= 0 (0 = off), got {t.lr_width_ref}")
    need(t.forecast_signal == "loss" or t.forecast_signal.startswith("prog_"),
         f"train.forecast_signal: must be loss or a progress measure (prog_...), got '{t.forecast_signal}'")
    need(0 <= t.forecast_target < math.inf, f"train.forecast_target: must be a number >= 0, got {t.forecast_target}")
    need(t.forecast_signal == "loss" or (t.progress and t.forecast_target > 0),
         "train.forecast_signal: a progress measure needs train.progress=true and its train.forecast_target "
         "(the departure at past escapes: `abrupt forecast` prints it)")


def _check_task(cfg: Config) -> None:
    k, m = cfg.task, cfg.model
    need = _need
    need(k.name in TASKS, f"task.name: must be one of {', '.join(TASKS)}, got '{k.name}'")
    need(m.attention in ("softmax", "linear"), f"model.attention: must be softmax or linear, got '{m.attention}'")
    need(m.attention == "softmax" or m.arch == "gpt", "model.attention=linear: built for the decoder (model.arch=gpt)")
    need(0 < k.attn_scale < math.inf, f"task.attn_scale: must be a positive number (1 = off), got {k.attn_scale}")
    need(k.attn_scale_from >= 0, f"task.attn_scale_from: must be >= 0 (0 = the whole run), got {k.attn_scale_from}")
    need(cfg.train.clip >= 0 and math.isfinite(cfg.train.clip), f"train.clip: must be a number >= 0 (0 = off), got {cfg.train.clip}")
    if k.name == "matrix":
        need(k.attn_scale == 1.0, "task.attn_scale: built for the sequence tasks; for matrices use model.attn_bias")
        need(k.attn_scale_from == 0 and not k.attn_scale_layers.strip(),
             "task.attn_scale_from/attn_scale_layers: built for the sequence tasks' task.attn_scale; "
             "for matrices use model.attn_bias_until/attn_bias_layers")
        return
    need(m.arch == "gpt", f"task.name={k.name}: a sequence task needs the decoder, model.arch=gpt")
    need(not cfg.curriculum.end(), f"curriculum: built for task.name=matrix, not {k.name}")
    need(not cfg.data.sizes.strip(), f"data.sizes: built for task.name=matrix, not {k.name}")
    need(2 <= k.length <= 256, f"task.length: must be in [2, 256], got {k.length}")
    need(1 <= k.low <= k.high <= 1000, f"task.low/task.high: need 1 <= low <= high <= 1000, got [{k.low}, {k.high}]")
    need(k.modulus > k.high, f"task.modulus: must exceed task.high ({k.high}) so that y_1 = x_1 is an output value, got {k.modulus}")
    need(k.modulus <= 1000, f"task.modulus: at most 1000, got {k.modulus}")
    need(2 <= k.alphabet <= 1000, f"task.alphabet: must be in [2, 1000], got {k.alphabet}")
    need(1 <= k.digits <= 9, f"task.digits: must be in [1, 9], got {k.digits}")
    from .tasks import get  # the task's own rules (the layers it defines correct keys in)

    try:
        get(k.name).check(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def validate(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    need = _need
    need(0 <= cfg.seed < MAX_SEED, f"seed: must be in [0, 2^62), got {cfg.seed}")
    validate_data(cfg.data)
    need(m.hidden >= 1, f"model.hidden: must be >= 1, got {m.hidden}")
    need(m.layers >= 1, f"model.layers: must be >= 1, got {m.layers}")
    need(m.heads >= 1, f"model.heads: must be >= 1, got {m.heads}")
    need(m.hidden % m.heads == 0, f"model.heads: must divide model.hidden ({m.hidden}), got {m.heads}")
    need(m.mlp >= 1, f"model.mlp: must be >= 1, got {m.mlp}")
    need(0 < m.init_std < math.inf, f"model.init_std: must be a positive number, got {m.init_std}")
    need(0 <= m.pos_init_std < math.inf, f"model.pos_init_std: must be a number >= 0 (0 = init_std), got {m.pos_init_std}")
    need(0 < m.ln_eps < 1, f"model.ln_eps: must be in (0, 1), got {m.ln_eps}")
    need(t.steps >= 1, f"train.steps: must be >= 1, got {t.steps}")
    need(t.batch_size >= 1, f"train.batch_size: must be >= 1, got {t.batch_size}")
    need(t.lr > 0 and math.isfinite(t.lr), f"train.lr: must be a positive number, got {t.lr}")
    need(t.warmup >= 0, f"train.warmup: must be >= 0, got {t.warmup}")
    need(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1/beta2: must be in [0, 1)")
    need(0 < t.eps < 1, f"train.eps: must be in (0, 1), got {t.eps}")
    need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
         f"train.device: must be auto, cpu, cuda or cuda:N, got '{t.device}'")
    need(t.log_every >= 1, f"train.log_every: must be >= 1, got {t.log_every}")
    need(t.eval_size >= 1, f"train.eval_size: must be >= 1, got {t.eval_size}")
    if cfg.data.sizes.strip():  # a mixture gives each size an equal share of every batch, in turn
        k = len(cfg.data.size_list())
        for key, count in (("train.batch_size", t.batch_size), ("train.eval_size", t.eval_size)):
            need(count >= k, f"{key}={count} is below the {k} sizes of data.sizes: some sizes would never be "
                             f"{'trained' if key == 'train.batch_size' else 'evaluated'}; use at least {k}")
    need(t.ckpt_every >= 1, f"train.ckpt_every: must be >= 1, got {t.ckpt_every}")
    need(0 <= t.ckpt_log_points <= MAX_LOG_POINTS, f"train.ckpt_log_points: must be in [0, {MAX_LOG_POINTS}], got {t.ckpt_log_points}")
    # Checkpoints and log rows are files and memory that grow with the run: refuse a run that would
    # fill a disk or the memory rather than find out hours in.
    need(t.steps // t.ckpt_every <= MAX_CHECKPOINTS,
         f"train.ckpt_every={t.ckpt_every}: {t.steps} steps would write {t.steps // t.ckpt_every} checkpoints, "
         f"at most {MAX_CHECKPOINTS}; raise train.ckpt_every to at least {-(-t.steps // MAX_CHECKPOINTS)}")
    need(t.steps // t.log_every <= MAX_LOG_ROWS,
         f"train.log_every={t.log_every}: {t.steps} steps would log {t.steps // t.log_every} rows, "
         f"at most {MAX_LOG_ROWS}; raise train.log_every to at least {-(-t.steps // MAX_LOG_ROWS)}")
    need(t.keep_optim >= 1, f"train.keep_optim: must be >= 1, got {t.keep_optim}")
    need(t.stop_after_drop >= 0, f"train.stop_after_drop: must be >= 0, got {t.stop_after_drop}")
    need(m.arch in ("bert", "gpt"), f"model.arch: must be bert or gpt, got '{m.arch}'")
    need(m.arch == "bert" or not cfg.data.sizes.strip(), "data.sizes: size mixtures are built for model.arch=bert only")
    need(m.arch == "bert" or cfg.task.name != "matrix" or not t.progress,
         "train.progress: on matrices the progress measures are built for model.arch=bert only")
    need(0 < m.attn_temperature < math.inf, f"model.attn_temperature: must be a positive number, got {m.attn_temperature}")
    need(t.optimizer in ("adam", "adamw"), f"train.optimizer: must be adam or adamw, got '{t.optimizer}'")
    need(0 <= t.weight_decay < math.inf, f"train.weight_decay: must be a number >= 0, got {t.weight_decay}")
    need(t.weight_decay == 0 or t.optimizer == "adamw", "train.weight_decay: only with train.optimizer=adamw (Adam's L2 is not what you want)")
    need(0 <= t.grokfast_alpha < 1, f"train.grokfast_alpha: must be in [0, 1), got {t.grokfast_alpha}")
    need(0 <= t.grokfast_lambda < math.inf, f"train.grokfast_lambda: must be a number >= 0, got {t.grokfast_lambda}")
    _check_levers(cfg)
    _check_groups(cfg)
    _check_task(cfg)
    c = cfg.curriculum
    need(0 <= c.rank <= min(cfg.data.m, cfg.data.n), f"curriculum.rank: must be in [0, {min(cfg.data.m, cfg.data.n)}] (0 = off), got {c.rank}")
    need(c.p_mask == -1.0 or 0 <= c.p_mask < 1, f"curriculum.p_mask: must be in [0, 1), or -1 for off, got {c.p_mask}")
    need(math.isfinite(c.mean), f"curriculum.mean: must be finite, got {c.mean}")
    need(c.hold >= 0 and c.decay >= 0, "curriculum.hold/decay: must be >= 0")
    need(not c.mean or cfg.data.distribution in ("uniform", "signed"), "curriculum.mean: only for data.distribution=uniform or signed")
    if c.mean or c.rank:
        shifted = dataclasses.replace(cfg.data, low=cfg.data.low + c.mean, high=cfg.data.high + c.mean,
                                      mag_high=cfg.data.mag_high + abs(c.mean), rank=max(c.rank, cfg.data.rank))
        bound = max_abs_entry(shifted)
        need(shifted.clip or bound <= VOCAB_MAX,
             f"curriculum: its training data reach |x| = {bound:g}, beyond the vocabulary; lower curriculum.mean/rank or set data.clip=true")
