"""Typed run configuration: the schema (sections as dataclasses, their field docs and
validation), named presets and `section.key=value` overrides. Every value a run depends on lives
here, so that `config.json` in a run directory is enough to rebuild the run exactly; a bad value
is a `ConfigError` naming the key and what is allowed. Imports nothing else of abrupt: the rules
that need tasks or models are `checks.validate_run`; a task's or an intervention's own section is
declared in its module and added by `register_section`."""

from .overrides import apply_overrides
from .presets import DEFAULT_PRESET, PRESETS, preset
from .schema import (
    DISTRIBUTIONS,
    MAX_CHECKPOINTS,
    MAX_LOG_POINTS,
    MAX_LOG_ROWS,
    MAX_POSITIONS,
    MAX_SEED,
    VOCAB_MAX,
    CommaList,
    Config,
    ConfigError,
    CurriculumConfig,
    DataConfig,
    ModelConfig,
    TaskConfig,
    TrainConfig,
    all_keys,
    group_lr,
    key_type,
    layer_list,
    max_abs_entry,
    register_section,
    section_names,
    set_key,
    validate,
    validate_data,
)

__all__ = [
    "DEFAULT_PRESET",
    "DISTRIBUTIONS",
    "MAX_CHECKPOINTS",
    "MAX_LOG_POINTS",
    "MAX_LOG_ROWS",
    "MAX_POSITIONS",
    "MAX_SEED",
    "PRESETS",
    "VOCAB_MAX",
    "CommaList",
    "Config",
    "ConfigError",
    "CurriculumConfig",
    "DataConfig",
    "ModelConfig",
    "TaskConfig",
    "TrainConfig",
    "all_keys",
    "apply_overrides",
    "group_lr",
    "key_type",
    "layer_list",
    "max_abs_entry",
    "preset",
    "register_section",
    "section_names",
    "set_key",
    "validate",
    "validate_data",
]
