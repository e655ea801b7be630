"""The paper's training procedure: Adam on fresh batches, MSE over all entries, into a run directory.

Run directory contract (scripts rely on these names):
    config.json        full resolved configuration, with library versions
    metrics.jsonl      one JSON object per logged step
    checkpoints/       see checkpoints.py
    summary.json       plateau and drop (transition.py) and final losses
    loss.png           L, L_obs, L_mask against step, the transition marked
"""

from __future__ import annotations

import contextlib
import json
import platform
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import __version__, checkpoints, plots, transition
from .config import Config, validate
from .data import Batch, generator, sample_batch
from .model import MatrixBert, build_model

# Offsets keep the streams of model init, training data and evaluation data apart for one seed.
_TRAIN_STREAM = 1_000_003
_EVAL_STREAM = 2_000_003


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, nothing to resume from, ...)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but CUDA is not available; use train.device=cpu or auto")
    return torch.device(name)


def losses(pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """L (all entries), L_obs, L_mask and the mean |prediction| at hidden entries, as tensors."""
    sq = (pred.float() - batch.target) ** 2
    hidden = batch.mask.float()
    observed = 1.0 - hidden
    n_hidden = hidden.sum().clamp_min(1.0)
    n_obs = observed.sum().clamp_min(1.0)
    return {
        "loss": sq.mean(),
        "loss_obs": (sq * observed).sum() / n_obs,
        "loss_mask": (sq * hidden).sum() / n_hidden,
        "mask_value": (pred.float().abs() * hidden).sum() / n_hidden,
    }


def evaluate(model: MatrixBert, batch: Batch) -> dict[str, float]:
    """Losses of `model` on `batch` (evaluation mode, no gradients) as plain floats."""
    preds = model.predict(batch.tokens).to(batch.target.device)
    return {k: v.item() for k, v in losses(preds, batch).items()}


def eval_batch(cfg: Config) -> Batch:
    """The run's fixed, seeded evaluation batch."""
    return sample_batch(cfg.data, cfg.train.eval_size, generator(cfg.seed + _EVAL_STREAM))


def checkpoint_steps(cfg: Config) -> set[int]:
    """Log-spaced early steps below ckpt_every, every ckpt_every steps, and the final step."""
    t = cfg.train
    steps = set(range(t.ckpt_every, t.steps + 1, t.ckpt_every)) | {t.steps}
    k = t.ckpt_log_points
    if k and t.ckpt_every > 1:
        for i in range(k):
            s = round(t.ckpt_every ** (i / k))
            if 1 <= s < t.ckpt_every:
                steps.add(s)
    return {s for s in steps if s <= t.steps}


def versions() -> dict[str, str]:
    return {"abrupt": __version__, "torch": torch.__version__, "python": platform.python_version()}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything before it is good
    return rows


def finish(run_dir: Path, seconds: float | None = None) -> dict[str, Any]:
    """(Re)write summary.json and loss.png from metrics.jsonl."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    summary = transition.summarize(rows, seconds)
    checkpoints.atomic_write_json(run_dir / "summary.json", summary)
    plots.plot_losses(rows, summary, run_dir / "loss.png")
    return summary


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


def train(cfg: Config, out_dir: Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a run in `out_dir`; returns the summary."""
    validate(cfg)
    out_dir = Path(out_dir)
    device = resolve_device(cfg.train.device)
    seq_len = cfg.data.m * cfg.data.n
    model = build_model(cfg.model, seq_len, seed=cfg.seed).to(device)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    data_rng = generator(cfg.seed + _TRAIN_STREAM)
    ckpt_dir = out_dir / "checkpoints"
    metrics_path = out_dir / "metrics.jsonl"

    start_step, time_offset = 0, 0.0
    if resume:
        # newest first, hashing only until an intact one is found (checkpoints can be large)
        candidates = [c for c in checkpoints.list_checkpoints(ckpt_dir, verify=False) if c.optim.exists()]
        ckpt = next((c for c in reversed(candidates) if checkpoints.is_intact(c)), None)
        if ckpt is None:
            raise TrainingError(f"nothing to resume in {out_dir}: no complete checkpoint with optimizer state")
        checkpoints.load_training_state(ckpt, model, optim, data_rng)
        start_step, time_offset = ckpt.step, float(ckpt.meta.get("time", 0.0))
        kept = [r for r in read_metrics(out_dir) if r["step"] <= start_step]
        checkpoints.atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    checkpoints.atomic_write_json(out_dir / "config.json", {**cfg.to_dict(), "versions": versions()})

    evalset = eval_batch(cfg).to(device)
    ckpt_at = checkpoint_steps(cfg)
    use_bf16 = cfg.train.bf16 and device.type == "cuda"
    # Compiled for the training step only: evaluation and checkpoints use the plain module.
    forward = torch.compile(model) if cfg.train.compile else model
    rows = read_metrics(out_dir)
    t0 = time.perf_counter() - time_offset
    model.train()

    def save(step: int) -> None:
        checkpoints.save(ckpt_dir, step, model, optim, data_rng, {"time": time.perf_counter() - t0})
        checkpoints.prune_optim(ckpt_dir, cfg.train.keep_optim)

    if start_step == 0:
        save(0)
    bar = tqdm(total=cfg.train.steps, initial=start_step, disable=not progress, desc="train", unit="step")
    step = start_step
    drop_seen_at = None
    try:
        with open(metrics_path, "a") as mf, _stop_requests() as stop_requested:
            for step in range(start_step + 1, cfg.train.steps + 1):
                lr = cfg.train.lr * min(1.0, step / cfg.train.warmup) if cfg.train.warmup else cfg.train.lr
                for group in optim.param_groups:
                    group["lr"] = lr
                batch = sample_batch(cfg.data, cfg.train.batch_size, data_rng, cfg.curriculum.shift(step)).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    pred = forward(batch.tokens)
                parts = losses(pred, batch)
                loss = parts["loss"]
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss.item()} at step {step}; stopped. The last good checkpoint is kept "
                        "in checkpoints/; lower train.lr or enable train.warmup"
                    )
                optim.zero_grad(set_to_none=True)
                loss.backward()
                log_now = step == 1 or step % cfg.train.log_every == 0 or step == cfg.train.steps
                if log_now:
                    grad_norm = torch.linalg.vector_norm(
                        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
                    ).item()
                optim.step()
                if log_now:
                    ev = evaluate(model, evalset)
                    row = {
                        "step": step,
                        **{k: v.item() for k, v in parts.items()},
                        **{f"eval_{k}": v for k, v in ev.items()},
                        "grad_norm": grad_norm,
                        "lr": lr,
                        "time": round(time.perf_counter() - t0, 3),
                    }
                    mf.write(json.dumps(row) + "\n")
                    mf.flush()
                    rows.append(row)
                    bar.set_postfix(L=f"{row['loss']:.4f}", L_mask=f"{ev['loss_mask']:.4f}", refresh=False)
                    if cfg.train.stop_after_drop and drop_seen_at is None and transition.detect(rows)["dropped"]:
                        drop_seen_at = step
                bar.update(1)
                stop = drop_seen_at is not None and step >= drop_seen_at + cfg.train.stop_after_drop
                if step in ckpt_at or stop or stop_requested.is_set():
                    save(step)
                if stop_requested.is_set():
                    raise KeyboardInterrupt
                if stop:
                    break
    except (KeyboardInterrupt, TrainingError):
        bar.close()
        finish(out_dir, time.perf_counter() - t0)
        raise
    bar.close()
    return finish(out_dir, time.perf_counter() - t0)
