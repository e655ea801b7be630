"""Typed run configuration, named presets and `section.key=value` overrides.

Every value a run depends on lives here, so that `config.json` in a run directory is enough to
rebuild the run exactly. Validation happens before anything is written: a bad value is a
`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, NewType

VOCAB_MAX = 10.0  # value tokens cover -10.00 .. 10.00 in steps of 0.01
MAX_POSITIONS = 1024  # m * n: attention is quadratic in it; the paper's 7x7 is 49
MAX_SEED = 2**62  # leaves room for the per-stream offsets added to the seed
MAX_CHECKPOINTS = 10_000  # per run (train.steps / train.ckpt_every)
# log-spaced early checkpoints (more cannot be distinct below any sane ckpt_every)
MAX_LOG_POINTS = 1_000
# metrics rows per run (train.steps / train.log_every), each kept in memory
MAX_LOG_ROWS = 1_000_000
DISTRIBUTIONS = ("uniform", "gaussian", "laplace", "signed")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


# The type of a key whose one value is itself a comma-separated list, held as its text
# (train.log_to=tensorboard,wandb, attn_bias.layers=0,1): `list` in the keys' docs. `abrupt sweep`
# reads `key=a,b` of such a key as that one value, where for any other key it is a grid of a and b.
CommaList = NewType("CommaList", str)


@dataclass
class DataConfig:
    """The matrices of the matrix task (paper Sec. 2): X = U V^T with i.i.d. factors, each entry
    hidden with probability p_mask, tokens rounded to 0.01."""

    #: rows of each matrix
    m: int = 7
    #: columns of each matrix
    n: int = 7
    #: rank of X = U V^T (U: m x rank, V: n x rank)
    rank: int = 2
    #: probability that an entry is hidden (MASK), independently per entry
    p_mask: float = 0.3
    #: factor law: uniform | gaussian | laplace | signed
    distribution: str = "uniform"
    #: uniform factors: U[low, high]
    low: float = -1.0
    #: uniform factors: the upper bound
    high: float = 1.0
    #: gaussian factors: N(0, sigma^2)
    sigma: float = 1.0
    #: laplace factors: Laplace(0, scale)
    scale: float = 0.25
    #: signed factors: a random sign times U[mag_low, mag_high] (zero mean, |factor| >= mag_low)
    mag_low: float = 0.3
    #: signed factors: the largest magnitude
    mag_high: float = 1.0
    #: clip values to [-10, 10] instead of refusing entries outside the vocabulary
    clip: bool = False
    #: a mixture of matrix sizes, e.g. 4x4,5x5,6x6 (equal shares); the largest must be m x n
    sizes: CommaList = ""

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
    """The transformer (paper Sec. 2: a 4-layer BERT, width 768, 8 heads)."""

    #: width of the residual stream (d_model; `model.hidden` in a config.json is read as this)
    width: int = 768
    #: transformer blocks
    layers: int = 4
    #: attention heads per block (must divide width)
    heads: int = 8
    #: width of each block's MLP
    mlp: int = 3072
    #: standard deviation of the normal initialisation of every weight
    init_std: float = 0.02
    #: initialisation of the position embeddings (0: init_std)
    pos_init_std: float = 0.0
    #: LayerNorm epsilon (the paper's BERT: 1e-12)
    ln_eps: float = 1e-12
    #: intervention: attention logits divided by this (1 = the paper)
    attn_temperature: float = 1.0
    #: bert (the paper's encoder) | gpt (the decoder-only variant, Fig. 11/12)
    arch: str = "bert"
    #: post (the paper's BERT: LayerNorm after each residual sum) | pre (LayerNorm before each
    #: sublayer)
    norm: str = "post"
    #: intervention: random (the paper) | line: value-token rows start at random + value * d
    #: (a number line; docs/plateau)
    value_init: str = "random"
    #: line: |d| = this times the expected norm of a random row
    value_init_scale: float = 1.0
    #: softmax | linear (the follow-up's: scores QK^T / sqrt(d_head), future keys 0, no softmax;
    #: gpt only)
    attention: str = "softmax"


@dataclass
class TrainConfig:
    """The optimisation (paper Sec. 2: Adam, lr 1e-4, batch 256, 50 000 steps, fresh data), the
    log, the checkpoints and the interventions applied during training."""

    #: optimizer steps
    steps: int = 50_000
    #: fresh examples per step
    batch_size: int = 256
    #: Adam's learning rate (constant after the warm-up)
    lr: float = 1e-4
    #: linear warm-up steps (0: constant lr, as in the paper)
    warmup: int = 0
    #: Adam's beta1
    beta1: float = 0.9
    #: Adam's beta2
    beta2: float = 0.999
    #: Adam's epsilon (torch's default); far above a weight's gradient scale, that weight's steps
    #: become SGD-like
    eps: float = 1e-8
    #: auto | cpu | cuda | cuda:N
    device: str = "auto"
    #: bf16 autocast of the training forward (for GPUs; it runs, slower, on a CPU); losses in fp32
    bf16: bool = False
    #: torch.compile the training forward (about 1.14x on the cpu preset, after ~1 min compiling)
    compile: bool = False
    #: steps between log rows (metrics.jsonl) and evaluations
    log_every: int = 50
    #: also stream each log row, the configuration, and at the end the figures and summary to
    #: experiment trackers: tensorboard, wandb or both, comma-separated; "" = none
    #: (docs/tracking.md)
    log_to: CommaList = ""
    #: examples of the fixed, seeded evaluation batch
    eval_size: int = 1024
    #: steps between checkpoints ...
    ckpt_every: int = 1000
    #: ... plus this many log-spaced early checkpoints below it
    ckpt_log_points: int = 8
    #: optimizer and RNG state kept for the newest N checkpoints (resume needs one)
    keep_optim: int = 2
    #: > 0: end this many steps after the loss first falls 10x below its plateau
    stop_after_drop: int = 0
    #: CUDA only: TF32 matmuls in training's steps and evaluations (not the data, not after)
    tf32: bool = False
    #: adam (the paper) | adamw (decoupled weight decay)
    optimizer: str = "adam"
    #: adamw only: the decoupled weight decay
    weight_decay: float = 0.0
    #: > 0: width rule, the lr used is lr * lr_width_ref / model.width (Adam's step per weight
    #: does not shrink with width)
    lr_width_ref: int = 0
    #: intervention: lr multipliers per parameter group, e.g. pos_embed=10,mlp=0.5
    #: (models/groups.py)
    group_lr: CommaList = ""
    #: intervention: gradient low-pass filter (Grokfast EMA) coefficient; 0 = off
    grokfast_alpha: float = 0.0
    #: ... the filtered gradient is amplified by this and added
    grokfast_lambda: float = 0.0
    #: forecast the escape step at each log (dynamics/forecast.py): metrics.jsonl and the progress
    #: line
    forecast: bool = True
    #: loss (the evaluation loss) or a logged progress measure, e.g. prog_attn_l0
    forecast_signal: str = "loss"
    #: the signal's departure at the escape (0: 0.2 for loss); a measure's comes from
    #: `abrupt forecast`
    forecast_target: float = 0.0
    #: log progress measures (attention row/column mass, collapse, position purity, per-group
    #: gradient norms)
    progress: bool = False
    #: start from another run's weights: RUN or RUN@STEP (default its last checkpoint)
    init_from: str = ""
    #: train only these parameter groups (comma-separated); the rest stay frozen
    trainable: CommaList = "all"
    #: re-initialise these groups (as at step 0) after init_from
    reinit: CommaList = ""
    #: > 0: clip the gradient's global norm to this (the follow-up's histogram: 1.0); 0 = off
    #: (`train.clip` in a config.json is read as this)
    grad_clip: float = 0.0


@dataclass
class TaskConfig:
    """What the model learns (one module per task in src/abrupt/tasks/). `matrix` is the paper's
    masked matrix completion, parameterised by the `data` section; the others are the follow-up's
    sequence tasks (Gopalani & Hu 2025): a decoder reads `length` inputs and a separator, then
    writes the outputs, with next-token cross-entropy on the outputs only."""

    #: a module of src/abrupt/tasks/ (an unknown name's error lists them; `abrupt presets` has
    #: a preset named after each sequence task)
    name: str = "matrix"
    #: inputs per sequence (mws, prefix_sum, histogram, permutation)
    length: int = 16
    #: inputs drawn uniformly from low..high (mws, prefix_sum, permutation)
    low: int = 1
    #: the largest input
    high: int = 16
    #: mws, prefix_sum: outputs are sums mod this
    modulus: int = 17


@dataclass
class CurriculumConfig:
    """Training-data curriculum (an intervention; off by default). The evaluation batch always
    comes from the target distribution in `data`."""

    #: factor-mean shift: training factors are U[low, high] + mean ...
    mean: float = 0.0
    #: ... for this many steps ...
    hold: int = 0
    #: ... then fall linearly to 0 over this many steps
    decay: int = 0
    #: > 0: training matrices of this rank for the first `hold` steps
    rank: int = 0
    #: >= 0: training masks at this rate for the first `hold` steps (-1: off)
    p_mask: float = -1.0

    def end(self) -> int:
        """The last step of the curriculum (0 when none is active)."""
        active = bool(self.mean) or bool(self.rank) or self.p_mask >= 0
        return self.hold + self.decay if active else 0

    def data_at(self, data: "DataConfig", step: int) -> "DataConfig":
        """The training data's configuration at `step` (the target `data` once the curriculum
        ends)."""
        if step > self.hold or (not self.rank and self.p_mask < 0):
            return data
        return dataclasses.replace(
            data,
            rank=self.rank or data.rank,
            p_mask=data.p_mask if self.p_mask < 0 else self.p_mask,
        )

    def shift(self, step: int) -> float:
        """The factor-mean shift of the training batch at `step` (1-based)."""
        if not self.mean or step > self.hold + self.decay:
            return 0.0
        if step <= self.hold:
            return self.mean
        return self.mean * (1.0 - (step - self.hold) / self.decay)


SECTIONS = ("data", "model", "train", "curriculum", "task")

# The sections declared outside this package, {name: dataclass}: a task's or an intervention's own
# settings, in its module (tasks/, interventions/), added by `register_section` when abrupt is
# imported.
PLUGIN_SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> None:
    """Add the section `name`, a dataclass `cls` (keys `name.field` of type int, float, str, bool
    or CommaList, a `#:` doc above each field as in this module's sections; an optional
    `check(self, cfg)` raising ConfigError is run by `validate`). Raises ValueError for a name the
    schema already uses or a field of another type."""
    if name in (*SECTIONS, "seed", "preset") or PLUGIN_SECTIONS.get(name, cls) is not cls:
        raise ValueError(f"configuration section '{name}' is declared twice")
    for f in dataclasses.fields(cls):
        if _type_name(f) not in _TYPES:
            raise ValueError(
                f"configuration key {name}.{f.name}: its type must be one of "
                f"{', '.join(_TYPES)}, not {_type_name(f)}"
            )
    PLUGIN_SECTIONS[name] = cls
    field_docs.cache_clear()


def section_names() -> tuple[str, ...]:
    """Every section, the schema's first, then the plugins' sorted by name."""
    return (*SECTIONS, *sorted(PLUGIN_SECTIONS))


@dataclass(eq=False)
class Config:
    """A run's whole configuration: the preset it started from, the seed, five sections and those
    of the tasks and interventions (`PLUGIN_SECTIONS`, read as attributes:
    `cfg.attn_bias.factor`)."""

    #: the preset the run's values started from (set by --preset, never by an override)
    preset: str = "paper"
    #: the seed of model initialisation, training data and evaluation data (separate streams)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def __getattr__(self, name: str) -> Any:
        # Called only when `name` is not set yet: a plugin section starts at its defaults.
        cls = PLUGIN_SECTIONS.get(name)
        if cls is None:
            raise AttributeError(f"'Config' object has no attribute '{name}'")
        setattr(self, name, cls())
        return self.__dict__[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """{preset, seed, section: {field: value}} for every section (config.json)."""
        out = {"preset": self.preset, "seed": self.seed}
        for name in section_names():
            out[name] = dataclasses.asdict(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], check: bool = True) -> "Config":
        """The configuration a dict (config.json) holds, typed key by key; validated against the
        schema unless `check` is False (the caller validates: run.rundir.read_config runs
        checks.validate_run, which names an unknown task or architecture first). ConfigError for
        a section no part of abrupt declares."""
        cfg = cls()
        if "preset" in d:
            cfg.preset = d["preset"]
        if "seed" in d:  # typed as every other key is: an int, not a float or a string
            set_key(cfg, "seed", d["seed"])
        for section in d:
            if section in ("preset", "seed"):
                continue
            if section not in section_names():
                raise ConfigError(
                    f"unknown section '{section}'; sections are: {', '.join(section_names())}"
                )
            for k, v in d[section].items():
                set_key(cfg, f"{section}.{k}", v)
        if check:
            validate(cfg)
        return cfg


@functools.cache  # read from the source: every command builds its --help text from it
def field_docs() -> dict[str, tuple[str, Any, str]]:
    """{key: (type, default, meaning)} of every configuration key, in schema order: `seed`, then
    `section.field`, from the `#:` comments above each field (what `--help` and
    docs/configuration.md print)."""
    import inspect

    out: dict[str, tuple[str, Any, str]] = {}
    defaults = Config()
    for prefix, cls, obj in [("", Config, defaults)] + [
        (f"{name}.", type(getattr(defaults, name)), getattr(defaults, name))
        for name in section_names()
    ]:
        docs: dict[str, str] = {}
        pending: list[str] = []
        for line in inspect.getsource(cls).splitlines():
            text = line.strip()
            if text.startswith("#:"):
                pending.append(text[2:].strip())
            elif pending and ":" in text and not text.startswith(("def ", "@", "#", '"')):
                docs[text.split(":", 1)[0].strip()] = " ".join(pending)
                pending = []
        for f in dataclasses.fields(cls):
            if prefix == "" and f.name in SECTIONS:
                continue
            out[prefix + f.name] = (_shown(f), getattr(obj, f.name), docs.get(f.name, ""))
    return {k: out[k] for k in ["seed", *(k for k in out if k not in ("seed", "preset"))]}


def _sections(cfg: Config) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in section_names()}


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
            return _integer(key, text, raw)
        if typ is float:
            try:
                return float(text)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got '{raw}'") from None
        return text
    if typ is bool and not isinstance(raw, bool):
        raise ConfigError(f"{key}: expected true/false, got {raw!r}")
    if typ is int and (isinstance(raw, bool) or not isinstance(raw, int)):
        # a float (from JSON) stands for an integer only where every integer is a float: above
        # 2^53 it may already be its neighbour
        if isinstance(raw, float) and raw.is_integer() and abs(raw) <= 2**53:
            return int(raw)
        raise ConfigError(f"{key}: expected an integer, got {raw!r}")
    if typ is float and (isinstance(raw, bool) or not isinstance(raw, (int, float))):
        raise ConfigError(f"{key}: expected a number, got {raw!r}")
    if typ is float:
        return float(raw)
    if typ is str and not isinstance(raw, str):
        raise ConfigError(f"{key}: expected a string, got {raw!r}")
    return raw


# digits an integer key may be written with (1e400 would otherwise be built digit by digit)
MAX_INT_DIGITS = 100


def _integer(key: str, text: str, raw: str) -> int:
    """`text` as an exact integer: 12, 1_000, or an integral decimal such as 1e4 or 32.0, read
    through Decimal, never through a float (which rounds above 2^53). ConfigError otherwise."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        d = decimal.Decimal(text)
    except decimal.InvalidOperation:
        d = None
    if d is None or not d.is_finite() or d != d.to_integral_value():
        raise ConfigError(f"{key}: expected an integer, got '{raw}'")
    if d.adjusted() >= MAX_INT_DIGITS:
        raise ConfigError(
            f"{key}: expected an integer of at most {MAX_INT_DIGITS} digits, got '{raw}'"
        )
    return int(d)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "CommaList": str}


def _type_name(f: dataclasses.Field) -> str:
    """A field's type as one of _TYPES' names: the annotation is a string under `from __future__
    import annotations`, the type itself in a module without it (a plugin's section may be
    either)."""
    name = f.type if isinstance(f.type, str) else f.type.__name__
    return name.rpartition(".")[2]


def _shown(f: dataclasses.Field) -> str:
    """A field's type as the keys' docs name it: `list` for a CommaList."""
    name = _type_name(f)
    return "list" if name == "CommaList" else name


# Old key names, each read as its current name (in config.json, sweep specs and overrides).
RENAMED = {
    "model.hidden": "model.width",
    "train.clip": "train.grad_clip",
    "model.attn_bias": "attn_bias.factor",
    "model.attn_bias_layers": "attn_bias.layers",
    "model.attn_bias_until": "attn_bias.until",
    "task.attn_scale": "attn_scale.factor",
    "task.attn_scale_from": "attn_scale.start",
    "task.attn_scale_layers": "attn_scale.layers",
    "task.alphabet": "histogram.alphabet",
    "task.digits": "addition.digits",
}


def key_type(key: str) -> str:
    """The type of `section.key` (or `seed`): int, float, str, bool, or list (a CommaList). A
    renamed key's old name is its new one; ConfigError for a key the schema lacks."""
    key = RENAMED.get(key, key)
    return "int" if key == "seed" else _shown(_field(Config(), key)[1])


def _field(cfg: Config, key: str) -> tuple[Any, dataclasses.Field]:
    """The section of `cfg` that holds `section.key` (a current name) and the key's field."""
    if key == "preset":  # the label of the values a run started from: an override would relabel it
        raise ConfigError(
            "preset: not a key; choose the preset with --preset NAME (or a sweep spec's preset:)"
        )
    section_name, _, name = key.partition(".")
    sections = _sections(cfg)
    if section_name not in sections or not name:
        raise ConfigError(f"unknown key '{key}'; keys look like data.m, model.width, train.lr")
    section = sections[section_name]
    fields = {f.name: f for f in dataclasses.fields(section)}
    if name not in fields:
        raise ConfigError(f"unknown key '{key}'; {section_name} keys are: {', '.join(fields)}")
    return section, fields[name]


def set_key(cfg: Config, key: str, raw: Any) -> None:
    """Set `section.key` (or `seed`) from a string or a typed value, with type checking; a renamed
    key's old name (RENAMED) sets the new one."""
    key = RENAMED.get(key, key)
    if key == "seed":
        cfg.seed = _coerce(key, raw, int)
        return
    section, f = _field(cfg, key)
    setattr(section, f.name, _coerce(key, raw, _TYPES[_type_name(f)]))


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
    need(
        1 <= d.rank <= min(d.m, d.n),
        f"data.rank: must be in [1, min(m, n)] = [1, {min(d.m, d.n)}], got {d.rank}",
    )
    need(0.0 <= d.p_mask < 1.0, f"data.p_mask: must be in [0, 1), got {d.p_mask}")
    need(
        d.distribution in DISTRIBUTIONS,
        f"data.distribution: must be one of {', '.join(DISTRIBUTIONS)}, got '{d.distribution}'",
    )
    if d.distribution == "uniform":
        need(d.low < d.high, f"data.low/data.high: need low < high, got [{d.low}, {d.high}]")
    need(
        math.isfinite(d.low) and math.isfinite(d.high),
        f"data.low/data.high: must be finite, got [{d.low}, {d.high}]",
    )
    need(0 < d.sigma < math.inf, f"data.sigma: must be a positive number, got {d.sigma}")
    need(0 < d.scale < math.inf, f"data.scale: must be a positive number, got {d.scale}")
    need(
        0 <= d.mag_low < d.mag_high < math.inf,
        "data.mag_low/data.mag_high: need 0 <= mag_low < mag_high, "
        f"got [{d.mag_low}, {d.mag_high}]",
    )
    sizes = d.size_list()
    if d.sizes.strip():
        need(
            len(set(sizes)) == len(sizes) and len(sizes) >= 2,
            f"data.sizes: give two or more distinct sizes, got '{d.sizes}'",
        )
        need(
            max(r for r, _ in sizes) == d.m and max(c for _, c in sizes) == d.n,
            f"data.sizes: the largest rows and columns must be data.m x data.n = {d.m}x{d.n} (the "
            f"model's grid), got '{d.sizes}'",
        )
        need(
            all(d.rank <= min(r, c) for r, c in sizes),
            f"data.sizes: data.rank {d.rank} exceeds a size in '{d.sizes}'",
        )
    need(
        d.m * d.n <= MAX_POSITIONS,
        f"data.m x data.n: at most {MAX_POSITIONS} entries (a sequence of m*n tokens), got "
        f"{d.m}x{d.n}",
    )
    need(
        d.distribution in ("uniform", "signed") or d.clip,
        f"data.distribution={d.distribution} has unbounded support, so some entries fall outside "
        "the vocabulary "
        f"[-{VOCAB_MAX:g}, {VOCAB_MAX:g}]: set data.clip=true to clip them (recorded in "
        "config.json)",
    )
    bound = max_abs_entry(d)
    if math.isfinite(bound) and not d.clip:
        need(
            bound <= VOCAB_MAX,
            f"data: rank-{d.rank} products of its factors reach |x| = {bound:g}, "
            f"beyond the vocabulary's [-{VOCAB_MAX:g}, {VOCAB_MAX:g}]; narrow the range or set "
            "data.clip=true",
        )


def group_lr(spec: str) -> dict[str, float]:
    """'pos_embed=10,mlp=0.5' -> {'pos_embed': 10.0, 'mlp': 0.5}. ConfigError for an item that is
    not GROUP=POSITIVE_NUMBER or a group given twice (which would keep its last number)."""
    out = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        name, sep, value = item.partition("=")
        try:
            scale = float(value)
        except ValueError:
            scale = math.nan
        if not sep or not 0 < scale < math.inf:
            raise ConfigError(f"train.group_lr: '{item}' is not GROUP=POSITIVE_NUMBER")
        if name.strip() in out:
            raise ConfigError(f"train.group_lr: group '{name.strip()}' given twice")
        out[name.strip()] = scale
    return out


def layer_list(spec: str, layers: int, key: str) -> list[int]:
    """'0,2' -> [0, 2]; '' -> every layer. Raises ConfigError naming `key` for a layer the model
    lacks."""
    if not spec.strip():
        return list(range(layers))
    out = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        if not item.isdigit() or int(item) >= layers:
            raise ConfigError(f"{key}: '{item}' is not a layer of 0..{layers - 1}")
        out.append(int(item))
    return sorted(set(out))


def _check_variants(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    need = _need
    need(m.norm in ("post", "pre"), f"model.norm: must be post or pre, got '{m.norm}'")
    need(
        m.value_init in ("random", "line"),
        f"model.value_init: must be random or line, got '{m.value_init}'",
    )
    need(
        0 < m.value_init_scale < math.inf,
        f"model.value_init_scale: must be a positive number, got {m.value_init_scale}",
    )
    need(t.lr_width_ref >= 0, f"train.lr_width_ref: must be >= 0 (0 = off), got {t.lr_width_ref}")
    need(
        t.forecast_signal == "loss" or t.forecast_signal.startswith("prog_"),
        "train.forecast_signal: must be loss or a progress measure (prog_...), got "
        f"'{t.forecast_signal}'",
    )
    need(
        0 <= t.forecast_target < math.inf,
        f"train.forecast_target: must be a number >= 0, got {t.forecast_target}",
    )
    need(
        t.forecast_signal == "loss" or (t.progress and t.forecast_target > 0),
        "train.forecast_signal: a progress measure needs train.progress=true and its "
        "train.forecast_target "
        "(the departure at past escapes: `abrupt forecast` prints it)",
    )


def _check_task(cfg: Config) -> None:
    k, m = cfg.task, cfg.model
    need = _need
    need(
        m.attention in ("softmax", "linear"),
        f"model.attention: must be softmax or linear, got '{m.attention}'",
    )
    need(
        cfg.train.grad_clip >= 0 and math.isfinite(cfg.train.grad_clip),
        f"train.grad_clip: must be a number >= 0 (0 = off), got {cfg.train.grad_clip}",
    )
    if k.name == "matrix":  # the default task, the one the data section describes
        return
    need(2 <= k.length <= 256, f"task.length: must be in [2, 256], got {k.length}")
    need(
        1 <= k.low <= k.high <= 1000,
        f"task.low/task.high: need 1 <= low <= high <= 1000, got [{k.low}, {k.high}]",
    )
    need(
        k.modulus > k.high,
        f"task.modulus: must exceed task.high ({k.high}) so that y_1 = x_1 is an output value, "
        f"got {k.modulus}",
    )
    need(k.modulus <= 1000, f"task.modulus: at most 1000, got {k.modulus}")


def validate(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    need = _need
    need(0 <= cfg.seed < MAX_SEED, f"seed: must be in [0, 2^62), got {cfg.seed}")
    validate_data(cfg.data)
    need(m.width >= 1, f"model.width: must be >= 1, got {m.width}")
    need(m.layers >= 1, f"model.layers: must be >= 1, got {m.layers}")
    need(m.heads >= 1, f"model.heads: must be >= 1, got {m.heads}")
    need(
        m.width % m.heads == 0,
        f"model.heads: must divide model.width ({m.width}), got {m.heads}",
    )
    need(m.mlp >= 1, f"model.mlp: must be >= 1, got {m.mlp}")
    need(0 < m.init_std < math.inf, f"model.init_std: must be a positive number, got {m.init_std}")
    need(
        0 <= m.pos_init_std < math.inf,
        f"model.pos_init_std: must be a number >= 0 (0 = init_std), got {m.pos_init_std}",
    )
    need(0 < m.ln_eps < 1, f"model.ln_eps: must be in (0, 1), got {m.ln_eps}")
    need(t.steps >= 1, f"train.steps: must be >= 1, got {t.steps}")
    need(t.batch_size >= 1, f"train.batch_size: must be >= 1, got {t.batch_size}")
    need(t.lr > 0 and math.isfinite(t.lr), f"train.lr: must be a positive number, got {t.lr}")
    need(t.warmup >= 0, f"train.warmup: must be >= 0, got {t.warmup}")
    need(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1/beta2: must be in [0, 1)")
    need(0 < t.eps < 1, f"train.eps: must be in (0, 1), got {t.eps}")
    need(
        re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
        f"train.device: must be auto, cpu, cuda or cuda:N, got '{t.device}'",
    )
    need(t.log_every >= 1, f"train.log_every: must be >= 1, got {t.log_every}")
    need(t.eval_size >= 1, f"train.eval_size: must be >= 1, got {t.eval_size}")
    if cfg.data.sizes.strip():  # a mixture gives each size an equal share of every batch, in turn
        k = len(cfg.data.size_list())
        for key, count in (("train.batch_size", t.batch_size), ("train.eval_size", t.eval_size)):
            need(
                count >= k,
                f"{key}={count} is below the {k} sizes of data.sizes: some sizes would never be "
                f"{'trained' if key == 'train.batch_size' else 'evaluated'}; use at least {k}",
            )
    need(t.ckpt_every >= 1, f"train.ckpt_every: must be >= 1, got {t.ckpt_every}")
    need(
        0 <= t.ckpt_log_points <= MAX_LOG_POINTS,
        f"train.ckpt_log_points: must be in [0, {MAX_LOG_POINTS}], got {t.ckpt_log_points}",
    )
    # Checkpoints and log rows are files and memory that grow with the run: refuse a run that would
    # fill a disk or the memory rather than find out hours in.
    need(
        t.steps // t.ckpt_every <= MAX_CHECKPOINTS,
        f"train.ckpt_every={t.ckpt_every}: {t.steps} steps would write {t.steps // t.ckpt_every} "
        "checkpoints, "
        f"at most {MAX_CHECKPOINTS}; raise train.ckpt_every to at least "
        f"{-(-t.steps // MAX_CHECKPOINTS)}",
    )
    need(
        t.steps // t.log_every <= MAX_LOG_ROWS,
        f"train.log_every={t.log_every}: {t.steps} steps would log {t.steps // t.log_every} rows, "
        f"at most {MAX_LOG_ROWS}; raise train.log_every to at least {-(-t.steps // MAX_LOG_ROWS)}",
    )
    need(t.keep_optim >= 1, f"train.keep_optim: must be >= 1, got {t.keep_optim}")
    need(t.stop_after_drop >= 0, f"train.stop_after_drop: must be >= 0, got {t.stop_after_drop}")
    need(
        0 < m.attn_temperature < math.inf,
        f"model.attn_temperature: must be a positive number, got {m.attn_temperature}",
    )
    need(
        t.optimizer in ("adam", "adamw"),
        f"train.optimizer: must be adam or adamw, got '{t.optimizer}'",
    )
    need(
        0 <= t.weight_decay < math.inf,
        f"train.weight_decay: must be a number >= 0, got {t.weight_decay}",
    )
    need(
        t.weight_decay == 0 or t.optimizer == "adamw",
        "train.weight_decay: only with train.optimizer=adamw (Adam's L2 is not what you want)",
    )
    need(
        0 <= t.grokfast_alpha < 1,
        f"train.grokfast_alpha: must be in [0, 1), got {t.grokfast_alpha}",
    )
    need(
        0 <= t.grokfast_lambda < math.inf,
        f"train.grokfast_lambda: must be a number >= 0, got {t.grokfast_lambda}",
    )
    _check_variants(cfg)
    _check_task(cfg)
    for name in sorted(PLUGIN_SECTIONS):  # an intervention's own rules, in its module
        check = getattr(getattr(cfg, name), "check", None)
        if check is not None:
            check(cfg)
    c = cfg.curriculum
    need(
        0 <= c.rank <= min(cfg.data.m, cfg.data.n),
        f"curriculum.rank: must be in [0, {min(cfg.data.m, cfg.data.n)}] (0 = off), got {c.rank}",
    )
    need(
        c.p_mask == -1.0 or 0 <= c.p_mask < 1,
        f"curriculum.p_mask: must be in [0, 1), or -1 for off, got {c.p_mask}",
    )
    need(math.isfinite(c.mean), f"curriculum.mean: must be finite, got {c.mean}")
    need(c.hold >= 0 and c.decay >= 0, "curriculum.hold/decay: must be >= 0")
    need(
        not c.mean or cfg.data.distribution in ("uniform", "signed"),
        "curriculum.mean: only for data.distribution=uniform or signed",
    )
    if c.mean or c.rank:
        shifted = dataclasses.replace(
            cfg.data,
            low=cfg.data.low + c.mean,
            high=cfg.data.high + c.mean,
            mag_high=cfg.data.mag_high + abs(c.mean),
            rank=max(c.rank, cfg.data.rank),
        )
        bound = max_abs_entry(shifted)
        need(
            shifted.clip or bound <= VOCAB_MAX,
            f"curriculum: its training data reach |x| = {bound:g}, beyond the vocabulary; lower "
            "curriculum.mean/rank or set data.clip=true",
        )
