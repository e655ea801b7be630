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
DISTRIBUTIONS = ("uniform", "gaussian", "laplace")


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
    clip: bool = False  # clip values to [-10, 10] instead of raising on out-of-vocabulary entries


@dataclass
class ModelConfig:
    hidden: int = 768
    layers: int = 4
    heads: int = 8
    mlp: int = 3072
    init_std: float = 0.02
    pos_init_std: float = 0.0  # 0 means: same as init_std
    ln_eps: float = 1e-12


@dataclass
class TrainConfig:
    steps: int = 50_000
    batch_size: int = 256
    lr: float = 1e-4
    warmup: int = 0  # linear warm-up steps; 0 = constant lr as in the paper
    beta1: float = 0.9
    beta2: float = 0.999
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = False  # bf16 autocast (CUDA only)
    compile: bool = False  # torch.compile the training forward (about 1.14x on the cpu preset, after ~1 min of compiling)
    log_every: int = 50
    eval_size: int = 1024  # fixed, seeded evaluation batch
    ckpt_every: int = 1000  # fixed checkpoint interval ...
    ckpt_log_points: int = 8  # ... plus this many log-spaced early checkpoints below it
    keep_optim: int = 2  # optimizer/RNG state kept for the newest N checkpoints (resume needs one)
    stop_after_drop: int = 0  # >0: end this many steps after L_mask first falls 10x below plateau


@dataclass
class CurriculumConfig:
    """Training-data curriculum (an intervention; off by default). The evaluation batch always
    comes from the target distribution in `data`."""

    mean: float = 0.0  # factor-mean shift: training factors are U[low, high] + mean ...
    hold: int = 0  # ... for this many steps ...
    decay: int = 0  # ... then fall linearly to 0 over this many steps

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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = cls()
        for key in ("preset", "seed"):
            if key in d:
                setattr(cfg, key, d[key])
        for section in ("data", "model", "train", "curriculum"):
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

# Presets: (one-line description, overrides applied to the defaults above, which are the paper's).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "paper": (
        "the paper exactly: 4 layers, 8 heads, width 768, lr 1e-4, batch 256, 50k steps (GPU job)",
        {},
    ),
    "cpu": (
        "default: the paper's model family and procedure at CPU size on 7x7 rank 2 (docs/preset-search.md)",
        {**_CPU_RECIPE, "train.ckpt_every": 1000},
    ),
    "small": (
        "4x4 rank-1 matrices, p_mask 0.2, the cpu recipe: the fastest problem found that drops 10x on a 2-core CPU",
        {**_CPU_RECIPE, "data.m": 4, "data.n": 4, "data.rank": 1, "data.p_mask": 0.2, "train.ckpt_every": 500},
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

DEFAULT_PRESET = "cpu"


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    cfg = Config(preset=name)
    for key, value in PRESETS[name][1].items():
        set_key(cfg, key, value)
    return cfg


def _sections(cfg: Config) -> dict[str, Any]:
    return {"data": cfg.data, "model": cfg.model, "train": cfg.train, "curriculum": cfg.curriculum}


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
    if key == "preset":
        cfg.preset = str(raw)
        return
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
    need(d.m * d.n <= MAX_POSITIONS, f"data.m x data.n: at most {MAX_POSITIONS} entries (a sequence of m*n tokens), got {d.m}x{d.n}")
    need(d.distribution == "uniform" or d.clip,
         f"data.distribution={d.distribution} has unbounded support, so some entries fall outside the vocabulary "
         f"[-{VOCAB_MAX:g}, {VOCAB_MAX:g}]: set data.clip=true to clip them (recorded in config.json)")
    bound = max_abs_entry(d)
    if math.isfinite(bound) and not d.clip:
        need(
            bound <= VOCAB_MAX,
            f"data.low/data.high: rank {d.rank} products of U[{d.low}, {d.high}] reach |x| = {bound:g}, "
            f"beyond the vocabulary's [-{VOCAB_MAX:g}, {VOCAB_MAX:g}]; narrow the range or set data.clip=true",
        )


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
    need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
         f"train.device: must be auto, cpu, cuda or cuda:N, got '{t.device}'")
    need(t.log_every >= 1, f"train.log_every: must be >= 1, got {t.log_every}")
    need(t.eval_size >= 1, f"train.eval_size: must be >= 1, got {t.eval_size}")
    need(t.ckpt_every >= 1, f"train.ckpt_every: must be >= 1, got {t.ckpt_every}")
    need(t.ckpt_log_points >= 0, f"train.ckpt_log_points: must be >= 0, got {t.ckpt_log_points}")
    need(t.keep_optim >= 1, f"train.keep_optim: must be >= 1, got {t.keep_optim}")
    need(t.stop_after_drop >= 0, f"train.stop_after_drop: must be >= 0, got {t.stop_after_drop}")
    c = cfg.curriculum
    need(math.isfinite(c.mean), f"curriculum.mean: must be finite, got {c.mean}")
    need(c.hold >= 0 and c.decay >= 0, "curriculum.hold/decay: must be >= 0")
    need(not c.mean or cfg.data.distribution == "uniform", "curriculum.mean: only for data.distribution=uniform")
    if c.mean:
        shifted = dataclasses.replace(cfg.data, low=cfg.data.low + c.mean, high=cfg.data.high + c.mean)
        bound = max_abs_entry(shifted)
        need(shifted.clip or bound <= VOCAB_MAX,
             f"curriculum.mean: shifted factors reach |x| = {bound:g}, beyond the vocabulary; lower it or set data.clip=true")
