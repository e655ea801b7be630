"""Experiment trackers (`train.log_to`): each metrics.jsonl row streamed as scalars to TensorBoard
and/or Weights & Biases as it is logged (its numeric fields, under their metrics.jsonl names, at
the training step), the resolved configuration as hyper-parameters, and at the end of the run its
figures and summary.

    RUN/tensorboard/     TensorBoard event files (`tensorboard --logdir RUN`, or --logdir SWEEP
                         for all of a sweep's trials)
    RUN/wandb/           W&B's own files (wandb.init(dir=RUN); WANDB_MODE=offline works with no
                         network), and `run_id`: the W&B run a resume continues

metrics.jsonl stays the record: a tracker that raises is dropped with one `TrackerWarning` and
training goes on. A tracker is one class with the calls of `Tracker`, named in `TRACKERS`; its
package is an extra of the same name (`pip install 'abrupt[NAME]'`), imported only when used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from .config import ConfigError

# The columns of TensorBoard's HPARAMS tab (a sweep's trials side by side): the evaluation loss
# as it goes, and the summary's numbers once the run ends (logged as summary/<key>).
HPARAM_METRICS = (
    "eval_loss",
    "summary/final_loss",
    "summary/escape_step",
    "summary/drop_step",
    "summary/drop_factor",
)
CLOSING = "failed to close"


class TrackerWarning(UserWarning):
    """A tracker failed; it was dropped and training went on."""


@dataclass(frozen=True)
class RunInfo:
    """What a tracker is opened with, for one training segment."""

    run_dir: Path
    config: dict[str, Any]  # the resolved configuration (Config.to_dict())
    start: int  # 0 for a fresh run; on a resume the checkpoint's step (later rows are logged anew)
    resumed: bool = False  # a resume (from any checkpoint, step 0's included): trackers continue
    group: str = ""  # the sweep a trial belongs to (its directory's name); "" for a lone run
    quiet: bool = False  # the tracker's own console messages off (abrupt train --quiet, sweeps)


class Tracker(Protocol):
    module: ClassVar[str]  # the package it imports (find_spec'd before training starts)

    def __init__(self, run: RunInfo) -> None: ...

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """One metrics row's numeric fields at training step `step` (increasing)."""

    def finish(self, step: int, summary: dict[str, Any], figures: list[Path]) -> None:
        """The run's summary.json and its figures (PNG files) at the last step, once."""

    def close(self, ok: bool) -> None:
        """Flush and release; `ok` False when training ended by an error or an interruption."""


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}: the keys as overrides spell them."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and k != "step"}


class TensorBoard:
    """torch.utils.tensorboard's SummaryWriter on RUN/tensorboard/. A resume (also from step 0's
    checkpoint) writes with purge_step = the checkpoint's step + 1: TensorBoard drops the points an
    interrupted segment logged after that checkpoint, and the resumed segment's take their place;
    the hyper-parameters are those the fresh start wrote."""

    module = "tensorboard"

    def __init__(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(
            str(run.run_dir / "tensorboard"), purge_step=run.start + 1 if run.resumed else None
        )
        if not run.resumed:  # written at step 0, which a resume's purge keeps
            for part in hparams(flat(run.config), dict.fromkeys(HPARAM_METRICS)):
                self.writer.file_writer.add_summary(part)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, step: int, summary: dict[str, Any], figures: list[Path]) -> None:
        from matplotlib.image import imread

        for path in figures:
            self.writer.add_image(f"figures/{path.stem}", imread(path), step, dataformats="HWC")
        for key, value in _numbers(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, step)
        rows = "".join(f"| {k} | {v} |\n" for k, v in summary.items())
        self.writer.add_text("summary", f"| key | value |\n|---|---|\n{rows}", step)

    def close(self, ok: bool) -> None:
        self.writer.close()


class WandB:
    """A W&B run in RUN/wandb/ (project $WANDB_PROJECT or `abrupt`, named after the run directory,
    grouped by sweep); its id is kept in RUN/wandb/run_id, so that a resume continues it
    (resume="allow"). The mode is chosen before wandb.init, which never prompts: WANDB_MODE (W&B's
    own) when set, else online when W&B has credentials, else offline (one warning): offline
    writes RUN/wandb/offline-run-*/ for `wandb sync`."""

    module = "wandb"

    def __init__(self, run: RunInfo) -> None:
        import wandb

        id_file = run.run_dir / "wandb" / "run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "abrupt",
            dir=str(run.run_dir),
            id=id_file.read_text().strip() if id_file.exists() else None,  # None: a new run
            resume="allow",
            mode=wandb_mode(run.run_dir),
            name=run.run_dir.name,
            group=run.group or None,
            # abrupt's own progress lines stay on the terminal, not in W&B's console capture
            settings=wandb.Settings(console="off", silent=run.quiet),
        )
        id_file.write_text(self.run.id + "\n")
        # a resume may extend train.steps: the configuration is this segment's
        self.run.config.update(run.config, allow_val_change=True)
        # an online resume starts after the steps W&B holds: those an interrupted segment logged
        # past its checkpoint are there already, with the values the resume reproduces
        self.first = self.run.starting_step

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if step >= self.first:
            self.run.log(scalars, step=step)

    def finish(self, step: int, summary: dict[str, Any], figures: list[Path]) -> None:
        import wandb

        if figures and step >= self.first:
            self.run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}, step=step)
        self.run.summary.update(summary)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


def wandb_mode(run_dir: Path) -> str:
    """W&B's mode for a run in `run_dir`, decided without a login prompt (which would block
    training before its first step): $WANDB_MODE when set; else "online" when W&B finds an API key
    ($WANDB_API_KEY, its settings files or ~/.netrc), else "offline" with one UserWarning."""
    import wandb

    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if wandb.login(prompt=False, verify=False):  # False, asking nothing, when it has no key
        return "online"
    warnings.warn(
        f"train.log_to=wandb: no W&B API key (WANDB_API_KEY or `wandb login`), so the run goes "
        f"offline to {run_dir / 'wandb'}; `wandb sync {run_dir / 'wandb'}/offline-run-*` "
        "uploads it",
        UserWarning,
        stacklevel=2,
    )
    return "offline"


TRACKERS: dict[str, type[Tracker]] = {"tensorboard": TensorBoard, "wandb": WandB}


def names(spec: str) -> list[str]:
    """'tensorboard, wandb' -> ['tensorboard', 'wandb'] ('' -> []); ConfigError for a name not in
    TRACKERS."""
    found = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [n for n in found if n not in TRACKERS]
    if unknown:
        raise ConfigError(
            f"train.log_to: unknown tracker '{unknown[0]}'; use {' or '.join(TRACKERS)}, or "
            "several, comma-separated"
        )
    return found


def require(spec: str) -> None:
    """ConfigError (one line: the extra to install) when a named tracker's package is missing:
    raised before a run directory is made."""
    for name in names(spec):
        if importlib.util.find_spec(TRACKERS[name].module) is None:
            raise ConfigError(
                f"train.log_to={name} needs the {TRACKERS[name].module} package: "
                f"pip install 'abrupt[{name}]'"
            )


class Trackers:
    """The trackers of one training segment, each guarded: the first exception a tracker raises
    (opening, logging, finishing, closing) is one TrackerWarning, and that tracker is dropped.
    A context manager: leaving it closes them, `ok` False when an exception passes."""

    def __init__(self, spec: str = "", run: RunInfo | None = None) -> None:
        self.active: dict[str, Tracker] = {}
        for name in names(spec) if run is not None else []:
            try:
                self.active[name] = TRACKERS[name](run)
            except Exception as e:  # a tracker never stops training
                self._warn(name, "could not start", e)

    def _warn(self, name: str, what: str, e: BaseException) -> None:
        dropped = self.active.pop(name, None)
        if dropped is not None and what != CLOSING:  # what it holds is flushed if it can be
            with contextlib.suppress(Exception):
                dropped.close(False)
        warnings.warn(
            f"train.log_to: {name} {what} ({type(e).__name__}: {e}); it is dropped and training "
            "goes on (metrics.jsonl has every row)",
            TrackerWarning,
            stacklevel=3,
        )

    def _each(self, what: str, call: str, *args: Any) -> None:
        for name, tracker in list(self.active.items()):
            try:
                getattr(tracker, call)(*args)
            except Exception as e:  # a tracker never stops training
                self._warn(name, what, e)

    def log(self, row: dict[str, Any]) -> None:
        """A metrics row: its numeric fields (losses, norms, progress measures, forecast)."""
        if self.active:
            self._each("failed while logging", "log", row["step"], _numbers(row))

    def finish(self, summary: dict[str, Any], figures: list[Path]) -> None:
        self._each("failed at the end of the run", "finish", summary["steps"], summary, figures)

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind: type | None, *rest: Any) -> None:
        self._each(CLOSING, "close", kind is None)
        self.active.clear()
