"""Checkpoints: safetensors weights + JSON side file, written atomically, loaded without pickle.

Layout inside `RUN/checkpoints/`:
    step_<N>.safetensors        model weights
    step_<N>.optim.safetensors  Adam moments and the data-generator state (newest few only)
    step_<N>.json               step, metrics, file sizes and SHA-256 sums; written last

A checkpoint counts only once its JSON exists and the sums match, so a run killed in the middle
of a write falls back to the previous complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import interventions, tasks
from ..config import Config
from ..hooks import HookedModule
from .rundir import atomic_write_json, interrupts_held, read_config, remove_temp_files

_STEP_RE = re.compile(r"^step_(\d+)\.json$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


@dataclass
class Checkpoint:
    step: int
    path: Path  # the JSON side file
    meta: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.path.with_name(f"step_{self.step}.safetensors")

    @property
    def optim(self) -> Path:
        return self.path.with_name(f"step_{self.step}.optim.safetensors")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                tmp,
                metadata=metadata,
            )
        except (
            SafetensorError
        ) as e:  # an I/O failure (a full disk): an OSError like every other write's
            code = re.search(r"(?:os error|code:) (\d+)", str(e))  # "I/O error: ... (os error 28)"
            errno_ = int(code.group(1)) if code else 5  # EIO when safetensors does not say
            raise OSError(errno_, os.strerror(errno_), str(path)) from None
        os.chmod(tmp, 0o644)  # the same mode as the JSON side files: results are meant to be shared
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _optim_tensors(model: HookedModule, optim: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optim.param_groups:
        for p in group["params"]:
            state = optim.state.get(p)
            if not state:
                continue
            for key, value in state.items():
                out[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).clone()
    return out


def save(
    ckpt_dir: Path,
    step: int,
    model: HookedModule,
    optim: torch.optim.Optimizer | None,
    data_rng: torch.Generator | None,
    meta: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> Checkpoint:
    """Weights, and with an optimizer its state, the data generator and `extra` training state
    (e.g. a gradient filter's running average) for an exact resume."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights = ckpt_dir / f"step_{step}.safetensors"
    side = ckpt_dir / f"step_{step}.json"
    optim_path = ckpt_dir / f"step_{step}.optim.safetensors"
    try:
        _atomic_save_tensors(weights, model.state_dict(), {"step": str(step)})
        files = {weights.name: {"bytes": weights.stat().st_size, "sha256": _sha256(weights)}}
        if optim is not None and data_rng is not None:
            state = _optim_tensors(model, optim)
            state["__data_rng__"] = data_rng.get_state()
            state.update({f"__extra__::{k}": v for k, v in (extra or {}).items()})
            _atomic_save_tensors(optim_path, state, {"step": str(step)})
            files[optim_path.name] = {
                "bytes": optim_path.stat().st_size,
                "sha256": _sha256(optim_path),
            }
        atomic_write_json(side, {"step": step, "files": files, **meta})
    except BaseException:
        if (
            not side.exists()
        ):  # no half checkpoint is kept: its files without their side file are debris
            weights.unlink(missing_ok=True)
            optim_path.unlink(missing_ok=True)
        raise
    return Checkpoint(step, side, json.loads(side.read_text()))


def remove_debris(ckpt_dir: Path) -> None:
    """Delete what a writer killed mid-checkpoint left: temporary files, and weights or optimizer
    state whose side file was never written. Call it holding the run's lock."""
    if not ckpt_dir.is_dir():
        return
    remove_temp_files(ckpt_dir)
    for p in ckpt_dir.glob("step_*.safetensors"):
        step = p.name.split(".")[0]
        if not (ckpt_dir / f"{step}.json").exists():
            p.unlink(missing_ok=True)


def prune_optim(ckpt_dir: Path, keep: int) -> None:
    """Delete optimizer state of all but the newest `keep` checkpoints (weights stay)."""
    with_state = [c for c in list_checkpoints(ckpt_dir, verify=False) if c.optim.exists()]
    for ckpt in with_state[:-keep]:
        ckpt.meta["files"].pop(ckpt.optim.name, None)
        atomic_write_json(ckpt.path, ckpt.meta)
        ckpt.optim.unlink()


def list_checkpoints(ckpt_dir: Path, verify: bool = True) -> list[Checkpoint]:
    """Complete checkpoints, oldest first. With verify, files are checked against their sums."""
    found = []
    if not ckpt_dir.is_dir():
        return found
    for p in ckpt_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if not m:
            continue
        try:
            meta = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        ckpt = Checkpoint(int(m.group(1)), p, meta)
        if verify and not is_intact(ckpt):
            continue
        found.append(ckpt)
    return sorted(found, key=lambda c: c.step)


def is_intact(ckpt: Checkpoint) -> bool:
    """Every file the side file lists exists with its recorded size and SHA-256."""
    for name, info in ckpt.meta.get("files", {}).items():
        f = ckpt.path.with_name(name)
        if not f.exists() or f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
            return False
    return ckpt.weights.name in ckpt.meta.get("files", {})


def find(run_dir: Path, step: int | None = None) -> Checkpoint:
    """The checkpoint at `step` (default: the last one) of a run, verified."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    all_ckpts = list_checkpoints(ckpt_dir, verify=False)
    if step is None:
        if not all_ckpts:
            raise CheckpointError(f"no checkpoints in {ckpt_dir}")
        ckpt = all_ckpts[-1]
    else:
        matches = [c for c in all_ckpts if c.step == step]
        if not matches:
            have = ", ".join(str(c.step) for c in all_ckpts) or "none"
            raise CheckpointError(
                f"no checkpoint at step {step} in {ckpt_dir} (saved steps: {have})"
            )
        ckpt = matches[0]
    if not is_intact(ckpt):
        raise CheckpointError(
            f"checkpoint {ckpt.weights} is incomplete or corrupt (size or SHA-256 mismatch)"
        )
    return ckpt


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with interrupts_held():  # a Ctrl-C inside the reader would read as a corrupt file
            return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load `path` into `model`, or say in one line which tensor does not fit (config.json edited
    after the run was written, e.g. its model size or arch)."""
    tensors = load_tensors(path)
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or wrong:
        what = (
            f"tensor '{wrong[0]}' is {tuple(tensors[wrong[0]].shape)} there, "
            f"{tuple(own[wrong[0]].shape)} in the model"
            if wrong
            else f"tensor '{(missing or extra)[0]}' is "
            f"{'missing there' if missing else 'not in the model'}"
        )
        raise CheckpointError(
            f"{path} does not fit the model config.json describes ({what}); "
            "was config.json edited after the run was written?"
        )
    model.load_state_dict(tensors)


def load_model(cfg: Config, ckpt: Checkpoint, device: str | torch.device = "cpu") -> HookedModule:
    model = tasks.get(cfg.task.name).build_model(cfg)
    # the interventions as they were at this step of training
    interventions.apply(model, cfg, ckpt.step)
    load_weights(model, ckpt.weights)
    return model.to(device).eval()


def load_training_state(
    ckpt: Checkpoint, model: HookedModule, optim: torch.optim.Optimizer, data_rng: torch.Generator
) -> dict[str, torch.Tensor]:
    """Restore model weights, Adam moments and the data generator from a checkpoint in place;
    returns the extra training state saved with it."""
    if not ckpt.optim.exists() or ckpt.optim.name not in ckpt.meta.get("files", {}):
        raise CheckpointError(
            f"checkpoint at step {ckpt.step} has no optimizer state to resume from"
        )
    load_weights(model, ckpt.weights)
    state = load_tensors(ckpt.optim)
    data_rng.set_state(state.pop("__data_rng__"))
    extra = {k.partition("::")[2]: v for k, v in state.items() if k.startswith("__extra__::")}
    params = dict(model.named_parameters())
    fused = bool(optim.defaults.get("fused"))  # fused Adam keeps its step count on the device
    for key, value in state.items():
        name, _, field = key.partition("::")
        if name == "__extra__":
            continue
        p = params.get(name)
        if p is None:
            raise CheckpointError(
                f"{ckpt.optim} holds state for '{name}', which the model lacks; "
                "was config.json edited after the run was written?"
            )
        optim.state[p][field] = value.to(p.device) if field != "step" or fused else value
    return extra


def load_run(
    run_dir: Path, step: int | None = None, device: str | torch.device = "cpu"
) -> tuple[Config, HookedModule, Checkpoint]:
    """A run's configuration and its model at `step` (default: the last checkpoint)."""
    cfg = read_config(run_dir)
    ckpt = find(run_dir, step)
    return cfg, load_model(cfg, ckpt, device), ckpt
