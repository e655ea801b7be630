"""Experiment trackers (`train.log_to`): each metrics.jsonl row streamed as scalars to TensorBoard
and/or Weights & Biases as it is logged (its numeric fields, under their metrics.jsonl names, at
the training step), the resolved configuration as hyper-parameters, and at the end of the run its
figures and summary.

    RUN/tensorboard/     TensorBoard event files (`tensorboard --logdir RUN`, or --logdir SWEEP
                         for all of a sweep's trials)
    RUN/wandb/           W&B's own files (wandb.init(dir=RUN); WANDB_MODE=offline works with no
                         network), and `run_id`: the W&B run a resume continues

metrics.jsonl stays the record: a tracker that raises is dropped with one `TrackerWarning` and
training goes on, and a resumed tracker is given the record's rows so far to replay those it does
not hold (a killed segment's unflushed ones), so that it ends with each row once. A tracker is one
class with the calls of `Tracker`, named in `TRACKERS`; its package is an extra of the same name
(`pip install 'abrupt[NAME]'`), imported only when used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import struct
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Protocol

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
# How a training segment ends (`outcome`): it reached its last step or its stop rule; it raised
# (divergence, a full disk, ...); or it was interrupted (Ctrl-C, SIGTERM: it resumes).
SUCCESS, FAILURE, INTERRUPTED = "success", "failure", "interrupted"


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
    # metrics.jsonl's rows up to `start` (a resume's record so far; none for a fresh run): a
    # resumed tracker replays those it does not hold
    rows: tuple[dict[str, Any], ...] = ()


class Tracker(Protocol):
    module: ClassVar[str]  # the package it imports (find_spec'd before training starts)

    def __init__(self, run: RunInfo) -> None: ...

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """One metrics row's numeric fields at training step `step` (increasing)."""

    def finish(self, step: int, summary: dict[str, Any], figures: list[Path]) -> None:
        """The run's summary.json and its figures (PNG files) at the last step, once."""

    def close(self, outcome: str) -> None:
        """Flush and release; `outcome`: how the segment ended (SUCCESS, FAILURE, INTERRUPTED)."""


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


def outcome(kind: type | None) -> str:
    """How a segment ended, from the type of the exception that left it (None: none)."""
    if kind is None:
        return SUCCESS
    return INTERRUPTED if issubclass(kind, KeyboardInterrupt) else FAILURE


class TensorBoard:
    """torch.utils.tensorboard's SummaryWriter on RUN/tensorboard/. A fresh run writes the
    hyper-parameters at step 0. A resume (also from step 0's checkpoint) writes with purge_step=1,
    so that TensorBoard drops every point earlier segments logged (rows start at step 1), and
    replays the record's rows: whatever a killed segment left (points past its checkpoint, or
    fewer: its writer's unflushed queue is lost), it then holds each row once. The HPARAMS
    session's end status is written as the segment ends, by its outcome: STATUS_SUCCESS or
    STATUS_FAILURE; an interrupted segment writes none (Unknown, as a killed one), since
    TensorBoard keeps the first status a run writes and its resume's is the outcome."""

    module = "tensorboard"
    STATUS = {SUCCESS: "STATUS_SUCCESS", FAILURE: "STATUS_FAILURE"}

    def __init__(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(
            str(run.run_dir / "tensorboard"), purge_step=1 if run.resumed else None
        )
        if not run.resumed:
            # at step 0, which a resume's purge keeps; hparams' third part, an end status of
            # success, is not the outcome yet: close() writes the real one
            experiment, session_start, _ = hparams(flat(run.config), dict.fromkeys(HPARAM_METRICS))
            for part in (experiment, session_start):
                self.writer.file_writer.add_summary(part)
            self.writer.flush()  # a resume never writes them again
        self.last = run.start  # the last step logged: where the end status goes
        for row in run.rows:
            self.log(row["step"], _numbers(row))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.last = step

    def finish(self, step: int, summary: dict[str, Any], figures: list[Path]) -> None:
        from matplotlib.image import imread

        for path in figures:
            self.writer.add_image(f"figures/{path.stem}", imread(path), step, dataformats="HWC")
        for key, value in _numbers(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, step)
        rows = "".join(f"| {k} | {v} |\n" for k, v in summary.items())
        self.writer.add_text("summary", f"| key | value |\n|---|---|\n{rows}", step)

    def close(self, outcome: str) -> None:
        if outcome in self.STATUS:
            self.writer.file_writer.add_summary(_session_end(self.STATUS[outcome]), self.last)
        self.writer.close()


def _session_end(status: str) -> Any:
    """TensorBoard's HPARAMS session end (a Summary) with `status` (api.proto's Status name) and
    the time now; as torch.utils.tensorboard.summary.hparams builds it, whose is always a
    success."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(
            status=api_pb2.Status.Value(status), end_time_secs=time.time()
        ),
        version=metadata.PLUGIN_DATA_VERSION,
    )
    plugin = SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()
    )
    return Summary(
        value=[
            Summary.Value(
                tag=metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin)
            )
        ]
    )


class WandB:
    """A W&B run in RUN/wandb/ (project $WANDB_PROJECT or `abrupt`, named after the run directory,
    grouped by sweep); its id is kept in RUN/wandb/run_id, so that a resume continues it
    (resume="allow"). The mode is chosen before wandb.init, which never prompts: WANDB_MODE (W&B's
    own) when set, else online when W&B has credentials, else offline (one warning): offline
    writes RUN/wandb/offline-run-*/ for `wandb sync`.

    W&B's history only grows, so a resume logs each row after the last step W&B holds, once: the
    record's rows it lacks (replayed) and the segment's own. It holds the steps before
    run.starting_step online, and offline those its earlier offline-run-* files of this run hold
    (read back: a segment killed before W&B flushed a 32 KiB block left none of them)."""

    module = "wandb"
    # W&B's run states: 0 finished, else failed; 255 is what W&B's own exit hook gives Ctrl-C
    EXIT_CODES = {SUCCESS: 0, FAILURE: 1, INTERRUPTED: 255}

    def __init__(self, run: RunInfo) -> None:
        import wandb

        id_file = run.run_dir / "wandb" / "run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if id_file.exists() else None  # None: a new run
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "abrupt",
            dir=str(run.run_dir),
            id=run_id,
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
        # the steps a killed segment logged past its checkpoint stay as W&B holds them: the values
        # the resume reproduces (metrics.jsonl has the resume's)
        held = offline_steps(run.run_dir, run_id) if run_id and self.run.offline else set()
        self.first = max(self.run.starting_step, max(held, default=-1) + 1)
        for row in run.rows:
            self.log(row["step"], _numbers(row))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if step >= self.first:
            self.run.log(scalars, step=step)

    def finish(self, step: int, summary: dict[str, Any], figures: list[Path]) -> None:
        import wandb

        if figures and step >= self.first:
            self.run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}, step=step)
        self.run.summary.update(summary)

    def close(self, outcome: str) -> None:
        self.run.finish(exit_code=self.EXIT_CODES[outcome])


def wandb_records(path: Path) -> Iterator[Any]:
    """The complete records of a W&B run file (run-ID.wandb), oldest first, as
    wandb_internal_pb2.Record: W&B's LevelDB-style log (a 7-byte header ':W&B', 0xBEE1, version;
    then 32 KiB blocks of chunks, each crc32 (4), length (2), type (1): 1 full, 2 first, 3 middle,
    4 last). A file cut short (its writer killed) ends at its last complete record; one that is
    not such a log has none."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B" or data[4:6] != struct.pack("<H", 0xBEE1):
        return
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # cut inside the chunk
            return
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            try:
                record = wandb_internal_pb2.Record.FromString(chunks)
            except Exception:  # noqa: BLE001 - protobuf's DecodeError: a garbled record ends the log
                return
            yield record
            chunks = b""


def offline_steps(run_dir: Path, run_id: str) -> set[int]:
    """The history steps the offline files of W&B run `run_id` in RUN/wandb hold."""
    return {
        record.history.step.num
        for path in sorted(Path(run_dir).glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
        for record in wandb_records(path)
        if record.WhichOneof("record_type") == "history"
    }


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
    A context manager: leaving it closes them with the segment's outcome (`outcome`: success, or
    the exception that passes)."""

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
                dropped.close(INTERRUPTED)  # it stops before the run's outcome is known
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
        self._each(CLOSING, "close", outcome(kind))
        self.active.clear()
