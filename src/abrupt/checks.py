"""`validate_run(cfg)`: every rule a run's configuration must meet, in one place. The schema's own
rules (config.validate) and those that need the registries: the task exists and accepts the
configuration, the architecture exists, the named parameter groups exist in that model, the
trackers of train.log_to exist, the model takes the interventions the run turns on."""

from __future__ import annotations

from . import interventions, tasks, tracking
from .config import Config, ConfigError, group_lr, validate
from .models import groups
from .models.registry import ARCHS, supports


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _check_capabilities(cfg: Config) -> None:
    """The options only some architectures build, by the capabilities their class declares
    (`supports`, models/registry.py)."""
    m = cfg.model
    for on, capability, msg in (
        (
            m.norm == "pre",
            "norm_pre",
            f"model.norm=pre: built for model.arch=bert (the GPT variant is pre-LN already), "
            f"not {m.arch}",
        ),
        (
            m.value_init == "line",
            "value_init_line",
            f"model.value_init=line: built for model.arch=bert, not {m.arch}",
        ),
        (
            m.attention == "linear",
            "attention_linear",
            f"model.attention=linear: built for the decoder (model.arch=gpt), not {m.arch}",
        ),
        (
            bool(cfg.data.sizes.strip()),
            "size_mixtures",
            f"data.sizes: size mixtures are built for model.arch=bert only, not {m.arch}",
        ),
        (
            cfg.task.name == "matrix" and cfg.train.progress,
            "matrix_progress",
            "train.progress: on matrices the progress measures are built for model.arch=bert "
            f"only, not {m.arch}",
        ),
    ):
        _need(not on or supports(m.arch, capability), msg)
    for name in interventions.names():
        intervention = interventions.get(name)
        needs = getattr(intervention, "needs", None)
        _need(
            needs is None or not intervention.used(cfg) or supports(m.arch, needs),
            f"{intervention.key}: model.arch={m.arch} cannot take this intervention (its class "
            f"lacks the capability '{needs}')",
        )


def validate_run(cfg: Config) -> Config:
    """Raise ConfigError (one line, naming the key) for a configuration no run can train; returns
    cfg."""
    m, t, k = cfg.model, cfg.train, cfg.task
    _need(m.arch in ARCHS, f"model.arch: must be one of {', '.join(ARCHS)}, got '{m.arch}'")
    _need(
        k.name in tasks.names(),
        f"task.name: must be one of {', '.join(tasks.names())}, got '{k.name}'",
    )
    validate(cfg)
    _check_capabilities(cfg)
    tracking.names(t.log_to)
    try:
        tasks.get(k.name).check(cfg)  # the task's own rules (the layers it defines correct keys in)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for key, spec in (
        ("train.trainable", t.trainable),
        ("train.reinit", t.reinit),
        ("train.group_lr", ",".join(group_lr(t.group_lr))),
    ):
        try:
            groups.check(groups.split(spec), m.layers)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    for key, spec in (("train.trainable", t.trainable), ("train.reinit", t.reinit)):
        lacking = groups.absent(groups.split(spec), m)
        _need(
            not lacking,
            f"{key}: model.arch={m.arch} has no parameters in group(s) {', '.join(lacking)}",
        )
    _need(
        bool(groups.split(t.trainable)),
        "train.trainable: name at least one group (all = everything)",
    )
    _need(
        not t.reinit or t.init_from,
        "train.reinit: only with train.init_from (re-initialise part of a trained model)",
    )
    return cfg
