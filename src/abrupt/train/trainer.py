"""The paper's training procedure: Adam on fresh batches, MSE over all entries, into a run directory
(the files are listed in rundir.py, the checkpoints in checkpoints.py).

`train()` holds the run directory's lock for its whole life and drives a `Trainer`, whose parts
each read alone: set-up (`__init__`), a fresh start or a resume, one optimisation step (the
interventions' schedule, lr, forward/backward, gradient clipping and Grokfast), a log row's losses,
a checkpoint, and the loop. Everything else around the steps (the metrics file, trackers, progress
measures, the forecast, the progress bar, the early stop, when to checkpoint) is a callback
(callbacks.py), which the loop calls at fixed points.
"""

from __future__ import annotations

import contextlib
import math
import platform
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch

from .. import __version__, interventions, tasks, tracking
from ..checks import validate_run
from ..config import Config, ConfigError, group_lr
from ..data import generator
from ..losses import as_floats, losses, per_size
from ..models import groups
from ..run import checkpoints
from ..run.rundir import (
    RunDirError,
    RunLock,
    atomic_write_json,
    check_fresh,
    check_name,
    read_metrics,
    read_run,
    remove_temp_files,
    write_metrics,
)
from ..tasks.base import objective_metrics
from . import callbacks as callbacks_
from .summary import figures, finish

# Offsets keep the streams of model init, training data and evaluation data apart for one seed.
_TRAIN_STREAM = 1_000_003
_EVAL_STREAM = 2_000_003


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, nothing to resume from, ...)."""


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and convolutions inside the block only (restored on exit, also when
    the block raises); `enabled=False` changes nothing. Through torch's `fp32_precision` settings
    where torch has them (2.9 on), the legacy `allow_tf32` flags then neither set nor read: torch
    warns on them and raises when a program mixes the two. An older torch has only the flags."""
    if not enabled:
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        settings = [
            (matmul, "fp32_precision", "tf32"),
            (torch.backends.cudnn.conv, "fp32_precision", "tf32"),
        ]
    else:  # torch < 2.9
        settings = [(matmul, "allow_tf32", True), (torch.backends.cudnn, "allow_tf32", True)]
    saved = [getattr(owner, name) for owner, name, _ in settings]
    for owner, name, value in settings:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(settings, saved):
            setattr(owner, name, value)


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The device `name` (auto, cpu, cuda, cuda:N) names on this machine; a ConfigError naming
    `key` (the setting or flag it came from) when this machine has no such device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        alternatives = f"{key}=cpu" + (" or auto" if key == "train.device" else "")
        raise ConfigError(
            f"{key}={name} but CUDA is not available on this machine; use {alternatives}"
        )
    device = torch.device(name)
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise ConfigError(
            f"{key}={name} but this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 ...)"
        )
    return device


def eval_batch(cfg: Config) -> Any:
    """The run's fixed, seeded evaluation batch (always the target distribution, never a
    curriculum's)."""
    return tasks.get(cfg.task.name).batch(
        cfg, cfg.train.eval_size, generator(cfg.seed + _EVAL_STREAM)
    )


def checkpoint_at(cfg: Config) -> Callable[[int], bool]:
    """Whether a step gets a checkpoint: log-spaced early steps below ckpt_every, every ckpt_every
    steps, and the final step. Decided step by step: the set of them all can be huge."""
    t = cfg.train
    k = t.ckpt_log_points
    early = {round(t.ckpt_every ** (i / k)) for i in range(k)} if k and t.ckpt_every > 1 else set()
    return lambda step: (
        step % t.ckpt_every == 0 or step == t.steps or (step in early and 1 <= step < t.ckpt_every)
    )


def runtime() -> dict[str, Any]:
    """Library versions, the CPU and the torch thread count: each changes floating-point
    trajectories."""
    return {
        "abrupt": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                platform.processor(),
            )
    except OSError:
        return platform.processor() or platform.machine()


def resume_point(out_dir: Path) -> checkpoints.Checkpoint | None:
    """The newest intact checkpoint with optimizer state (hashing newest first: they can be
    large)."""
    candidates = [
        c
        for c in checkpoints.list_checkpoints(Path(out_dir) / "checkpoints", verify=False)
        if c.optim.exists()
    ]
    return next((c for c in reversed(candidates) if checkpoints.is_intact(c)), None)


@contextlib.contextmanager
def _stop_requests():
    """SIGINT/SIGTERM set a flag the loop checks between steps (so the state it saves is whole);
    a second signal interrupts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def parse_init_from(spec: str) -> tuple[Path, int | None]:
    """'RUN' or 'RUN@STEP' -> (run directory, step or None for its last checkpoint)."""
    run, sep, step = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if sep and not step.isdigit():
        raise ConfigError(f"train.init_from: '{spec}' is not RUN or RUN@STEP")
    return Path(run), int(step) if sep else None


def init_source(model: torch.nn.Module, spec: str) -> dict[str, torch.Tensor]:
    """Another run's weights for `model` (every tensor, shapes checked by name), read once."""
    run, step = parse_init_from(spec)
    try:
        ckpt = checkpoints.find(run, step)
    except checkpoints.CheckpointError as e:
        raise ConfigError(f"train.init_from: {e}") from None
    source = checkpoints.load_tensors(ckpt.weights)
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in source:
            raise ConfigError(f"train.init_from: {ckpt.weights} has no tensor '{name}'")
        if source[name].shape != tensor.shape:
            raise ConfigError(
                f"train.init_from: tensor '{name}' is {tuple(source[name].shape)} in {run}, "
                f"{tuple(tensor.shape)} in this model"
            )
    extra = sorted(set(source) - set(own))
    if extra:
        raise ConfigError(
            f"train.init_from: {run} has tensors this model lacks: {', '.join(extra[:3])}"
        )
    return source


def divergence_advice(cfg: Config) -> str:
    """What to change after a divergence: the extreme settings that explain it, else the lr."""
    m, t = cfg.model, cfg.train
    causes = []
    if t.lr > 0.1:
        causes.append(f"train.lr={t.lr:g} is far too large; try 1e-4 to 3e-3")
    if not 1e-2 <= m.attn_temperature <= 1e2:
        causes.append(
            f"model.attn_temperature={m.attn_temperature:g} is extreme (attention logits are "
            "divided by it; "
            "1 is the paper's); keep it within 0.01 to 100"
        )
    if max(m.init_std, m.pos_init_std) > 1:
        causes.append(
            f"model.init_std={m.init_std:g} / model.pos_init_std={m.pos_init_std:g}: weights "
            "start far too large "
            "(the paper's is 0.02)"
        )
    fast = sorted(g for g, scale in group_lr(t.group_lr).items() if t.lr * scale > 0.1)
    if fast:
        causes.append(f"train.group_lr={t.group_lr} gives {', '.join(fast)} an lr above 0.1")
    if t.grokfast_lambda > 100:
        causes.append(
            f"train.grokfast_lambda={t.grokfast_lambda:g} amplifies the gradient "
            f"{t.grokfast_lambda:g}-fold"
        )
    return "; ".join(causes) or "lower train.lr or lengthen train.warmup" + (
        "" if t.warmup else " (it is 0)"
    )


class Trainer:
    """One run's model, optimizer, data stream and run directory; `group` names the sweep a trial
    belongs to (its trackers' group); `callbacks`: what runs around the steps (callbacks.py;
    None: `callbacks.standard(cfg)`)."""

    def __init__(
        self,
        cfg: Config,
        out_dir: Path,
        verbose: bool = True,
        group: str = "",
        callbacks: list[callbacks_.Callback] | None = None,
    ) -> None:
        self.cfg, self.out_dir, self.verbose, self.group = cfg, Path(out_dir), verbose, group
        self.callbacks = callbacks_.standard(cfg) if callbacks is None else callbacks
        self.trackers = tracking.Trackers()  # train.log_to's, while run() trains
        self.resumed = False  # set by resume() when it loads a checkpoint: the trackers continue
        t = cfg.train
        self.device = resolve_device(t.device)
        # TF32 only for the model's steps and evaluations: the data (U V^T) and whatever runs in
        # this process after training keep full fp32
        self.use_tf32 = t.tf32 and self.device.type == "cuda"
        self.task = tasks.get(cfg.task.name)
        self.model = self.task.build_model(cfg).to(self.device)
        trainable = set().union(*(groups.names(self.model, g) for g in groups.split(t.trainable)))
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in trainable)
        self.optim = self._optimizer()
        # On a GPU the batches are drawn there, from a generator of that device: no copy per step.
        self.data_rng = generator(cfg.seed + _TRAIN_STREAM, self.device)
        self.grok_ema: dict[str, torch.Tensor] = {}
        # a new model's tensors outside every named part are logged together, as grad_norm_other
        self.part_of = {
            name: next((g for g in groups.PARTS if re.search(groups.pattern(g), name)), "other")
            for name, _ in self.model.named_parameters()
        }
        self.evalset = eval_batch(cfg).to(self.device)
        self.is_ckpt_step = checkpoint_at(cfg)
        # CPU autocast too: slower there, but it lets CPU checks cover the bf16 path
        self.use_bf16 = cfg.train.bf16
        # Compiled for the training step only: evaluation and checkpoints use the plain module.
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    # --- start ----------------------------------------------------------------------------------

    def _optimizer(self) -> torch.optim.Optimizer:
        """Adam (or AdamW) over the trainable parameters, one parameter group per lr multiplier."""
        t = self.cfg.train
        scales = group_lr(t.group_lr)
        patterns = {g: re.compile(groups.pattern(g)) for g in scales}
        by_scale: dict[float, list[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                scale = next((scales[g] for g, rx in patterns.items() if rx.search(name)), 1.0)
                by_scale.setdefault(scale, []).append(p)
        param_groups = [{"params": ps, "lr_scale": scale} for scale, ps in by_scale.items()]
        kwargs: dict[str, Any] = {
            "lr": t.lr,
            "betas": (t.beta1, t.beta2),
            "eps": t.eps,
            "fused": self.device.type == "cuda" or None,
        }
        if t.optimizer == "adamw":
            return torch.optim.AdamW(param_groups, weight_decay=t.weight_decay, **kwargs)
        return torch.optim.Adam(param_groups, **kwargs)

    def start_fresh(self, source: dict[str, torch.Tensor] | None = None) -> int:
        """Step 0: the model as built, or `source` (train.init_from) with the train.reinit groups
        kept as built."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if source is not None:
            t = self.cfg.train
            reinit = (
                set().union(*(groups.names(self.model, g) for g in groups.split(t.reinit)))
                if t.reinit
                else set()
            )
            self.model.load_state_dict(
                {k: v if k in reinit else source[k] for k, v in self.model.state_dict().items()}
            )
        write_metrics(self.out_dir, [])
        self._write_config(0, history=[])
        self.save(0)
        return 0

    def resume(self) -> int:
        ckpt = resume_point(self.out_dir)
        if ckpt is None:
            if checkpoints.list_checkpoints(self.out_dir / "checkpoints", verify=False):
                raise TrainingError(
                    f"nothing to resume in {self.out_dir}: no complete checkpoint with optimizer "
                    "state"
                )
            # killed before its first checkpoint: nothing was learned yet, so start over
            return self.start_fresh()
        if ckpt.step > self.cfg.train.steps:
            raise TrainingError(
                f"{self.out_dir} is already at step {ckpt.step}; ask for train.steps of at least "
                "that"
            )
        extra = checkpoints.load_training_state(ckpt, self.model, self.optim, self.data_rng)
        self.grok_ema = {
            k.removeprefix("grokfast_ema."): v.to(self.device)
            for k, v in extra.items()
            if k.startswith("grokfast_ema.")
        }
        self.rows = [r for r in read_metrics(self.out_dir) if r["step"] <= ckpt.step]
        for callback in self.callbacks:
            callback.load_state_dict(ckpt.meta, self)
        write_metrics(self.out_dir, self.rows)
        self._write_config(ckpt.step, history=read_run(self.out_dir).segments)
        self.resumed = True
        self.t0 = time.perf_counter() - float(ckpt.meta.get("time", 0.0))
        return ckpt.step

    def _write_config(self, start: int, history: list[dict[str, Any]]) -> None:
        """config.json: the configuration, `versions` as the run started (kept on resume), and
        `segments`: `history` plus this start or resume (a resume may run on other threads or
        another machine, and each changes the trajectory, so every segment is recorded)."""
        info = {
            **runtime(),
            "device": str(self.device),
            "fused_adam": bool(self.optim.defaults.get("fused")),
            "device_sampling": self.device.type != "cpu",
        }
        segment = {"from_step": start, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
        first = (
            {k: v for k, v in history[0].items() if k not in ("from_step", "started")}
            if history
            else info
        )
        atomic_write_json(
            self.out_dir / "config.json",
            {**self.cfg.to_dict(), "versions": first, "segments": [*history, segment]},
        )

    # --- one step, one log row, one checkpoint ----------------------------------------------------

    def tf32(self) -> ContextManager[None]:
        """TF32 as this run has it: on for CUDA with train.tf32 (the model's steps and evaluations
        only), else nothing changed."""
        return tf32(self.use_tf32)

    def lr_at(self, step: int) -> float:
        t = self.cfg.train
        lr = t.lr * t.lr_width_ref / self.cfg.model.width if t.lr_width_ref else t.lr
        return lr * min(1.0, step / t.warmup) if t.warmup else lr

    def step(self, step: int, want_norms: bool) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One optimizer step on a fresh batch; the batch's losses (tensors, left on the device)
        and, if asked, gradient norms (these read back from the device, so only at log steps)."""
        lr = self.lr_at(step)
        interventions.apply(self.model, self.cfg, step)
        for group in self.optim.param_groups:
            group["lr"] = lr * group["lr_scale"]
        batch = self.task.batch(self.cfg, self.cfg.train.batch_size, self.data_rng, step)
        with self.tf32():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                args, kwargs = self.task.inputs(self.model, batch)
                pred = self.forward(*args, **kwargs)
            parts = self.task.objective(self.model, pred, batch)
            self.optim.zero_grad(set_to_none=True)
            parts["loss"].backward()
            norms = self._grad_norms() if want_norms else {}
            if self.cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            if self.cfg.train.grokfast_alpha:
                self._grokfast()
            self.optim.step()
        return parts, norms

    def _grad_norms(self) -> dict[str, float]:
        sq: dict[str, torch.Tensor] = {}
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                part = self.part_of[name]
                sq[part] = sq.get(part, 0.0) + p.grad.float().pow(2).sum()
        norms = {f"grad_norm_{part}": v.sqrt().item() for part, v in sq.items()}
        norms["grad_norm"] = sum(v**2 for v in norms.values()) ** 0.5
        return norms

    def _grokfast(self) -> None:
        """Grokfast-EMA: add `lambda` times a low-pass filtered gradient to the gradient."""
        alpha, lam = self.cfg.train.grokfast_alpha, self.cfg.train.grokfast_lambda
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            ema = self.grok_ema.get(name)
            self.grok_ema[name] = ema = (
                p.grad.detach().clone()
                if ema is None
                else ema.mul_(alpha).add_(p.grad, alpha=1 - alpha)
            )
            p.grad.add_(ema, alpha=lam)

    def log(self, step: int, parts: dict[str, torch.Tensor], norms: dict[str, float]) -> None:
        """The row of log step `step`: the training batch's losses (`parts`), the evaluation
        batch's (`eval_*`), gradient norms, lr and time, then the callbacks' fields; appended to
        `rows` and handed to every callback. A TrainingError when a loss is not finite."""
        train_losses = as_floats(parts)
        if not math.isfinite(train_losses["loss"]):
            raise TrainingError(
                self._divergence(step, f"the training loss became {train_losses['loss']}")
            )
        ev = self.evaluate()
        if not math.isfinite(ev["loss"]):
            raise TrainingError(self._divergence(step, f"the evaluation loss became {ev['loss']}"))
        row = {
            "step": step,
            **train_losses,
            **{f"eval_{k}": v for k, v in ev.items()},
            **norms,
            "lr": self.lr_at(step),
            "time": round(time.perf_counter() - self.t0, 3),
        }
        for callback in self.callbacks:
            row.update(callback.on_log(self, row))
        self.rows.append(row)
        for callback in self.callbacks:
            callback.on_logged(self, row)

    def evaluate(self) -> dict[str, float]:
        """The model's losses and metrics on the fixed evaluation batch; for a matrix size mixture
        (BERT only) one forward pass gives the losses and each size's L_mask
        (`loss_mask_RxC`)."""
        with self.tf32():
            if self.evalset.size is None:
                return objective_metrics(self.task, self.model, self.evalset)
            sizes = [f"{r}x{c}" for r, c in self.cfg.data.size_list()]
            pred = self.model.predict(self.evalset.tokens, pad=self.evalset.pad)
            return {**as_floats(losses(pred, self.evalset)), **per_size(pred, self.evalset, sizes)}

    def save(self, step: int) -> None:
        """A checkpoint, only of finite weights: a diverged state is never kept to resume from."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise TrainingError(self._divergence(step, "the weights became non-finite"))
        checkpoints.save(
            self.out_dir / "checkpoints",
            step,
            self.model,
            self.optim,
            self.data_rng,
            {
                "time": time.perf_counter() - self.t0,
                **{k: v for c in self.callbacks for k, v in c.state_dict().items()},
            },
            {f"grokfast_ema.{k}": v for k, v in self.grok_ema.items()},
        )
        checkpoints.prune_optim(self.out_dir / "checkpoints", self.cfg.train.keep_optim)

    def _divergence(self, step: int, what: str) -> str:
        last = resume_point(self.out_dir)
        kept = (
            f"the last good checkpoint (step {last.step}) is kept"
            if last
            else "no checkpoint was kept"
        )
        advice = divergence_advice(self.cfg)
        return f"training diverged at step {step}: {what}; {kept}. {advice}, and start a new run"

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, start: int) -> dict[str, Any]:
        t = self.cfg.train
        if self.verbose:
            print(
                f"{'resume' if start else 'train'}: {self.out_dir} from step {start} to {t.steps}, "
                f"{torch.get_num_threads()} thread(s), {self.device}",
                file=sys.stderr,
                flush=True,
            )
        stopped_by = [type(c).__name__ for c in self.callbacks if c.should_stop(self, start)]
        if stopped_by and self.verbose:
            print(
                f"resume: {self.out_dir} was ended at step {start} by its stop rule "
                f"({', '.join(stopped_by)}): nothing to train",
                file=sys.stderr,
                flush=True,
            )
        run = tracking.RunInfo(
            self.out_dir,
            self.cfg.to_dict(),
            start,
            self.resumed,
            self.group,
            quiet=not self.verbose,
            rows=tuple(self.rows),
        )
        # opened with nothing to train too: a resume's trackers replay the rows they lack
        with tracking.Trackers(t.log_to, run) as self.trackers:
            summary = self.finish() if stopped_by else self._loop(start)
            self.trackers.finish(summary, figures(self.out_dir))
        return summary

    def _loop(self, start: int) -> dict[str, Any]:
        """Steps start+1 ... train.steps, a row at every log step and at the step a stop rule
        ends the run at; ends early when a callback's stop rule says so, or at a stop signal
        (KeyboardInterrupt, after a checkpoint)."""
        t = self.cfg.train
        try:
            with _stop_requests() as stop_requested:
                for callback in self.callbacks:
                    callback.on_start(self, start)
                for step in range(start + 1, t.steps + 1):
                    # the step a stop rule ends the run at is logged too (asked before the step,
                    # whose gradient norms a row needs): the last row, summary.json and the last
                    # checkpoint are of one step
                    log_now = (
                        step == 1
                        or step % t.log_every == 0
                        or step == t.steps
                        or self._stops_after(step)
                    )
                    parts, norms = self.step(step, log_now)
                    for callback in self.callbacks:
                        callback.on_step(self, step, parts)
                    if log_now:
                        self.log(step, parts, norms)
                    stop = self._stops_after(step)
                    requested = stop_requested.is_set()
                    for callback in self.callbacks:
                        callback.on_step_end(self, step, last=stop or requested)
                    if requested:
                        raise KeyboardInterrupt
                    if stop:
                        break
        except BaseException as e:
            for callback in self.callbacks:  # the metrics file and the progress bar closed
                callback.on_end(self)
            if isinstance(e, (KeyboardInterrupt, TrainingError, OSError)):
                # a full disk: the first error is the one to report
                with contextlib.suppress(OSError):
                    self.finish()
            raise
        for callback in self.callbacks:
            callback.on_end(self)
        return self.finish()

    def _stops_after(self, step: int) -> bool:
        """Whether a callback's stop rule ends training after step `step`."""
        return any(c.should_stop(self, step) for c in self.callbacks)

    def finish(self) -> dict[str, Any]:
        """summary.json and loss.png for the metrics so far; where they cannot be written (a full
        disk), none at all: a stale summary would mislead (`abrupt plot` redraws them)."""
        try:
            return finish(self.out_dir, time.perf_counter() - self.t0, self.cfg)
        except OSError:
            for name in ("summary.json", "loss.png"):
                (self.out_dir / name).unlink(missing_ok=True)
            raise


def train(
    cfg: Config, out_dir: Path, resume: bool = False, verbose: bool = True, group: str = ""
) -> dict[str, Any]:
    """Train (or resume) a run in `out_dir` as its only writer; returns the summary. A resume of a
    run already at its last step (or ended by its stop rule) trains nothing: its summary is
    rewritten and its trackers replay what they lack (a kill between its last checkpoint and their
    closing). `group`: the sweep it is a trial of."""
    validate_run(cfg)
    tracking.require(cfg.train.log_to)
    check_name(out_dir)
    trainer = Trainer(cfg, out_dir, verbose, group)  # builds the model; writes nothing
    # refuse before writing
    source = (
        init_source(trainer.model, cfg.train.init_from)
        if cfg.train.init_from and not resume
        else None
    )
    if str(Path(out_dir)) == "." and not resume:
        raise RunDirError("give the run directory a name (not the current directory)")
    if not resume and Path(out_dir).is_dir():
        # before taking the lock, so that a refused directory gets no lock file
        check_fresh(out_dir)
    with RunLock(out_dir):
        if resume and not (Path(out_dir) / "config.json").exists():
            raise RunDirError(f"{out_dir} is not a run directory (no config.json)")
        if not resume:
            # again under the lock: another process may have started it meanwhile
            check_fresh(out_dir)
        # What a writer killed mid-write left (temporary files, a checkpoint without its side file).
        remove_temp_files(
            Path(out_dir),
            ("config.json", "metrics.jsonl", "signal.jsonl", "summary.json", "loss.png"),
        )
        checkpoints.remove_debris(Path(out_dir) / "checkpoints")
        start = trainer.resume() if resume else trainer.start_fresh(source)
        return trainer.run(start)
