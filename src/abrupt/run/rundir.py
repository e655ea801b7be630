"""The files of a run directory: atomic writes, strict JSON, metrics rows, and one writer at a time.

    config.json        full resolved configuration, with versions (as it started) and segments (each
    start and resume)
    metrics.jsonl      one JSON object per logged step
    signal.jsonl       the training batch's headline loss at every step, {"step", "loss"} (the
                       escape forecast's dense signal; written when train.forecast is on)
    checkpoints/       see checkpoints.py
    summary.json       plateau and drop (transition.py) and final losses
    loss.png           L, L_obs, L_mask against step, the transition marked
    forecast.png       the escape step as forecast during training (forecast.py), when there was one
    .lock              held (flock) by the one process writing the run

JSON is strict everywhere: NaN and infinities are written as null, so every file parses with
any JSON reader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import signal
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from ..checks import validate_run
from ..config import Config

LOCK_NAME = ".lock"


class RunDirError(RuntimeError):
    """A run directory is in use, unreadable, or not a run."""


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block: one that arrives meanwhile is raised again, to
    its usual handler, as soon as the block ends. For C code that calls back into Python (reading a
    checkpoint): an interrupt raised inside it surfaces as that library's own error (a
    corrupt-looking checkpoint), not as a stop. Python runs signal handlers in the main thread
    only, so elsewhere this holds nothing back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(
                sig, signal.SIG_DFL if handler is None else handler
            )  # None: set outside Python
        if caught:
            signal.raise_signal(caught[0])


def jsonable(obj: Any) -> Any:
    """Plain JSON values: tensors and numpy scalars as lists/numbers, NaN and inf as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename: readers never see half a
    file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (dumps(obj, indent=2) + "\n").encode())


def atomic_write_text(path: Path, text: str) -> None:
    """`text` in UTF-8, whatever the locale's encoding; the bytes of a path that encoding could
    not decode (held as surrogate escapes: a directory 'ü' under LC_ALL=C) go back as they were,
    where strict UTF-8 would raise."""
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def read_json(path: Path) -> Any:
    """A JSON file of the run, or a RunDirError naming it when it is unreadable or an object in it
    gives a key twice (json alone keeps the last silently: a hand-edited config.json would run
    other values than it shows)."""
    try:
        return json.loads(Path(path).read_text(), object_pairs_hook=_once_each)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise RunDirError(f"{path} is not valid JSON ({e}); rewrite it or remove it") from None


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key '{key}' given twice")
        out[key] = value
    return out


def read_jsonl(path: Path, key: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of a JSON-lines file that are objects with an integer `key`, and the numbers of the
    corrupt lines before the last one (a last line cut by a kill is an unfinished write, not
    corrupt)."""
    path = Path(path)
    if not path.exists():
        return [], []
    lines = path.read_text(errors="replace").splitlines()
    rows, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get(key), int):
                raise ValueError(f"no integer {key}")
            rows.append(row)
        except ValueError:
            if number < len(lines):
                bad.append(number)
    return rows, bad


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl. A last line cut by a kill is dropped (it is an unfinished write); a
    corrupt line anywhere else is skipped with a warning naming it, and every other row is kept."""
    path = Path(run_dir) / "metrics.jsonl"
    rows, bad = read_jsonl(path, "step")
    if bad:
        warnings.warn(
            f"{path}: skipped corrupt line(s) {bad}; the other {len(rows)} rows are kept",
            stacklevel=2,
        )
    return rows


SIGNAL_FILE = "signal.jsonl"


def read_signal(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of signal.jsonl ([] where the run has none: written before the dense signal existed,
    or with the forecast off); like metrics.jsonl, a last line cut by a kill is dropped, and so is
    a row whose loss is not a number (a non-finite loss is written as null)."""
    rows = read_jsonl(Path(run_dir) / SIGNAL_FILE, "step")[0]
    return [r for r in rows if isinstance(r.get("loss"), (int, float))]


def write_signal(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(Path(run_dir) / SIGNAL_FILE, "".join(dumps(r) + "\n" for r in rows).encode())


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(
        Path(run_dir) / "metrics.jsonl", "".join(dumps(r) + "\n" for r in rows).encode()
    )


class RunLock:
    """An exclusive, non-blocking flock on RUN/.lock for the life of a writer. The kernel releases
    it when the process dies however it dies, so a killed run never leaves a stale lock."""

    def __init__(self, run_dir: Path, wait: float = 0.0) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.wait = wait  # seconds to wait for a holder to let go before refusing
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        ensure_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot write in {self.path.parent}: {e.strerror}") from None
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                os.close(fd)
                raise RunDirError(
                    f"{self.path.parent} is in use by another process (it holds {self.path}); "
                    "wait for it to finish or stop it first"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


NAME_MAX = 255  # bytes in one file name, on every common file system


def check_name(path: Path) -> None:
    """Refuse a path with a part longer than a file system takes (with room for the temporary
    files written beside it, .NAME.xxxx.tmp), before anything looks it up."""
    long = next((part for part in Path(path).parts if len(os.fsencode(part)) > NAME_MAX - 20), None)
    if long is not None:
        raise RunDirError(
            f"{str(path)[:60]}...: the name '{long[:30]}...' has {len(os.fsencode(long))} bytes; "
            f"at most {NAME_MAX - 20} per directory name"
        )


def ensure_dir(path: Path) -> None:
    """Create `path` (and parents) or say in one line why it cannot be a run directory."""
    path = Path(path)
    if str(path) in ("", "."):
        raise RunDirError("give the run directory a name (not the current directory)")
    check_name(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write in {path}: permission denied")


def check_fresh(run_dir: Path) -> None:
    """A new run may only go into an empty directory (its own lock file aside)."""
    run_dir = Path(run_dir)
    if (run_dir / "config.json").exists():
        if not (run_dir / "checkpoints").is_dir() or not any(
            (run_dir / "checkpoints").glob("step_*.json")
        ):
            raise RunDirError(
                f"{run_dir} holds a run that stopped before its first checkpoint; "
                f"`abrupt train --resume {run_dir}` starts it again from step 0"
            )
        raise RunDirError(
            f"{run_dir} already holds a run; continue it with `abrupt train --resume {run_dir}` "
            "or choose another --out"
        )
    others = [p.name for p in run_dir.iterdir() if p.name != LOCK_NAME]
    if others:
        raise RunDirError(
            f"{run_dir} is not empty and is not a run ({', '.join(sorted(others)[:3])}, ...); "
            "choose a new or empty directory"
        )


def remove_temp_files(directory: Path, names: tuple[str, ...] = ("*",)) -> None:
    """Delete the temporary files atomic writes of `names` left in `directory` when their writer
    was killed mid-write (`.NAME.xxxx.tmp`); call it holding the lock of the one writer of those
    files, so that none of them is being written."""
    with contextlib.suppress(OSError):
        for name in names:
            for p in Path(directory).glob(f".{name}.*.tmp"):
                p.unlink(missing_ok=True)


def unique_dir(parent: Path, stem: str) -> Path:
    """Create and return parent/stem, or parent/stem-2, -3, ...: mkdir is atomic, so runs started
    at the same moment never share a directory."""
    ensure_dir(parent)
    for i in range(1, 10_000):
        path = Path(parent) / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"no free directory name for {stem} in {parent}")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a run's config.json holds: the resolved configuration, and where it trained.

    `versions`: the runtime it started on (library versions, CPU, threads, device; {} when not
    recorded). `segments`: one per start or resume, oldest first, each with the step it started
    from (`from_step`), when (`started`) and its runtime; a run written before segments were
    recorded has one, from its `versions`."""

    config: Config
    versions: dict[str, Any]
    segments: list[dict[str, Any]]

    @property
    def threads(self) -> int | None:
        """The thread count the run last trained with (None when it recorded none)."""
        threads = next(
            (s["threads"] for s in reversed(self.segments) if isinstance(s.get("threads"), int)),
            None,
        )
        return threads if threads is None or threads >= 1 else None


_RECORDS = ("versions", "segments")  # config.json's keys that are records, not configuration


def read_run(run_dir: Path) -> RunRecord:
    """The run's config.json, the one reader of it: the configuration resolved (an older run's
    renamed keys as today's) and validated, with its runtime records. A RunDirError when the
    directory has no config.json or it is not a valid run configuration."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a run directory (no config.json)")
    raw = read_json(path)
    try:
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        cfg = Config.from_dict({k: v for k, v in raw.items() if k not in _RECORDS}, check=False)
        cfg = validate_run(cfg)
    except (AttributeError, ValueError) as e:
        raise RunDirError(f"{path} is not a valid run configuration: {e}") from None
    versions = raw.get("versions") if isinstance(raw.get("versions"), dict) else {}
    found = raw.get("segments")
    if isinstance(found, list) and all(isinstance(s, dict) for s in found):
        segments = found
    else:
        segments = [{"from_step": 0, **versions}] if versions else []
    return RunRecord(cfg, versions, segments)


def read_config(run_dir: Path) -> Config:
    """The resolved configuration a run wrote to its config.json (`read_run`)."""
    return read_run(run_dir).config


# summary.json's names of before the task protocol, read as today's (`upgrade_summary`): they said
# L_mask where a sequence run's level is a cross-entropy
OLD_SUMMARY_NAMES = {"plateau_loss_mask": "plateau_level", "final_loss_mask": "final_level"}


def upgrade_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary (summary.json, a sweep's row) with old key names (OLD_SUMMARY_NAMES) read as
    today's. An old sequence run wrote `final_loss_mask` null: its final level is `final_loss`,
    the output cross-entropy its plateau was read from."""
    out = {OLD_SUMMARY_NAMES.get(k, k): v for k, v in summary.items()}
    if "final_loss_mask" in summary and summary["final_loss_mask"] is None:
        out["final_level"] = summary.get("final_loss")
    return out


def read_summary(run_dir: Path) -> dict[str, Any]:
    """RUN/summary.json, old key names read as today's; {} where there is none. RunDirError for
    one that is not a JSON object."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return {}
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise RunDirError(f"{path} does not hold a JSON object")
    return upgrade_summary(summary)
