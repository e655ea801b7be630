"""A run's summary.json and figures, (re)written from its metrics.jsonl: at the end of training, by
`abrupt plot RUN`, and for each finished sweep trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import plots, tasks
from ..config import Config
from ..dynamics import forecast, transition
from ..run.rundir import atomic_write_json, read_config, read_metrics


def finish(
    run_dir: Path, seconds: float | None = None, cfg: Config | None = None
) -> dict[str, Any]:
    """(Re)write summary.json and loss.png from metrics.jsonl; with logged forecasts also
    forecast.png and summary.json's `forecast_record` (how they fared, forecast.record; where
    that fails, {'error': its one-line message}, and the rest is written all the same). `cfg`:
    the run's configuration (None: read from its config.json), which gives the curriculum's end
    and the run's kind (`Task.run_kind`); a folder of metrics alone (no config.json) is read with
    no curriculum and its kind told from the metrics' keys (`transition.run_kind`)."""

    run_dir = Path(run_dir)
    if cfg is None and (run_dir / "config.json").exists():
        cfg = read_config(run_dir)
    kind = None if cfg is None else tasks.get(cfg.task.name).run_kind(cfg)
    after = 0 if cfg is None else cfg.curriculum.end()
    rows = read_metrics(run_dir)
    summary = transition.summarize(rows, seconds, after=after, kind=kind)
    forecasts = any("forecast_escape" in r for r in rows)
    if forecasts:
        try:
            summary["forecast_record"] = forecast.record(rows, summary["escape_step"])
        except Exception as e:  # noqa: BLE001 - the record is advice: the summary is still written
            line = f"{type(e).__name__}: {e}".splitlines()[0]
            summary["forecast_record"] = {"error": line}
    atomic_write_json(run_dir / "summary.json", summary)
    plots.plot_losses(rows, summary, run_dir / "loss.png", kind)
    if forecasts:
        plots.plot_forecast(rows, summary, run_dir / "forecast.png")
    return summary


def figures(run_dir: Path) -> list[Path]:
    """The figures finish() wrote for the run (loss.png; forecast.png when it forecast)."""
    return [p for p in (Path(run_dir) / n for n in ("loss.png", "forecast.png")) if p.exists()]
