"""Many trainings at once: a grid (or a spec file) of overrides, each trial an ordinary run
directory.

    SWEEP/sweep.json        the spec, the backend, and every trial (index, name, overrides)
    SWEEP/<trial name>/     one ordinary run directory per trial, named by its swept overrides
    SWEEP/results.jsonl     a row per finished trial: overrides, status, seconds, summary, error
    SWEEP/summary.md        a table, and figures: drop step and final level (the headline loss)
                            against each swept key, every trial's curve on one plot

Trials run in separate processes (a model seeds the global RNG; training installs signal
handlers): locally each trial in a process of its own, `workers` at a time, or as Ray tasks
(`backend="ray"`). A failed trial, even one whose process was killed, is recorded with its cause
and the sweep goes on; Ctrl-C stops every trial at a step boundary with a checkpoint, and
`--resume` finishes what is left. A local trial's process dies with the sweep, however the sweep
dies. One sweep at a time per directory (the same flock as a run directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import importlib.util
import itertools
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from .. import tracking
from ..checks import validate_run
from ..config import ConfigError, apply_overrides, key_type, preset
from ..config.schema import RENAMED
from ..run.rundir import (
    RunDirError,
    RunLock,
    atomic_write_bytes,
    atomic_write_json,
    check_name,
    dumps,
    ensure_dir,
    read_json,
    read_jsonl,
    remove_temp_files,
    upgrade_summary,
)


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
    """A key's value or list of values (from a spec file or the command line) as override texts.
    ConfigError for an empty list or value, YAML's null (no key takes None: an empty string is
    '') and a mapping or nested list."""
    values = raw if isinstance(raw, list) else [raw]
    if any(v is None for v in values):
        raise ConfigError(
            f"sweep: {key}: null is not a value (no key can be None); write '' for an empty text"
        )
    if any(not isinstance(v, (str, int, float)) for v in values):
        raise ConfigError(f"sweep: {key}: a value must be a number, text or true/false")
    out = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    if not out or any(not v.strip() for v in out):
        raise ConfigError(f"sweep: {key} needs a non-empty list of values")
    return out


def spec_from_args(preset_name: str, items: Iterable[str]) -> SweepSpec:
    """`key=a,b,c` sweeps a key over its values, `key=v` fixes it; `seed=0,1,2` repeats with
    seeds. Where a comma separates values: `split_values`."""
    spec = SweepSpec(preset=preset_name)
    seen = set()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"sweep: '{item}' is not of the form key=value or key=a,b,c")
        if RENAMED.get(key, key) in seen:  # as in a spec file: the second must not just win
            raise ConfigError(f"sweep: {key} given more than once; give all its values in one")
        seen.add(RENAMED.get(key, key))
        values = _values(key, split_values(key, raw))
        if key == "seed":
            spec.seeds = [_seed(v) for v in values]
        elif len(values) > 1:
            spec.grid[key] = values
        else:
            spec.fixed[key] = values[0]
    return spec


def split_values(key: str, raw: str) -> list[str]:
    """The values of a command line's `key=raw`: split at each `;` if it has one (any key: the
    explicit form), else at each `,` unless the key's one value is itself a comma list (type
    `list`: train.log_to, attn_bias.layers, ...), which takes `raw` whole. ConfigError for an
    unknown key."""
    if ";" in raw:
        return [v.strip() for v in raw.split(";")]
    if key_type(key) == "list":
        return [raw.strip()]
    return [v.strip() for v in raw.split(",")]


def _seed(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"sweep: seed '{raw}' is not an integer") from None


def read_yaml(path: Path) -> Any:
    """A YAML file as YAML 1.2 reads it (ruamel.yaml, not PyYAML's 1.1): `010` is ten, not eight;
    `no`, `on` and `1:20` are text; null is None. ConfigError in one line for a file that cannot be
    read, is not YAML, or gives a key twice in one mapping (which YAML 1.1 readers resolve silently
    to the last)."""
    from ruamel.yaml import YAML, YAMLError

    try:
        return YAML(typ="safe", pure=True).load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it ({e})") from None
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        # a duplicate's problem goes on with its values' types ("[]"), which say nothing
        problem = str(getattr(e, "problem", None) or e).split(" with value ")[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def spec_from_file(path: Path, preset_name: str | None = None) -> SweepSpec:
    """A YAML spec file (see the README): preset, fixed, grid, zip, seeds (a list, or a count)."""
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise ConfigError(f"sweep spec {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"sweep spec {path}: expected a mapping with preset, fixed, grid, zip, seeds"
        )
    unknown = set(raw) - {"preset", "fixed", "grid", "zip", "seeds"}
    if unknown:
        raise ConfigError(
            f"sweep spec {path}: unknown section(s) {sorted(unknown)}; use preset, fixed, grid, "
            "zip, seeds"
        )
    seeds = raw.get("seeds")
    if seeds is None:
        seeds = []
    elif isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 1 <= seeds <= MAX_TRIALS:  # 0 or less would silently run one unseeded trial
            raise ConfigError(
                f"sweep spec {path}: seeds: a count must be in [1, {MAX_TRIALS}], got {seeds}"
            )
        seeds = list(range(seeds))
    elif not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"sweep spec {path}: seeds must be a non-empty list or a count >= 1")
    sections = {}
    for name in ("fixed", "grid", "zip"):
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"sweep spec {path}: {name} must map keys to values")
        sections[name] = section
    fixed = {}
    for k, v in sections["fixed"].items():
        if isinstance(v, list):  # one value for every trial: a list is a grid's
            raise ConfigError(f"sweep spec {path}: fixed: {k} takes one value; sweep it in grid")
        fixed[k] = _values(k, v)[0]
    preset_raw = raw.get("preset", "small")
    if not isinstance(preset_raw, str):
        raise ConfigError(f"sweep spec {path}: preset must be a preset's name, got {preset_raw!r}")
    return SweepSpec(
        preset=preset_name or preset_raw,
        fixed=fixed,
        grid={k: _values(k, v) for k, v in sections["grid"].items()},
        zip={k: _values(k, v) for k, v in sections["zip"].items()},
        seeds=[_seed(str(s)) for s in seeds],
    )


# each trial is validated up front and gets a directory: a larger sweep is a mistake
MAX_TRIALS = 10_000
MAX_NAME = 120  # characters of a trial's directory name (a file system allows 255 bytes)


def _trial_names(spec: SweepSpec, swept: list[dict[str, str]]) -> list[str]:
    """A directory name per trial from its swept values, distinct for distinct trials: every swept
    key is shown (a zip key walked with the same values as another, reinit=g with trainable=g,
    once), by its last part unless two shown keys share it; a name that would be too long, or
    that sanitising made equal to another, ends in a hash of the trial's values."""
    zipped = list(spec.zip)
    shown = [k for k in spec.grid] + [
        k for i, k in enumerate(zipped) if spec.zip[k] not in [spec.zip[z] for z in zipped[:i]]
    ]
    shown += ["seed"] if spec.seeds else []
    tails = [k.split(".")[-1] for k in shown]
    labels = {k: t if tails.count(t) == 1 else k for k, t in zip(shown, tails)}
    names = []
    for values in swept:
        text = "_".join(f"{labels[k]}={values[k]}" for k in shown) or "trial"
        name = re.sub(r"[^A-Za-z0-9.=+_-]+", "-", text)
        if len(name) > MAX_NAME:
            name = f"{name[: MAX_NAME - 13]}-{_digest(values)}"
        names.append(name)
    shared = {n for n in names if names.count(n) > 1}
    return [
        f"{n[: MAX_NAME - 13]}-{_digest(v)}" if n in shared else n for n, v in zip(names, swept)
    ]


def _digest(values: dict[str, str]) -> str:
    return hashlib.sha256(dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def _count(spec: SweepSpec) -> int:
    grid = math.prod(len(v) for v in spec.grid.values())
    return grid * (len(next(iter(spec.zip.values()))) if spec.zip else 1) * max(1, len(spec.seeds))


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of the spec, each validated as a full configuration (ConfigError names the
    trial)."""
    lengths = {len(v) for v in spec.zip.values()}
    if len(lengths) > 1:
        raise ConfigError(
            "sweep: zip lists must have one length, got "
            f"{dict((k, len(v)) for k, v in spec.zip.items())}"
        )
    fixed, grid, zipped = (
        {RENAMED.get(k, k) for k in keys} for keys in (spec.fixed, spec.grid, spec.zip)
    )
    # a renamed key's old name is the same key
    overlap = (grid & zipped) | (fixed & (grid | zipped))
    if spec.seeds:
        overlap |= {"seed"} & (fixed | grid | zipped)
    if overlap:
        raise ConfigError(f"sweep: key(s) {sorted(overlap)} given more than once")
    if _count(spec) > MAX_TRIALS:
        raise ConfigError(
            f"sweep: {_count(spec)} trials; at most {MAX_TRIALS} (each is a training run): sweep "
            "fewer values"
        )
    zipped = [dict(zip(spec.zip, row)) for row in zip(*spec.zip.values())] if spec.zip else [{}]
    grid = [dict(zip(spec.grid, combo)) for combo in itertools.product(*spec.grid.values())]
    seeds = [{"seed": str(s)} for s in spec.seeds] or [{}]
    swept = [{**g, **z, **s} for g, z, s in itertools.product(grid, zipped, seeds)]
    trials, seen = [], {}
    for values, name in zip(swept, _trial_names(spec, swept)):
        trial = Trial(len(trials), name, {**spec.fixed, **values})
        try:
            resolved = dumps(
                config_of(spec.preset, trial.overrides, spec.base_run).to_dict(), sort_keys=True
            )
        except ConfigError as e:
            raise ConfigError(f"sweep trial {trial.name}: {e}") from None
        if resolved in seen:  # e.g. 32 and 32.0: two values that are one setting
            raise ConfigError(
                f"sweep: trials {seen[resolved]} and {trial.name} are the same configuration; "
                "give each value once"
            )
        seen[resolved] = trial.name
        trials.append(trial)
    if len({t.name for t in trials}) != len(trials):
        raise ConfigError(
            "sweep: two trials would share a directory name; make the swept values distinct"
        )
    return trials


def config_of(preset_name: str, overrides: dict[str, str], base_run: str = ""):
    from ..run.rundir import read_config

    base = read_config(Path(base_run)) if base_run else preset(preset_name)
    cfg = validate_run(apply_overrides(base, [f"{k}={v}" for k, v in overrides.items()]))
    tracking.require(cfg.train.log_to)  # a missing tracker package: refused as the sweep starts
    return cfg


# --- one trial, in its own process
# -------------------------------------------------------------------

# written into the sweep directory when it is stopped: queued trials do not start
STOP_NAME = ".stop"
# seconds a trial waits for its run directory's lock: a trial of a killed sweep may still be saving
LOCK_WAIT = 120.0


def run_trial(
    preset_name: str, overrides: dict[str, str], out_dir: str, threads: int, base_run: str = ""
) -> dict[str, Any]:
    """Train (or finish) one trial's run directory; never raises: the row says what happened."""
    import torch

    from ..run import checkpoints
    from ..train.trainer import train

    # the sweep was stopped while this trial waited (Ray)
    if (Path(out_dir).parent / STOP_NAME).exists():
        return _not_started()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    row: dict[str, Any] = {"status": "done", "error": None}
    try:
        cfg = config_of(preset_name, overrides, base_run)
        out = Path(out_dir)
        started = (out / "config.json").exists()
        if started:
            with RunLock(out, wait=LOCK_WAIT):
                pass  # a worker of a killed sweep has let go of it
        # one that finished before the sweep was stopped (or by a worker of a killed sweep) trains
        # nothing, and its trackers replay what they lack; the trials of one sweep are one W&B
        # group; TensorBoard: `--logdir SWEEP`
        row["summary"] = train(cfg, out, resume=started, verbose=False, group=out.parent.name)
    except KeyboardInterrupt:
        row.update(status="interrupted", summary=None)
    except (Exception, checkpoints.CheckpointError) as e:  # a failed trial must not stop the sweep
        row.update(status="failed", summary=None, error=describe(e))
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def describe(e: BaseException) -> str:
    """An exception in one line that keeps its cause: the original exception a wrapper (Ray's
    RayTaskError) carries, and the innermost error a multi-line message names (an import failing
    on a worker reports its ModuleNotFoundError inside a RuntimeError's text)."""
    cause = getattr(e, "cause", None) or e
    lines = [
        line.strip() for line in f"{type(cause).__name__}: {cause}".splitlines() if line.strip()
    ]
    text = lines[0]
    inner = [
        line
        for line in lines[1:]
        if re.match(r"[A-Za-z_][\w.]*(Error|Exception)(\(\w+\))?: ", line)
    ]
    if inner:
        text = f"{text.split('. ')[0].rstrip(':')}: {inner[-1]}"
    return text if len(text) <= 500 else text[:497] + "..."


def _not_started() -> dict[str, Any]:
    return {"status": "interrupted", "summary": None, "error": None, "seconds": 0.0}


def _child(conn: Any, parent: int, fn: Callable, args: tuple) -> None:
    """A local trial's process: its own process group (a terminal's Ctrl-C reaches the sweep alone,
    which asks each trial to stop once), dying with the sweep, and sending back one row."""
    row = _not_started()
    try:
        os.setpgid(0, 0)
        _die_with_parent(parent)
        # training installs its own handlers
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        # blocked since the start
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        # A trial shows no bar; tqdm's default lock is a named semaphore, which a killed trial
        # would leak (and the sweep's resource tracker then warn about).
        tqdm.set_lock(threading.RLock())
        row = fn(*args)
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001  (run_trial reports its own; this is anything before it)
        row = {"status": "failed", "summary": None, "error": describe(e), "seconds": 0.0}
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # the sweep is gone: nobody to tell
        conn.send(row)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this process when the sweep (`parent`) dies, however it dies (kill -9 too): a
    training trial then saves a checkpoint and stops. The kernel does it on Linux (prctl
    PR_SET_PDEATHSIG); a thread watching the parent id does it elsewhere, and covers a parent
    that died before the prctl."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    threading.Thread(target=watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


def watch_parent(parent: int, interval: float = 0.5) -> None:
    """Send this process SIGTERM once its parent is no longer `parent` (it died: we were
    re-parented)."""
    while os.getppid() == parent:
        time.sleep(interval)
    os.kill(os.getpid(), signal.SIGTERM)


# --- backends
# ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    fn: Callable
    args: tuple
    process: Any = None
    conn: Any = None  # the sweep's end of the pipe the trial's row comes back on
    row: dict[str, Any] | None = None
    started: float = 0.0


class LocalBackend:
    """Each trial in a spawned process of its own (nothing inherited but the arguments), `workers`
    at a time. A process that dies (killed, out of memory) fails its own trial and no other."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.ctx = multiprocessing.get_context("spawn")
        # Started now, not inside the first start(): starting it unblocks SIGINT (see _start).
        multiprocessing.resource_tracker.ensure_running()
        self.queued: list[_Job] = []
        self.running: list[_Job] = []
        self.finished: list[_Job] = []

    def submit(self, fn: Callable, *args: Any) -> _Job:
        job = _Job(fn, args)
        self.queued.append(job)
        return job

    def _start(self) -> None:
        while self.queued and len(self.running) < self.workers:
            job = self.queued.pop(0)
            recv, send = self.ctx.Pipe(duplex=False)
            job.process = self.ctx.Process(
                target=_child, args=(send, os.getpid(), job.fn, job.args), name="abrupt-trial"
            )
            # The child inherits this mask: a Ctrl-C while it imports stays pending (no traceback
            # from a half-started process) until it has its handlers; so does this process's own.
            # The job is on the books before an interrupt held back meanwhile is delivered.
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                job.process.start()
                job.conn, job.started = recv, time.perf_counter()
                self.running.append(job)
            finally:
                send.close()
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def wait(self, pending: set, timeout: float) -> tuple[set, set]:
        self._start()
        if not self.finished:
            listening = [j.conn for j in self.running if j.conn is not None]
            multiprocessing.connection.wait(
                listening + [j.process.sentinel for j in self.running], timeout
            )
        for job in list(self.running):
            if job.conn is not None and job.conn.poll():
                with contextlib.suppress(EOFError, OSError):
                    job.row = job.conn.recv()
                job.conn.close()
                job.conn = None
            if job.conn is None and not job.process.is_alive():
                job.process.join()
                self.running.remove(job)
                self.finished.append(job)
        done = {j for j in self.finished if j in pending}
        self.finished = [j for j in self.finished if j not in done]
        return done, set(pending) - done

    @staticmethod
    def result(job: _Job) -> dict[str, Any]:
        if job.row is not None:
            return job.row
        code = job.process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return {
            "status": "failed",
            "summary": None,
            "seconds": round(time.perf_counter() - job.started, 2),
            "error": f"the trial's process died ({how}) before it reported; its run directory "
            "resumes with --resume",
        }

    def interrupt(self, pending: set) -> set:
        """Drop the trials not yet started (recorded as interrupted) and ask the running ones to
        stop at their next step boundary; returns the handles still to wait for."""
        for job in self.queued:
            job.row = _not_started()
        self.finished += self.queued
        self.queued = []
        for job in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.process.pid, signal.SIGINT)
        return set(pending)

    def stop(self) -> None:
        """Trials still running (the sweep failed) stop as on SIGTERM, saving a checkpoint first."""
        for job in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.process.pid, signal.SIGTERM)
        for job in self.running:
            job.process.join(LOCK_WAIT)
            if job.process.is_alive():
                job.process.kill()
                job.process.join()


# seconds to reach a given Ray address before giving up (Ray itself retries for minutes)
RAY_CONNECT_TIMEOUT = 10.0


class RayBackend:
    """Each trial a Ray task with its CPU (and GPU) request; `address` None starts a local
    cluster."""

    def __init__(self, workers: int, threads: int, gpus: float, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'abrupt[ray]'") from None
        self.ray = ray
        self.options = {"num_cpus": threads, "num_gpus": gpus, "max_retries": 0}
        self.remotes: dict[Callable, Any] = {}
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                _check_reachable(address)
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers * threads
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(
                    f"--address {address}: cannot start or join a Ray cluster ({describe(e)})"
                ) from None

    def submit(self, fn: Callable, *args: Any) -> Any:
        if fn not in self.remotes:
            self.remotes[fn] = self.ray.remote(**self.options)(fn)
        return self.remotes[fn].remote(*args)

    def wait(self, pending: set, timeout: float) -> tuple[set, set]:
        done, rest = self.ray.wait(list(pending), num_returns=1, timeout=timeout)
        return set(done), set(rest)

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.TaskCancelledError:  # dropped by our interrupt before it started
            return _not_started()
        except Exception as e:  # noqa: BLE001  (a task that could not start, or whose worker died)
            return {"status": "failed", "summary": None, "error": describe(e), "seconds": None}

    def interrupt(self, pending: set) -> set:
        for ref in pending:
            self.ray.cancel(ref)  # a queued task is dropped; a running one gets KeyboardInterrupt
        return set(pending)

    def stop(self) -> None:
        self.ray.shutdown()


def check_backend(backend: str, address: str | None) -> None:
    """Refuse a Ray backend that cannot work (Ray missing, an address nobody answers at) before
    anything is written."""
    if backend != "ray":
        return
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--backend ray needs Ray: pip install 'abrupt[ray]'")
    if address:
        _check_reachable(address)


def _check_reachable(address: str) -> None:
    """A host:port (or ray://host:port) address must accept a connection within a few seconds."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if not m:
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=RAY_CONNECT_TIMEOUT).close()
    except OSError as e:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e}); "
            "start one with `ray start --head` or check the address"
        ) from None


# --- the sweep
# ----------------------------------------------------------------------------------------


@dataclass
class Sweep:
    out: Path
    spec: SweepSpec
    trials: list[Trial]
    threads: int = 1

    @classmethod
    def create(
        cls, out: Path, spec: SweepSpec, threads: int = 1, command: str = "sweep"
    ) -> "Sweep":
        """A new sweep in `out`; `command` (sweep, components) is the one that resumes it."""
        trials = expand(spec)
        out = Path(out)
        check_name(out)
        if (out / "sweep.json").exists():
            raise RunDirError(
                f"{out} already holds a sweep; finish it with `abrupt {command} --resume {out}`"
            )
        if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):
            raise RunDirError(
                f"{out} is not empty and is not a sweep; choose a new or empty directory"
            )
        ensure_dir(out)
        sweep = cls(out, spec, trials, threads)
        atomic_write_json(
            out / "sweep.json",
            {
                "spec": dataclasses.asdict(spec),
                "threads": threads,
                "trials": [dataclasses.asdict(t) for t in trials],
            },
        )
        return sweep

    @classmethod
    def open(cls, out: Path) -> "Sweep":
        out = Path(out)
        if not (out / "sweep.json").exists():
            raise RunDirError(f"{out} is not a sweep directory (no sweep.json)")
        raw = read_json(out / "sweep.json")
        try:
            return cls(
                out,
                SweepSpec(**raw["spec"]),
                [Trial(**t) for t in raw["trials"]],
                int(raw.get("threads", 1)),
            )
        except (KeyError, TypeError) as e:
            raise RunDirError(f"{out / 'sweep.json'} is not a valid sweep record ({e})") from None

    def rows(self) -> dict[int, dict[str, Any]]:
        """The latest row of each trial in results.jsonl."""
        latest = {}
        for row in read_results(self.out / "results.jsonl"):
            latest[row["index"]] = row
        return latest

    def run(
        self,
        backend: str = "local",
        workers: int = 1,
        gpus: float = 0.0,
        address: str | None = None,
        verbose: bool = True,
    ) -> dict[int, dict[str, Any]]:
        """Run every trial not yet done; returns the final row of each trial."""
        with RunLock(self.out), _terminate_as_interrupt():
            (self.out / STOP_NAME).unlink(missing_ok=True)
            remove_temp_files(self.out)  # left by a sweep killed while it wrote
            todo = [t for t in self.trials if self.rows().get(t.index, {}).get("status") != "done"]
            engine = (
                RayBackend(workers, self.threads, gpus, address)
                if backend == "ray"
                else LocalBackend(workers)
            )
            try:
                self._drive(engine, todo, verbose)
            finally:
                engine.stop()
                self._rewrite_results()
            rows = self.rows()
            from .summary import write_summary

            write_summary(self)
        return rows

    def _drive(self, engine: Any, todo: list[Trial], verbose: bool) -> None:
        bar = tqdm(
            total=len(self.trials),
            initial=len(self.trials) - len(todo),
            disable=not verbose,
            desc="sweep",
            unit="trial",
        )
        pending = {
            engine.submit(
                run_trial,
                self.spec.preset,
                t.overrides,
                str((self.out / t.name).resolve()),
                self.threads,
                self.spec.base_run,
            ): t
            for t in todo
        }
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
                    row = self._record(trial, engine.result(handle))
                    if row["status"] in counts:
                        counts[row["status"]] += 1
                    final = (row.get("summary") or {}).get("final_level")
                    best = min(best, final) if isinstance(final, (int, float)) else best
                    bar.update(1)
                    bar.set_postfix(
                        running=len(pending),
                        failed=counts["failed"],
                        best_level=f"{best:.4g}",
                        refresh=False,
                    )
        finally:
            bar.close()
        # by the user; a trial stopped on its own is recorded and the sweep finishes
        if interrupted:
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
    """Rows of a sweep's results.jsonl (a line cut by a kill is skipped; a summary's old key
    names read as today's)."""
    rows = read_jsonl(path, "index")[0]
    return [
        {**r, "summary": upgrade_summary(r["summary"])} if r.get("summary") else r for r in rows
    ]
