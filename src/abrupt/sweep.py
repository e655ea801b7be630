"""Many trainings at once: a grid (or a spec file) of overrides, each trial an ordinary run directory.

    SWEEP/sweep.json        the spec, the backend, and every trial (index, name, overrides)
    SWEEP/<trial name>/     one ordinary run directory per trial, named by its swept overrides
    SWEEP/results.jsonl     a row per finished trial: overrides, status, seconds, summary, error
    SWEEP/summary.md        a table, and figures: drop step and final L_mask against each swept
                            key, every trial's L_mask curve on one plot

Trials run in separate processes (a model seeds the global RNG; training installs signal
handlers), on a local process pool by default or as Ray tasks (`backend="ray"`). A failed trial
is recorded with its error and the sweep goes on; Ctrl-C stops every trial at a step boundary
with a checkpoint, and `--resume` finishes what is left. One sweep at a time per directory
(the same flock as a run directory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import multiprocessing
import os
import re
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from .config import ConfigError, apply_overrides, preset
from .rundir import RunDirError, RunLock, atomic_write_bytes, atomic_write_json, dumps, ensure_dir, read_json, read_jsonl


@dataclass
class SweepSpec:
    """What to sweep. `grid`: cartesian product of value lists; `zip`: lists walked together (all
    the same length); `seeds`: every combination repeated with these seeds; `fixed`: overrides for
    every trial."""

    preset: str = "small"
    base_run: str = ""  # trials start from this run's configuration instead of the preset's
    fixed: dict[str, str] = field(default_factory=dict)
    grid: dict[str, list[str]] = field(default_factory=dict)
    zip: dict[str, list[str]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)

    def swept_keys(self) -> list[str]:
        return list(self.grid) + list(self.zip) + (["seed"] if self.seeds else [])


@dataclass
class Trial:
    index: int
    name: str
    overrides: dict[str, str]  # the swept values and the fixed ones, as override strings


def _values(key: str, raw: Any) -> list[str]:
    values = raw if isinstance(raw, list) else [raw]
    out = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    if not out or any(not v.strip() for v in out):
        raise ConfigError(f"sweep: {key} needs a non-empty list of values")
    return out


def spec_from_args(preset_name: str, items: Iterable[str]) -> SweepSpec:
    """`key=a,b,c` sweeps a key over its values, `key=v` fixes it; `seed=0,1,2` repeats with seeds."""
    spec = SweepSpec(preset=preset_name)
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"sweep: '{item}' is not of the form key=value or key=a,b,c")
        values = _values(key, [v.strip() for v in raw.split(",")])
        if key == "seed":
            spec.seeds = [_seed(v) for v in values]
        elif len(values) > 1:
            spec.grid[key] = values
        else:
            spec.fixed[key] = values[0]
    return spec


def _seed(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"sweep: seed '{raw}' is not an integer") from None


def spec_from_file(path: Path, preset_name: str | None = None) -> SweepSpec:
    """A YAML spec file (see the README): preset, fixed, grid, zip, seeds (a list, or a count)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"sweep spec {path}: cannot read it ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep spec {path}: expected a mapping with preset, fixed, grid, zip, seeds")
    unknown = set(raw) - {"preset", "fixed", "grid", "zip", "seeds"}
    if unknown:
        raise ConfigError(f"sweep spec {path}: unknown section(s) {sorted(unknown)}; use preset, fixed, grid, zip, seeds")
    seeds = raw.get("seeds") or []
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    if not isinstance(seeds, list):
        raise ConfigError(f"sweep spec {path}: seeds must be a list or a count")
    sections = {}
    for name in ("fixed", "grid", "zip"):
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"sweep spec {path}: {name} must map keys to values")
        sections[name] = section
    return SweepSpec(
        preset=preset_name or str(raw.get("preset", "small")),
        fixed={k: _values(k, v)[0] for k, v in sections["fixed"].items()},
        grid={k: _values(k, v) for k, v in sections["grid"].items()},
        zip={k: _values(k, v) for k, v in sections["zip"].items()},
        seeds=[_seed(str(s)) for s in seeds],
    )


def _name(swept: dict[str, str]) -> str:
    shown: dict[str, str] = {}
    for k, v in swept.items():  # keys zipped to equal values (reinit=g with trainable=g) show once
        if v not in shown.values():
            shown[k] = v
    text = "_".join(f"{k.split('.')[-1]}={v}" for k, v in shown.items()) or "trial"
    return re.sub(r"[^A-Za-z0-9.=+_-]+", "-", text)


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of the spec, each validated as a full configuration (ConfigError names the trial)."""
    lengths = {len(v) for v in spec.zip.values()}
    if len(lengths) > 1:
        raise ConfigError(f"sweep: zip lists must have one length, got {dict((k, len(v)) for k, v in spec.zip.items())}")
    overlap = (set(spec.grid) & set(spec.zip)) | (set(spec.fixed) & (set(spec.grid) | set(spec.zip)))
    if overlap:
        raise ConfigError(f"sweep: key(s) {sorted(overlap)} given more than once")
    zipped = [dict(zip(spec.zip, row)) for row in zip(*spec.zip.values())] if spec.zip else [{}]
    grid = [dict(zip(spec.grid, combo)) for combo in itertools.product(*spec.grid.values())]
    seeds = [{"seed": str(s)} for s in spec.seeds] or [{}]
    trials = []
    for g, z, s in itertools.product(grid, zipped, seeds):
        swept = {**g, **z, **s}
        trial = Trial(len(trials), _name(swept), {**spec.fixed, **swept})
        try:
            config_of(spec.preset, trial.overrides, spec.base_run)
        except ConfigError as e:
            raise ConfigError(f"sweep trial {trial.name}: {e}") from None
        trials.append(trial)
    if len({t.name for t in trials}) != len(trials):
        raise ConfigError("sweep: two trials would share a directory name; make the swept values distinct")
    return trials


def config_of(preset_name: str, overrides: dict[str, str], base_run: str = ""):
    from .checkpoints import read_config

    base = read_config(Path(base_run)) if base_run else preset(preset_name)
    return apply_overrides(base, [f"{k}={v}" for k, v in overrides.items()])


# --- one trial, in its own process -------------------------------------------------------------------

STOP_NAME = ".stop"  # written into the sweep directory when it is stopped: queued trials do not start


def run_trial(preset_name: str, overrides: dict[str, str], out_dir: str, threads: int, base_run: str = "") -> dict[str, Any]:
    """Train (or finish) one trial's run directory; never raises: the row says what happened."""
    if (Path(out_dir).parent / STOP_NAME).exists():
        return {"status": "interrupted", "summary": None, "error": None, "seconds": 0.0}
    import torch

    from . import checkpoints
    from .rundir import finish
    from .train import resume_point, train

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    row: dict[str, Any] = {"status": "done", "error": None}
    try:
        cfg = config_of(preset_name, overrides, base_run)
        out = Path(out_dir)
        started = (out / "config.json").exists()
        last = resume_point(out) if started else None
        if last is not None and last.step >= cfg.train.steps:
            summary = finish(out)  # finished before the sweep was stopped
        else:
            summary = train(cfg, out, resume=started, progress=False)
        row["summary"] = summary
    except KeyboardInterrupt:
        row.update(status="interrupted", summary=None)
    except (Exception, checkpoints.CheckpointError) as e:  # a failed trial must not stop the sweep
        row.update(status="failed", summary=None, error=f"{type(e).__name__}: {e}")
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _ignore_sigint_while_idle() -> None:
    # Ctrl-C reaches every process of the group; an idle worker must not die of it (a training
    # worker installs its own handler, which saves a checkpoint and stops at a step boundary).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --- backends ---------------------------------------------------------------------------------------

class LocalBackend:
    """A process pool on this machine (spawned processes: nothing inherited but the arguments)."""

    def __init__(self, workers: int) -> None:
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_ignore_sigint_while_idle)

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def wait(self, pending: set, timeout: float) -> tuple[set, set]:
        done, rest = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
        return done, rest

    @staticmethod
    def result(handle: Any) -> dict[str, Any]:
        return handle.result()

    def interrupt(self, pending: set) -> set:
        """Cancel the trials not yet started and ask the running ones to stop at their next step
        boundary (as Ctrl-C in a terminal does); returns the handles still to wait for."""
        left = {f for f in pending if not f.cancel()}
        for proc in list(getattr(self.pool, "_processes", {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        return left

    def stop(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Each trial a Ray task with its CPU (and GPU) request; `address` None starts a local cluster."""

    def __init__(self, workers: int, threads: int, gpus: float, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'abrupt[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers * threads
            ray.init(**kwargs)
        self.remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(run_trial)

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self.remote.remote(*args)

    def wait(self, pending: set, timeout: float) -> tuple[set, set]:
        done, rest = self.ray.wait(list(pending), num_returns=1, timeout=timeout)
        return set(done), set(rest)

    def result(self, handle: Any) -> dict[str, Any]:
        return self.ray.get(handle)

    def interrupt(self, pending: set) -> set:
        for ref in pending:
            self.ray.cancel(ref)  # a queued task is dropped; a running one gets KeyboardInterrupt
        return set(pending)

    def stop(self) -> None:
        self.ray.shutdown()


# --- the sweep ----------------------------------------------------------------------------------------

@dataclass
class Sweep:
    out: Path
    spec: SweepSpec
    trials: list[Trial]
    threads: int = 1

    @classmethod
    def create(cls, out: Path, spec: SweepSpec, threads: int = 1) -> "Sweep":
        trials = expand(spec)
        out = Path(out)
        if (out / "sweep.json").exists():
            raise RunDirError(f"{out} already holds a sweep; finish it with `abrupt sweep --resume {out}`")
        if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):
            raise RunDirError(f"{out} is not empty and is not a sweep; choose a new or empty directory")
        ensure_dir(out)
        sweep = cls(out, spec, trials, threads)
        atomic_write_json(out / "sweep.json", {"spec": dataclasses.asdict(spec), "threads": threads,
                                              "trials": [dataclasses.asdict(t) for t in trials]})
        return sweep

    @classmethod
    def open(cls, out: Path) -> "Sweep":
        out = Path(out)
        if not (out / "sweep.json").exists():
            raise RunDirError(f"{out} is not a sweep directory (no sweep.json)")
        raw = read_json(out / "sweep.json")
        try:
            return cls(out, SweepSpec(**raw["spec"]), [Trial(**t) for t in raw["trials"]], int(raw.get("threads", 1)))
        except (KeyError, TypeError) as e:
            raise RunDirError(f"{out / 'sweep.json'} is not a valid sweep record ({e})") from None

    def rows(self) -> dict[int, dict[str, Any]]:
        """The latest row of each trial in results.jsonl."""
        latest = {}
        for row in read_results(self.out / "results.jsonl"):
            latest[row["index"]] = row
        return latest

    def run(self, backend: str = "local", workers: int = 1, gpus: float = 0.0, address: str | None = None,
            progress: bool = True) -> dict[int, dict[str, Any]]:
        """Run every trial not yet done; returns the final row of each trial."""
        with RunLock(self.out), _terminate_as_interrupt():
            (self.out / STOP_NAME).unlink(missing_ok=True)
            todo = [t for t in self.trials if self.rows().get(t.index, {}).get("status") != "done"]
            engine = RayBackend(workers, self.threads, gpus, address) if backend == "ray" else LocalBackend(workers)
            try:
                self._drive(engine, todo, progress)
            finally:
                engine.stop()
                self._rewrite_results()
            rows = self.rows()
        from .sweep_summary import write_summary

        write_summary(self)
        return rows

    def _drive(self, engine: Any, todo: list[Trial], progress: bool) -> None:
        bar = tqdm(total=len(self.trials), initial=len(self.trials) - len(todo), disable=not progress, desc="sweep", unit="trial")
        pending = {engine.submit(run_trial, self.spec.preset, t.overrides, str((self.out / t.name).resolve()), self.threads,
                                 self.spec.base_run): t for t in todo}
        counts = {"failed": 0, "interrupted": 0}
        best = math.inf
        interrupted = False
        try:
            while pending:
                try:
                    done, _ = engine.wait(set(pending), timeout=1.0)
                except KeyboardInterrupt:
                    if not interrupted:  # the trials stop at a step boundary and report back
                        interrupted = True
                        (self.out / STOP_NAME).touch()
                        keep = engine.interrupt(set(pending))
                        pending = {h: t for h, t in pending.items() if h in keep}
                    continue
                for handle in done:
                    trial = pending.pop(handle)
                    try:
                        result = engine.result(handle)
                    except Exception as e:  # noqa: BLE001  (a Ray task cancelled while queued)
                        result = {"status": "interrupted", "summary": None, "error": f"{type(e).__name__}", "seconds": 0.0}
                    row = self._record(trial, result)
                    if row["status"] in counts:
                        counts[row["status"]] += 1
                    final = (row.get("summary") or {}).get("final_loss_mask")
                    best = min(best, final) if isinstance(final, (int, float)) else best
                    bar.update(1)
                    bar.set_postfix(running=len(pending), failed=counts["failed"], best_L_mask=f"{best:.4g}", refresh=False)
        finally:
            bar.close()
        if interrupted or counts["interrupted"]:
            raise KeyboardInterrupt

    def _record(self, trial: Trial, result: dict[str, Any]) -> dict[str, Any]:
        row = {"index": trial.index, "trial": trial.name, "overrides": trial.overrides, **result}
        with open(self.out / "results.jsonl", "a") as f:
            f.write(dumps(row) + "\n")
        return row

    def _rewrite_results(self) -> None:
        """One row per trial, in trial order: the same file however often the sweep was resumed."""
        rows = self.rows()
        text = "".join(dumps(rows[i]) + "\n" for i in sorted(rows))
        atomic_write_bytes(self.out / "results.jsonl", text.encode())


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a scheduler's stop) and SIGINT (even when a background shell ignored it) stop the
    sweep the way Ctrl-C does: every trial saves at a step boundary and the sweep can resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a sweep's results.jsonl (a line cut by a kill is skipped)."""
    return read_jsonl(path, "index")[0]
