"""The paper's own run on one GPU, as one prepared script for a bare machine, held to one deadline.

    PYTHONPATH=src python benchmarks/gpu_paper.py --out "$OUT" [--deadline 540]
    PYTHONPATH=src python benchmarks/gpu_paper.py --out /tmp/smoke --smoke     # CPU, tiny preset

Needs only what a GPU machine has (torch, transformers, safetensors, tqdm, matplotlib,
scikit-learn; Jinja2 comes with torch): no cvxpy, no install, no network. Every stage takes its
share of one deadline (`--deadline`, seconds from the start of this process) and writes what it
finished under --out at once, so that a kill at any point leaves everything done before it:

1. training: the `paper` preset in bf16 (TF32 in its steps only), no early checkpoints, ending
   2 000 steps after the drop (train.stop_after_drop), in a scratch run directory outside --out,
   until the deadline less the later stages' shares. Once the rate is measured it prints the
   projected last step and whether that reaches the paper's drop (14k-16k steps); when it does not,
   training takes more of the analyses' share (down to MIN_ANALYSES_S). Then summary.json,
   summary.txt, metrics.jsonl and a first paper-run.tar.gz are written.
2. analyses: every analysis on the models loaded once (on the GPU), cheap and headline ones first,
   each guarded: one that fails is recorded and the next runs; when the share runs out, the one
   running stops and the rest are skipped, each with a note. The archive is re-packed after each.
3. report: report.html, re-packed.
4. throughput: training steps/s of our model against transformers.BertModel + read-out on the same
   device and batches, fp32 (TF32) and bf16 (throughput.json).
5. gpt (with --gpt-budget S, and always in --smoke): the `gpt` preset for at most S seconds
   (gpt-summary.json, gpt-run.tar.gz).
Every stage's status, time and error (with where it was raised) is in summary.json's `stages` and
`errors`. SIGTERM or Ctrl-C ends the stage running (training at a step boundary), skips the rest
and packs what is there. Under --out it leaves at most seven files, each far under 16 MiB
(paper-run.tar.gz holds metrics.jsonl, summary.json, config.json, loss.png, forecast.png,
report.html and every analysis's results.json; never a checkpoint). docs/results.md ("The paper's
run on one GPU") describes the stages and shares.
"""

from __future__ import annotations

import time

_START = time.monotonic()  # the deadline counts from here: imports and CUDA start-up included

import argparse  # noqa: E402 -- after the clock starts
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # hf_oracle

from abrupt.config import Config, apply_overrides, preset  # noqa: E402
from abrupt.data import generator, sample_batch  # noqa: E402
from abrupt.losses import losses  # noqa: E402
from abrupt.models.registry import build_model  # noqa: E402
from abrupt.run.rundir import atomic_write_bytes, atomic_write_json  # noqa: E402
from abrupt.train.trainer import resolve_device, tf32, train  # noqa: E402

PAPER_DROP = (14_000, 16_000)  # the paper's drop, in steps (width 768, batch 256)
STOP_AFTER = 2_000  # train.stop_after_drop on the GPU: the run ends this many steps after its drop
MIN_ANALYSES_S = 60.0  # training may take the analyses' share down to this to reach the drop
TAIL_S = 20.0  # kept for the report, the last packing and the summary
CALIBRATE_S = 15.0  # seconds of training the rate is measured over before projecting (GPU)
MIN_ANALYSIS_S = 5.0  # an analysis is not started with less than this left of the share (GPU)
FIRST = ("progress", "compare")  # run before the rest: cheap, or the README's numbers
GPU_OPTIONS = {"ood": {"n": 256}}
GPU_NOTES = {
    "ood": "n = 256 (default 512) to fit the deadline: its nuclear-norm solver runs on the CPU, "
    "24 batches",
}
SMOKE_OPTIONS = {"compare": {"n": 16}, "ood": {"n": 8}, "probe": {"n": 64}}
FAULTS = ("kill:train", "term:train", "kill:analysis", "kill:pack")  # and raise:NAME (tests only)


class Expired(KeyboardInterrupt):
    """The running stage's share of the deadline is spent (raised by its timer's SIGINT). A
    KeyboardInterrupt, so that library code handles it as it does Ctrl-C (the trainer saves and
    stops at a step boundary) and no `except Exception` swallows it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or Ctrl-C from outside: the running stage ends, no other starts, outputs are
    packed."""


class Clock:
    """One deadline, and one stage at a time held to its share of it: a timer thread sends this
    process SIGINT at the stage's end, which the handler raises as Expired in the main thread (the
    trainer installs its own handler meanwhile, and stops at the next step boundary). A stage's
    signal that lands after its stage ended is ignored; any other SIGINT or SIGTERM is
    Terminated."""

    def __init__(self, deadline_s: float, start: float = _START) -> None:
        self.end = start + deadline_s
        self.terminated: str | None = None  # the signal that came from outside, once one did
        self.stage_end = self.end
        self._stage = 0  # the current stage's number: changed only in the main thread
        self._fired: int | None = None  # the stage whose timer sent SIGINT
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()  # between the timer, `extend` (a watcher) and `disarm`
        self._previous: dict[int, Any] = {}

    def left(self) -> float:
        """Seconds to the deadline."""
        return self.end - time.monotonic()

    def stage_left(self) -> float:
        return self.stage_end - time.monotonic()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum: int, frame: Any) -> None:
        # Runs in the main thread, between bytecodes: it takes no lock (the main thread may hold it)
        fired, self._fired = self._fired, None
        if signum == signal.SIGINT and fired is not None:
            if fired == self._stage:
                raise Expired
            return  # the timer of a stage that has ended meanwhile
        self.terminated = signal.Signals(signum).name
        raise Terminated(self.terminated)

    def interruption(self) -> str:
        """Why the KeyboardInterrupt the trainer raised came: this stage's timer ('expired'), or a
        signal from outside (recorded as the termination)."""
        fired, self._fired = self._fired, None
        if fired == self._stage:
            return "expired"
        self.terminated = self.terminated or "SIGINT or SIGTERM"
        return "terminated"

    def arm(self, seconds: float) -> None:
        self._stage += 1
        self.stage_end = time.monotonic() + seconds
        with self._lock:
            self._start_timer(self._stage, seconds)

    def extend(self, end: float) -> bool:
        """Move the running stage's end to `end` (monotonic seconds); False when it has ended."""
        with self._lock:
            stage = self._stage
            if self._timer is None or self._fired is not None:
                return False
            self._timer.cancel()
            self.stage_end = end
            self._start_timer(stage, end - time.monotonic())
            return True

    def disarm(self) -> None:
        self._stage += 1  # first: a signal of the ended stage is ignored from here on
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
        self.stage_end = self.end

    def _start_timer(self, stage: int, seconds: float) -> None:
        """Call holding the lock."""

        def fire() -> None:
            with self._lock:
                if self._stage == stage:
                    self._fired = stage
                    os.kill(os.getpid(), signal.SIGINT)

        self._timer = threading.Timer(max(seconds, 0.0), fire)
        self._timer.daemon = True
        self._timer.start()


class Record:
    """summary.json and summary.txt under --out, rewritten (atomically) after every stage: the
    stages' status, seconds and notes, every error with where it was raised, and the paper run's
    own summary once training has ended. A write that fails (a full disk) is reported on stderr
    and never stops the script."""

    def __init__(self, out: Path, clock: Clock, **info: Any) -> None:
        self.out, self.clock = out, clock
        self.data: dict[str, Any] = {**info, "stages": {}, "errors": []}

    def error(self, where: str, e: BaseException) -> str:
        frames = traceback.extract_tb(e.__traceback__)
        at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        line = f"{where}: {type(e).__name__}: {e}{at}"
        self.data["errors"].append(line)
        print(f"error in {where}:", file=sys.stderr, flush=True)
        traceback.print_exception(e, file=sys.stderr)
        return line

    def write(self) -> None:
        try:
            self.data["elapsed_s"] = round(time.monotonic() - _START, 1)
            atomic_write_json(self.out / "summary.json", self.data)
            atomic_write_bytes(self.out / "summary.txt", (summary_line(self.data) + "\n").encode())
        except OSError as e:
            print(f"cannot write the summary: {e}", file=sys.stderr, flush=True)

    def run_stage(
        self, name: str, share: float, fn: Callable[[dict[str, Any]], Any], min_s: float = 0.0
    ) -> Any:
        """Run `fn(its record)` for at most `share` seconds (less where the deadline is nearer);
        skipped with a note when the process is being terminated or less than `min_s` is left.
        Never raises but for a second signal: a failure is recorded and the script goes on."""
        rec: dict[str, Any] = {}
        self.data["stages"][name] = rec
        seconds = min(share, self.clock.left())
        if self.clock.terminated:
            rec.update(status="skipped", note=f"not started: {self.clock.terminated} received")
        elif seconds < max(min_s, 0.1):
            rec.update(
                status="skipped",
                note=f"not started: {max(seconds, 0):.1f} s left of the deadline, "
                f"it needs {min_s:.1f} s",
            )
        if rec:
            print(f"{name}: skipped ({rec['note']})", flush=True)
            self.write()
            return None
        rec.update(status="running", share_s=round(seconds, 1))
        self.write()
        print(f"{name}: started, {seconds:.0f} s share", flush=True)
        t0 = time.monotonic()
        self.clock.arm(seconds)
        try:
            out = fn(rec)
            if rec["status"] == "running":
                rec["status"] = "ok"
            return out
        except KeyboardInterrupt as e:
            expired = isinstance(e, Expired) or (
                not isinstance(e, Terminated) and self.clock.interruption() == "expired"
            )
            rec["status"] = "stopped" if expired else "interrupted"
            rec["note"] = (
                f"stopped at the end of its {seconds:.1f} s share"
                if expired
                else f"interrupted by {self.clock.terminated}"
            )
            return None
        except Exception as e:  # noqa: BLE001 -- recorded; the later stages still run
            rec["status"] = "failed"
            rec["error"] = self.error(name, e)
            return None
        finally:
            self.clock.disarm()
            rec["seconds"] = round(time.monotonic() - t0, 1)
            print(f"{name}: {rec['status']} after {rec['seconds']} s", flush=True)
            self.write()


def summary_line(d: dict[str, Any]) -> str:
    run = d.get("run", {})
    tp = d.get("throughput", {})
    stages = ", ".join(f"{k} {v.get('status')}" for k, v in d.get("stages", {}).items())
    ratios = (
        f"; ours/HF {tp['ours/hf fp32']:.2f}x fp32, {tp['ours/hf bf16']:.2f}x bf16" if tp else ""
    )
    return (
        f"{d.get('device')}: {run.get('steps')} steps in {run.get('wall_seconds')} s "
        f"({run.get('ended', 'not trained')}, {run.get('steps_per_s')} steps/s); plateau L_mask "
        f"{run.get('plateau_level')}, drop at step {run.get('drop_step')}, sudden "
        f"{run.get('sudden')}, final L_mask {run.get('final_level')}{ratios}; "
        f"{stages}; {len(d.get('errors', []))} error(s)"
    )


# --- 1. training ----------------------------------------------------------------------------------


def run_config(smoke: bool, arch: str = "bert", use_tf32: bool = True) -> Config:
    """The paper run's configuration: the `paper` (or `gpt`) preset in bf16 with TF32 steps,
    checkpoints every 5 000 steps and no early ones. The smoke run takes that path on the CPU
    (bf16 autocast with fp32 losses, progress measures, early stop, the forecast); only the sizes
    differ."""
    path = ["train.bf16=true", f"train.tf32={str(use_tf32).lower()}", "train.ckpt_log_points=0"]
    if smoke:
        steps = 30 if arch == "bert" else 10  # the GPT's bf16 forward on CPU is slow
        return apply_overrides(
            preset("tiny"),
            [*path, "train.device=cpu", f"train.steps={steps}", "train.stop_after_drop=100"]
            + [f"model.arch={arch}"]
            + (["train.progress=true"] if arch == "bert" else []),
        )
    gpu = [*path, "train.log_every=100", "train.ckpt_every=5000", "train.keep_optim=1"]
    gpu.append(f"train.stop_after_drop={STOP_AFTER}")
    if arch == "gpt":
        return apply_overrides(preset("gpt"), gpu)
    return apply_overrides(preset("paper"), [*gpu, "train.progress=true"])


def tf32_fails(device: torch.device) -> str | None:
    """Why an fp32 matmul on `device` fails under trainer.tf32 (None when it runs): a torch whose
    matmul still read the legacy flags would raise at the first training step; this costs a
    millisecond before training, which then runs without TF32 instead. Any Exception (a torch
    without the settings trainer.tf32 uses, ...) is the reason, never a crash before training."""
    try:
        with tf32(device.type == "cuda"):
            a = torch.ones(64, 64, device=device)
            (a @ a).sum().item()
    except Exception as e:  # noqa: BLE001 -- recorded as the note; training runs without TF32
        return f"{type(e).__name__}: {e}"
    return None


def paper_run(
    run: Path, cfg: Config, clock: Clock, verbose: bool
) -> tuple[dict[str, Any], BaseException | None]:
    """Train `cfg` in `run` until it ends (all steps, or stop_after_drop) or the stage's share is
    spent (it then stops at a step boundary, as on Ctrl-C). Never raises: returns the run's
    summary (as training left it, or rebuilt from metrics.jsonl) with `ended` saying what ended
    it, and the exception that did, if one did."""
    from abrupt.train.summary import finish

    t0, error = time.monotonic(), None
    try:
        summary = train(cfg, run, verbose=verbose)
        ended = "finished" if summary["steps"] >= cfg.train.steps else "stopped after the drop"
    except KeyboardInterrupt as e:
        why = "expired" if isinstance(e, Expired) else clock.interruption()
        ended = "stopped at its share of the deadline" if why == "expired" else "interrupted"
        summary = None
    except Exception as e:  # noqa: BLE001 -- a divergence, an OSError, a CUDA error: recorded
        ended, summary, error = f"failed: {type(e).__name__}: {e}", None, e
    if summary is None:
        try:
            with contextlib.suppress(json.JSONDecodeError, OSError):
                summary = json.loads((run / "summary.json").read_text())
            summary = summary if isinstance(summary, dict) else finish(run)
        except Exception as e:  # noqa: BLE001 -- no metrics at all: an empty summary, the reason
            summary = {"summary_error": f"{type(e).__name__}: {e}"}
    summary["wall_seconds"] = round(time.monotonic() - t0, 1)
    summary["ended"] = ended
    summary["steps_per_s"] = measured_rate(read_rows(run / "metrics.jsonl"))
    return summary, error


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a metrics.jsonl that training may be appending to (a last line without
    its newline is not read yet)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict) and "step" in r and "time" in r]


def measured_rate(rows: list[dict[str, Any]]) -> float | None:
    """Steps per second between the second logged row and the last (the first carries the start-up:
    CUDA kernels, the step-0 checkpoint); None with fewer than three rows."""
    if len(rows) < 3 or rows[-1]["time"] <= rows[1]["time"]:
        return None
    return round((rows[-1]["step"] - rows[1]["step"]) / (rows[-1]["time"] - rows[1]["time"]), 2)


def projection(
    step: int, rate: float, now: float, end: float, latest: float, target: int, steps: int
) -> tuple[float, int]:
    """(training's end, its projected last step) at `rate` steps/s from `step` at time `now`: the
    end stays `end` unless the last step would fall short of `target`; then it moves later, as far
    as reaching `target` needs and `latest` allows. The step is at most the run's `steps`."""
    last = step + rate * (end - now)
    if last < target and latest > end:
        end = min(latest, now + (target - step) / rate)
        last = step + rate * (end - now)
    return end, min(int(last), steps)


def verdict(last: int) -> str:
    lo, hi = PAPER_DROP
    if last >= hi + STOP_AFTER:
        return (
            f"reaches the paper's drop ({lo}-{hi} steps) and the {STOP_AFTER} steps after it "
            "that end the run"
        )
    if last >= hi:
        return f"reaches the end of the paper's drop window ({hi}), not the {STOP_AFTER} after it"
    if last >= lo:
        return f"reaches into the paper's drop window ({lo}-{hi}) only"
    return f"ends before the paper's drop window ({lo}-{hi}): its drop cannot be seen"


class TrainingWatch(threading.Thread):
    """While training runs: copies metrics.jsonl under --out as it grows (a kill keeps the rows
    so far), measures the rate once `calibrate_s` of steps are logged, prints the projected last
    step and, where the paper's drop would be missed, moves training's end later (down to
    MIN_ANALYSES_S left for the analyses). `faults` (tests only) may kill or terminate the process
    once the first rows are copied."""

    def __init__(
        self,
        run: Path,
        out: Path,
        clock: Clock,
        rec: dict[str, Any],
        cfg: Config,
        smoke: bool,
        latest: float,
        faults: set[str],
    ) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.out, self.clock, self.rec, self.cfg = run, out, clock, rec, cfg
        self.smoke, self.latest = smoke, latest
        self.fault = next((f for f in ("kill:train", "term:train") if f in faults), "")
        self.every = 0.2 if smoke else 5.0
        self.calibrate_s = 0.2 if smoke else CALIBRATE_S
        self.stopped = threading.Event()
        self.projected = False

    def run(self) -> None:
        copied = -1
        while not self.stopped.wait(self.every):
            try:
                rows = read_rows(self.run_dir / "metrics.jsonl")
                if len(rows) != copied and rows:
                    copy_metrics(self.run_dir, self.out)
                    copied = len(rows)
                    if self.fault:
                        sig = signal.SIGKILL if self.fault == "kill:train" else signal.SIGTERM
                        os.kill(os.getpid(), sig)
                        self.fault = ""
                if not self.projected and len(rows) >= 3:
                    self._project(rows)
            except Exception as e:  # noqa: BLE001 -- the watch is advice: training goes on
                print(f"training watch: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def _project(self, rows: list[dict[str, Any]]) -> None:
        if rows[-1]["time"] - rows[1]["time"] < self.calibrate_s:
            return
        rate = measured_rate(rows)
        if not rate:
            return
        self.projected = True
        now, end = time.monotonic(), self.clock.stage_end
        target = self.cfg.train.steps if self.smoke else PAPER_DROP[1] + STOP_AFTER
        new_end, last = projection(
            rows[-1]["step"], rate, now, end, self.latest, target, self.cfg.train.steps
        )
        moved = new_end - end if new_end > end + 1 and self.clock.extend(new_end) else 0.0
        self.rec["projection"] = info = {
            "steps_per_s": rate,
            "measured_over_steps": [rows[1]["step"], rows[-1]["step"]],
            "projected_last_step": last,
            "moved_end_s": round(moved, 1),
            "verdict": "smoke run: no drop expected" if self.smoke else verdict(last),
        }
        print(
            f"training: {rate:.1f} steps/s over steps {rows[1]['step']}-{rows[-1]['step']}; "
            f"projected last step ~{last} "
            + (f"(its end moved {moved:.0f} s later, into the analyses' share) " if moved else "")
            + f"{info['verdict']}",
            flush=True,
        )


def copy_metrics(run: Path, out: Path) -> None:
    src = run / "metrics.jsonl"
    if src.exists():
        atomic_write_bytes(out / "metrics.jsonl", src.read_bytes())


# --- 2. analyses and report -----------------------------------------------------------------------


def analyses(
    rec: dict[str, Any],
    run: Path,
    device: torch.device,
    record: Record,
    names: list[str] | None,
    smoke: bool,
    faults: set[str],
    repack: Callable[[str], None],
) -> None:
    """Every analysis (or `names`) on models loaded once; one at a time, each guarded."""
    from abrupt.analysis import registry

    opts = SMOKE_OPTIONS if smoke else GPU_OPTIONS
    prepared = registry.prepare(run, only=names, opts=opts, verbose=False, device=str(device))
    order = sorted(prepared.names, key=lambda n: FIRST.index(n) if n in FIRST else len(FIRST))
    rec.update(steps=prepared.steps, unsupported=prepared.skipped, names=order, each={})
    each = rec["each"]
    min_s = 0.0 if smoke else MIN_ANALYSIS_S
    for name in order:
        try:
            left = record.clock.stage_left()
            if left < min_s:
                each[name] = {"status": "skipped", "note": f"{left:.0f} s left of the share"}
                continue
            each[name] = {"status": "running"}
            if not smoke and name in GPU_NOTES:
                each[name]["note"] = GPU_NOTES[name]
            record.write()
            t0 = time.monotonic()
            try:
                if f"raise:{name}" in faults:
                    raise RuntimeError(f"fault injected by --fault-at raise:{name}")
                registry.run_one(prepared, name, verbose=False)
                each[name]["status"] = "ok"
            except Exception as e:  # noqa: BLE001 -- recorded; the next analysis runs
                each[name].update(status="failed", error=record.error(f"analyses/{name}", e))
            except KeyboardInterrupt as e:
                each[name]["status"] = "stopped" if isinstance(e, Expired) else "interrupted"
                raise
            finally:
                each[name]["seconds"] = round(time.monotonic() - t0, 1)
                print(f"  {name}: {each[name]['status']} ({each[name]['seconds']} s)", flush=True)
            repack(f"analysis {name}")
            record.write()
        except KeyboardInterrupt:
            # wherever it landed (an analysis, the repack, the write): the rest never run
            for rest in order:
                each.setdefault(rest, {"status": "skipped", "note": "the analyses' share ran out"})
            raise
        if "kill:analysis" in faults:
            os.kill(os.getpid(), signal.SIGKILL)
    failed = [n for n, v in each.items() if v["status"] != "ok"]
    if failed:
        rec.update(status="partial", note=f"not ok: {', '.join(failed)}")


def analyze_ok(rec: dict[str, Any]) -> bool:
    """Whether every prepared analysis of the stage's record `rec` ran ok (False when none did)."""
    each = rec.get("each", {})
    names = rec.get("names", [])
    return bool(names) and all(each.get(n, {}).get("status") == "ok" for n in names)


def pack(run: Path, archive: Path, fault: bool = False) -> None:
    """The run's small files (never a checkpoint) into `archive`, written beside it and renamed:
    a kill while packing leaves the previous archive whole. `fault` (tests only): SIGKILL after
    the first file."""
    keep = ["metrics.jsonl", "summary.json", "config.json", "loss.png", "forecast.png"]
    files = [run / name for name in keep + ["report.html"] if (run / name).exists()]
    files += sorted((run / "analysis").glob("*/results.json"))
    files += [p for p in [run / "analysis" / "skipped.json"] if p.exists()]
    if not files:
        return
    tmp = archive.with_name(f".{archive.name}.tmp")
    folder = archive.name.removesuffix(".tar.gz")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for path in files:
                tar.add(path, arcname=f"{folder}/{path.relative_to(run)}")
                if fault:
                    os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, archive)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- 4. throughput --------------------------------------------------------------------------------


def _steps_per_second(model, batches, device, bf16: bool, seconds: float) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    done, t0 = 0, time.perf_counter()
    while True:
        for b in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = losses(model(b.tokens), b)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - t0 >= seconds:
            return done / (time.perf_counter() - t0)


def throughput(name: str, device: torch.device, left: Callable[[], float]) -> dict[str, Any]:
    """Ours against HF BertModel + read-out with the same weights and batches, fp32 (TF32 matmuls
    on CUDA) and bf16. Importing transformers and building the models come first; the timing then
    takes 80% of the `left()` seconds (the rest for the last steps past each mark)."""
    from hf_oracle import HFMatrixBert  # tests/hf_oracle.py: the HuggingFace reference

    cfg = preset(name)
    g = generator(0, device)
    batches = [sample_batch(cfg.data, cfg.train.batch_size, g) for _ in range(4)]
    models = {}
    for bf16 in (False, True):
        ours = build_model(cfg.model, cfg.data.m * cfg.data.n, seed=0).to(device)
        ref = HFMatrixBert(build_model(cfg.model, cfg.data.m * cfg.data.n, seed=0)).to(device)
        with tf32(device.type == "cuda" and not bf16):
            for model in (ours, ref):
                _steps_per_second(model, batches[:1], device, bf16, 0)  # warm-up
        models[bf16] = {"ours": ours, "hf": ref}
    each = max(0.8 * left(), 0.4) / 4
    out: dict[str, Any] = {"preset": name, "device": device_name(device), "steps_per_s": {}}
    for bf16, pair in models.items():
        with tf32(device.type == "cuda" and not bf16):
            out["steps_per_s"]["bf16" if bf16 else "fp32/tf32"] = {
                k: _steps_per_second(m, batches, device, bf16, each) for k, m in pair.items()
            }
    out["seconds_each"] = round(each, 2)
    r = out["steps_per_s"]
    out["ratios"] = {
        "ours/hf fp32": r["fp32/tf32"]["ours"] / r["fp32/tf32"]["hf"],
        "ours/hf bf16": r["bf16"]["ours"] / r["bf16"]["hf"],
        "bf16/fp32 ours": r["bf16"]["ours"] / r["fp32/tf32"]["ours"],
    }
    return out


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# --- the stages in order --------------------------------------------------------------------------


def fault_spec(value: str) -> set[str]:
    """--fault-at (tests only): comma-separated points where the script kills or terminates
    itself, or where an analysis raises."""
    faults = {f.strip() for f in value.split(",") if f.strip()}
    for f in faults:
        if f not in FAULTS and not (f.startswith("raise:") and len(f) > len("raise:")):
            raise argparse.ArgumentTypeError(f"'{f}': one of {', '.join(FAULTS)} or raise:ANALYSIS")
    return faults


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--out", type=Path, required=True, help="the only folder written (7 files)")
    p.add_argument(
        "--deadline",
        type=float,
        default=540.0,
        help="seconds from the start of this process by which every stage has ended (default "
        "540: inside a 600 s command limit)",
    )
    p.add_argument(
        "--budget", type=float, help="at most this many seconds of training (default: its share)"
    )
    p.add_argument(
        "--analyses-share",
        type=float,
        default=120.0,
        help="seconds kept for the analyses after training (default 120)",
    )
    p.add_argument("--analyses", help="comma-separated analyses to run (default: all that apply)")
    p.add_argument(
        "--throughput", type=float, help="seconds of the throughput stage (default 30; smoke 10)"
    )
    p.add_argument(
        "--gpt-budget", type=float, default=0.0, help="seconds of the `gpt` preset (0: skip)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="the same stages on the CPU with the tiny preset"
    )
    p.add_argument("--fault-at", type=fault_spec, help=argparse.SUPPRESS)  # tests only
    args = p.parse_args(argv)
    args.fault_at = args.fault_at or set()
    if args.analyses:
        from abrupt.analysis.registry import discover

        names = [n.strip() for n in args.analyses.split(",") if n.strip()]
        unknown = [n for n in names if n not in discover()]
        if unknown:
            known = ", ".join(discover())
            p.error(f"--analyses: unknown {', '.join(unknown)}; choose from {known}")
        args.analyses = names
    if args.throughput is None:
        args.throughput = 10.0 if args.smoke else 30.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # a kill loses no printed line
    sys.stderr.reconfigure(line_buffering=True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu") if args.smoke else resolve_device("auto")
    if args.smoke:
        torch.set_num_threads(1)  # the command line's thread policy: a shared CPU
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device: run with --smoke on a CPU machine", file=sys.stderr)
        return 2
    clock = Clock(args.deadline)
    record = Record(out, clock, device=device_name(device), deadline_s=args.deadline)
    clock.install()
    try:
        with tempfile.TemporaryDirectory(prefix="abrupt-paper-") as scratch:
            run = Path(scratch) / "paper"
            stages(args, device, clock, record, run, Path(scratch))
    except KeyboardInterrupt:  # a signal between stages, or a second one: what is written stays
        record.data["errors"].append("stopped by a signal between stages; what was written stays")
    finally:
        clock.uninstall()
        record.write()
    d = record.data
    print(summary_line(d))
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(
        f"wrote {out}: {', '.join(written)} (`tar xzf {out / 'paper-run.tar.gz'}`, then open "
        "paper-run/report.html)"
    )
    ended = d.get("run", {}).get("ended")
    ok = ended in ("finished", "stopped after the drop", "stopped at its share of the deadline")
    return 0 if ok and d.get("analyze_ok") and d.get("report_ok") and not d["errors"] else 1


def stages(
    args: argparse.Namespace,
    device: torch.device,
    clock: Clock,
    record: Record,
    run: Path,
    scratch: Path,
) -> None:
    out, d = args.out, record.data
    archive = out / "paper-run.tar.gz"

    def repack(after: str, fault: bool = False) -> None:
        try:
            copy_metrics(run, out)
            pack(run, archive, fault)
            d["archive"] = f"paper-run.tar.gz as packed after {after}"
        except Exception as e:  # noqa: BLE001 -- the previous archive stays; recorded
            record.error("pack", e)

    failure = tf32_fails(device)  # never raises: a failure is the reason TF32 stays off
    if failure:
        d["tf32"] = f"off: an fp32 matmul under TF32 failed ({failure})"
        print(f"training without TF32: {failure}", file=sys.stderr, flush=True)
    cfg = run_config(args.smoke, use_tf32=not failure)
    tail = args.analyses_share + args.throughput + TAIL_S
    share = clock.left() - tail if args.budget is None else min(args.budget, clock.left() - tail)

    def training(rec: dict[str, Any]) -> None:
        # --budget caps training; otherwise it may reach into the analyses' share for the drop
        latest = clock.stage_end if args.budget else clock.end - TAIL_S - MIN_ANALYSES_S
        watch = TrainingWatch(run, out, clock, rec, cfg, args.smoke, latest, args.fault_at)
        watch.start()
        try:
            summary, error = paper_run(run, cfg, clock, verbose=not args.smoke)
        finally:
            watch.stopped.set()
            watch.join(timeout=10)
        d["run"] = summary
        rec["ended"] = summary["ended"]
        if error is not None:
            rec["status"] = "failed"
            rec["error"] = record.error("training", error)
        elif summary["ended"] == "interrupted":
            rec["status"] = "interrupted"
        elif summary["ended"].startswith("stopped at"):
            rec["status"] = "stopped"

    record.run_stage("training", share, training, min_s=1.0)
    repack("training")
    record.write()

    def analysis_stage(rec: dict[str, Any]) -> None:
        if not (run / "checkpoints").is_dir():
            rec.update(status="skipped", note="no run to analyse: training did not start")
            return
        analyses(rec, run, device, record, args.analyses, args.smoke, args.fault_at, repack)

    # a training that took more for the drop leaves the analyses at least MIN_ANALYSES_S (the
    # throughput is then skipped)
    left = clock.left() - TAIL_S
    analyses_share = max(left - args.throughput, min(MIN_ANALYSES_S, left))
    record.run_stage("analyses", analyses_share, analysis_stage, min_s=1.0)
    d["analyze_ok"] = analyze_ok(d["stages"]["analyses"])

    def report(rec: dict[str, Any]) -> None:
        from abrupt.report import build

        if not (run / "summary.json").exists():
            rec.update(status="skipped", note="no run to report on: training did not start")
            return
        build(run)

    record.run_stage("report", min(TAIL_S, max(clock.left(), 5.0)), report)
    d["report_ok"] = d["stages"]["report"]["status"] == "ok"
    repack("the report", fault="kill:pack" in args.fault_at)
    record.write()

    def timing(rec: dict[str, Any]) -> None:
        tp = throughput("tiny" if args.smoke else "paper", device, clock.stage_left)
        atomic_write_json(out / "throughput.json", tp)
        d["throughput"] = tp["ratios"]
        print(json.dumps(tp["ratios"]), flush=True)

    record.run_stage(
        "throughput", min(args.throughput, clock.left() - 5), timing, min_s=0 if args.smoke else 10
    )
    if args.gpt_budget > 0 or args.smoke:
        gpt_run = scratch / "gpt"

        def gpt(rec: dict[str, Any]) -> None:
            gpt_cfg = run_config(args.smoke, "gpt", use_tf32=not failure)
            summary, error = paper_run(gpt_run, gpt_cfg, clock, verbose=not args.smoke)
            atomic_write_json(out / "gpt-summary.json", summary)
            pack(gpt_run, out / "gpt-run.tar.gz")
            rec["ended"] = summary["ended"]
            if error is not None:
                rec["status"] = "failed"
                rec["error"] = record.error("gpt", error)

        budget = 120.0 if args.smoke else args.gpt_budget
        record.run_stage("gpt", min(budget, clock.left() - 5), gpt, min_s=1.0)


if __name__ == "__main__":
    sys.exit(main())
