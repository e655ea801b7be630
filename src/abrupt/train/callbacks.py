"""What happens around each training step, one concern per class: the metrics file, the trackers,
the progress measures, the escape forecast, the progress bar, the early stop and the checkpoints.

The loop (`Trainer._loop`) calls every callback's hooks in list order (`standard` builds the list):

    on_start(trainer, start)            before the first step of this start or resume
    on_step(trainer, step, parts)       after each optimizer step: the batch's losses, tensors
                                        left on the device (reading one back syncs the device)
    on_log(trainer, row) -> dict        at a log step: fields to add to the row (after the losses,
                                        gradient norms, lr and time; in list order)
    on_logged(trainer, row)             the row is complete and in trainer.rows
    should_stop(trainer, step) -> bool  after each step: whether training ends here; asked
                                        before the step too, so that the step it ends at gets a
                                        row (a rule that changes its answer only at log steps,
                                        from the rows, says the same both times)
    on_step_end(trainer, step, last)    after each step; `last`: the loop ends after it (a stop
                                        rule or a stop signal)
    on_end(trainer)                     the loop has ended, also by an error
    state_dict() -> dict                entries for every checkpoint's side file
    load_state_dict(state, trainer)     on resume, that side file (trainer.rows already read)

A new training-time measurement or stopping rule is one subclass of `Callback` added to `standard`
(docs/extending.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from tqdm.auto import tqdm

from .. import tasks
from ..config import Config
from ..dynamics import forecast, transition
from ..run.rundir import SIGNAL_FILE, dumps, read_signal, write_signal

if TYPE_CHECKING:
    from .trainer import Trainer

_UNRECORDED = object()  # a checkpoint written before it recorded the early stop's countdown


class Callback:
    """Every hook, doing nothing: a callback overrides the ones it needs."""

    def on_start(self, trainer: Trainer, start: int) -> None:
        pass

    def on_step(self, trainer: Trainer, step: int, parts: dict[str, torch.Tensor]) -> None:
        pass

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> dict[str, Any]:
        return {}

    def on_logged(self, trainer: Trainer, row: dict[str, Any]) -> None:
        pass

    def should_stop(self, trainer: Trainer, step: int) -> bool:
        return False

    def on_step_end(self, trainer: Trainer, step: int, last: bool) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], trainer: Trainer) -> None:
        pass


class MetricsFile(Callback):
    """Appends each row to metrics.jsonl as it is logged (flushed: a kill loses at most the row
    being written)."""

    def __init__(self) -> None:
        self.file: TextIO | None = None

    def on_start(self, trainer: Trainer, start: int) -> None:
        self.file = open(Path(trainer.out_dir) / "metrics.jsonl", "a")

    def on_logged(self, trainer: Trainer, row: dict[str, Any]) -> None:
        assert self.file is not None
        self.file.write(dumps(row) + "\n")
        self.file.flush()

    def on_end(self, trainer: Trainer) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class DenseSignal(Callback):
    """The training batch's headline loss at every step (HEADLINE_LOSS of transition.py without
    `eval_`: L_mask on matrices, the output cross-entropy on GPT and sequence runs), appended to
    RUN/signal.jsonl as {"step", "loss"} rows: the dense series the escape forecast fits, free
    since every step computes it. The values stay on the device until a log step, a checkpoint
    step or the loop's last step reads them back in one transfer (a per-step read would sync the
    device every step). On resume the file is cut back to the checkpoint's step, as metrics.jsonl
    is, so a killed and resumed run has the rows an uninterrupted one has."""

    def __init__(self, kind: str) -> None:
        self.key = transition.HEADLINE_LOSS[kind].removeprefix("eval_")
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.steps: list[int] = []
        self.values: list[float] = []
        self.file: TextIO | None = None

    def on_start(self, trainer: Trainer, start: int) -> None:
        # a fresh start (also one after a kill before the first checkpoint) starts the file over
        self.file = open(Path(trainer.out_dir) / SIGNAL_FILE, "a" if start else "w")

    def on_step(self, trainer: Trainer, step: int, parts: dict[str, torch.Tensor]) -> None:
        value = parts.get(self.key)
        # a task whose objective lacks it (a plugin's) has no dense signal: the forecast then
        # reads the logged rows, as before; never a failed run for advice
        if value is not None:
            self.pending.append((step, value.detach()))

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> dict[str, Any]:
        self.flush()  # before the forecast's on_log reads the series
        return {}

    def on_step_end(self, trainer: Trainer, step: int, last: bool) -> None:
        # before the checkpoint (a later callback): its `signal_step` then covers every row
        if trainer.is_ckpt_step(step) or last:
            self.flush()

    def on_end(self, trainer: Trainer) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.pending = []

    def flush(self) -> None:
        """The pending values read back (one device transfer) and written, flushed."""
        if not self.pending or self.file is None:
            return
        values = torch.stack([v.float() for _, v in self.pending]).tolist()
        steps = [s for s, _ in self.pending]
        self.pending = []
        self.file.write(
            "".join(dumps({"step": s, "loss": v}) + "\n" for s, v in zip(steps, values))
        )
        self.file.flush()
        self.steps += steps
        self.values += values

    def state_dict(self) -> dict[str, Any]:
        return {"signal_step": self.steps[-1] if self.steps else 0}

    def load_state_dict(self, state: dict[str, Any], trainer: Trainer) -> None:
        # a checkpoint from before the signal: cut at the last row kept, the steps it logged
        upto = state.get("signal_step", trainer.rows[-1]["step"] if trainer.rows else 0)
        rows = [r for r in read_signal(trainer.out_dir) if r["step"] <= upto]
        write_signal(trainer.out_dir, rows)
        self.steps = [int(r["step"]) for r in rows]
        self.values = [float(r["loss"]) for r in rows]


class TrackerLog(Callback):
    """Sends each row to the experiment trackers of train.log_to (tracking.py)."""

    def on_logged(self, trainer: Trainer, row: dict[str, Any]) -> None:
        trainer.trackers.log(row)


class ProgressMeasures(Callback):
    """train.progress: the task's progress measures (`prog_*`) on the evaluation batch; `time` is
    measured again after them."""

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> dict[str, Any]:
        with trainer.tf32():
            measures = trainer.task.progress(trainer.model, trainer.evalset, trainer.cfg)
        return {**measures, "time": round(time.perf_counter() - trainer.t0, 3)}


class Forecast(Callback):
    """train.forecast: the escape forecast (dynamics/forecast.py) from the rows so far and the
    dense signal (`DenseSignal`, read back just before), its fields (`forecast_*`) added to each
    row. Advice only: a failing forecast is logged as its reason and
    never stops a run."""

    def __init__(self, kind: str, dense: DenseSignal | None = None) -> None:
        self.kind, self.dense = kind, dense
        self.latest = forecast.Forecast(0, reason="not started")

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> dict[str, Any]:
        cfg = trainer.cfg
        try:
            self.latest = forecast.forecast(
                trainer.rows + [row],
                cfg.train.forecast_signal,
                cfg.train.forecast_target or forecast.ESCAPE_DEPARTURE,
                after=cfg.curriculum.end(),
                kind=self.kind,
                dense=(self.dense.steps, self.dense.values) if self.dense else None,
                preset=cfg.preset,
            )
        except Exception as e:  # noqa: BLE001 - the forecast is advice: it never stops a run
            self.latest = forecast.Forecast(
                row["step"], reason=f"forecast failed: {type(e).__name__}: {e}"
            )
        return self.latest.as_row()


class ProgressBar(Callback):
    """The progress on standard error (`StepProgress`), with the escape forecast's text when
    `escape` (the run's Forecast callback) is given; silent unless the trainer is verbose."""

    def __init__(self, escape: Forecast | None = None) -> None:
        self.escape = escape
        self.bar: StepProgress | None = None

    def on_start(self, trainer: Trainer, start: int) -> None:
        self.bar = StepProgress(trainer.cfg.train.steps, start, enabled=trainer.verbose)

    def on_logged(self, trainer: Trainer, row: dict[str, Any]) -> None:
        assert self.bar is not None
        self.bar.losses(row, escape=self.escape.latest if self.escape else None)

    def on_step_end(self, trainer: Trainer, step: int, last: bool) -> None:
        assert self.bar is not None
        self.bar.update(step)

    def on_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EarlyStop(Callback):
    """train.stop_after_drop: stop that many steps after the log step at which the drop was first
    seen (`transition.detect` on the rows so far, after the curriculum). The countdown's start,
    `drop_seen_at`, is in every checkpoint (None until seen, and without the rule), so a resumed
    run stops where it would have; a checkpoint without it has it rebuilt from the rows."""

    def __init__(self, wait: int, after: int, kind: str) -> None:
        self.wait, self.after, self.kind = wait, after, kind
        self.seen_at: int | None = None

    def on_logged(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if (
            self.wait
            and self.seen_at is None
            and transition.detect(trainer.rows, after=self.after, kind=self.kind)["dropped"]
        ):
            self.seen_at = row["step"]

    def should_stop(self, trainer: Trainer, step: int) -> bool:
        return bool(self.wait) and self.seen_at is not None and step >= self.seen_at + self.wait

    def state_dict(self) -> dict[str, Any]:
        return {"drop_seen_at": self.seen_at}

    def load_state_dict(self, state: dict[str, Any], trainer: Trainer) -> None:
        if self.wait:  # the countdown goes on where it was
            seen = state.get("drop_seen_at", _UNRECORDED)
            self.seen_at = (
                transition.drop_seen_at(trainer.rows, after=self.after, kind=self.kind)
                if seen is _UNRECORDED
                else seen
            )


class Checkpoints(Callback):
    """A checkpoint at the steps `trainer.is_ckpt_step` names, and at the last step of a loop that
    ends early (a stop rule or a stop signal), so that it resumes where it stopped."""

    def on_step_end(self, trainer: Trainer, step: int, last: bool) -> None:
        if trainer.is_ckpt_step(step) or last:
            trainer.save(step)


def standard(cfg: Config) -> list[Callback]:
    """The callbacks of a run configured by `cfg`, in the order their hooks run (the progress
    measures' fields come before the forecast's in each row)."""
    t = cfg.train
    kind = tasks.get(cfg.task.name).run_kind(cfg)
    dense = DenseSignal(kind) if t.forecast else None
    escape = Forecast(kind, dense) if t.forecast else None
    return [
        *([ProgressMeasures()] if t.progress else []),
        *([dense, escape] if dense and escape else []),
        MetricsFile(),
        TrackerLog(),
        ProgressBar(escape),
        EarlyStop(t.stop_after_drop, cfg.curriculum.end(), kind),
        Checkpoints(),
    ]


class StepProgress:
    """Training progress on standard error, labelled `train_loss` (the current training batch) and
    `eval_L_mask` (hidden entries of the fixed evaluation batch). On a terminal, a tqdm bar; else
    (a log file, a pipe) a plain line at every tenth of the steps and at least every `every_s`
    seconds, never a redraw."""

    def __init__(
        self,
        total: int,
        start: int,
        enabled: bool = True,
        every_s: float = 60.0,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total, self.step, self.start, self.every_s = total, start, start, every_s
        self.enabled = enabled
        tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.bar = (
            tqdm(total=total, initial=start, desc="train", unit="step", file=self.stream)
            if tty
            else None
        )
        self.row: dict[str, Any] = {}
        self.note = ""
        self.t0 = self.last_time = time.perf_counter()
        self.last_step = start

    def _tenth_after(self, step: int) -> int:
        return next(
            (k * self.total + 9) // 10 for k in range(1, 11) if (k * self.total + 9) // 10 > step
        )

    def _postfix(self) -> str:
        r = self.row
        num = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
        name, value = transition.headline_of(r)
        return (
            f"train_loss {num(r.get('loss'))}, {name} {num(value)}"
            + (f", {self.note}" if self.note else "")
            if r
            else ""
        )

    def losses(
        self, row: dict[str, Any], note: str = "", escape: forecast.Forecast | None = None
    ) -> None:
        """The latest logged row (its losses are shown from now on), and a note to show after
        them; with `escape`, the escape forecast's text first ('escape in ~1 200 steps (~6 min),
        90%: 800–1 900'; the wall time from the step rate measured since this start)."""
        if escape is not None:
            done, elapsed = row["step"] - self.start, time.perf_counter() - self.t0
            text = escape.describe(done / elapsed if done > 0 and elapsed > 0 else 0.0)
            note = f"{text}, {note}" if note else text
        self.row, self.note = row, note
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)

    def update(self, step: int) -> None:
        self.step = step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        if self.enabled and (
            step >= self._tenth_after(self.last_step) or now - self.last_time >= self.every_s
        ):
            self._line(now)

    def _line(self, now: float) -> None:
        done, elapsed = self.step - self.start, now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (
            f", eta {_duration((self.total - self.step) / rate)}"
            if rate > 0 and self.step < self.total
            else ""
        )
        logged = f"; at step {self.row['step']}: {self._postfix()}" if self.row else ""
        print(
            f"train: step {self.step}/{self.total} ({100 * self.step / self.total:.0f}%), "
            f"{rate:.1f} step/s, "
            f"{_duration(elapsed)} elapsed{eta}{logged}",
            file=self.stream,
            flush=True,
        )
        self.last_time, self.last_step = now, self.step

    def close(self) -> None:
        """Close the bar, or write the line of a step not yet reported (a run stopped early)."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.step != self.last_step:
            self._line(time.perf_counter())


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )
