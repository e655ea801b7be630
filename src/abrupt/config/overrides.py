"""`section.key=value` overrides, as given on the command line and in sweep specs."""

from __future__ import annotations

from .schema import Config, ConfigError, set_key, validate


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Set each `section.key=value` on `cfg` (in place; also returned) and validate the result
    against the schema (checks.validate_run adds the rules that need tasks and models)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        set_key(cfg, key.strip(), value)
    validate(cfg)
    return cfg
