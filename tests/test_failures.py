"""Failures in one line, with nothing half-written kept (issue 17): unbounded resources, a full
disk, edited run files, impossible groups, long names, unreachable clusters, and messages that
name the right cause and the right command."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from abrupt.cli import _interrupt_hint, _parse, main
from abrupt.config import ModelConfig, preset
from abrupt.run import checkpoints
from abrupt.run.rundir import read_metrics
from abrupt.sweep.components import component_groups
from abrupt.train.trainer import divergence_advice
from conftest import needs_extra

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
TINY = ["--preset", "tiny", "--threads", "1", "--quiet"]


def one_line(capfd, code, expected, *fragments):
    """`code` is `expected` and standard error (of this process and its children) is one line."""
    assert code == expected
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fail") / "run"
    assert main(["train", *TINY, "--out", str(run), "train.steps=20"]) == 0
    return run


def copy_run(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / "copy"))


def assert_nothing_half_written(run):
    """No temporary file, no weights without their side file, no summary older than the metrics."""
    assert not [p for p in run.rglob("*.tmp")]
    for w in (run / "checkpoints").glob("step_*.safetensors"):
        assert (run / "checkpoints" / f"{w.name.split('.')[0]}.json").exists(), w
    assert len(checkpoints.list_checkpoints(run / "checkpoints")) == len(
        checkpoints.list_checkpoints(run / "checkpoints", verify=False)
    )
    if (run / "summary.json").exists():
        assert (
            json.loads((run / "summary.json").read_text())["steps"] == read_metrics(run)[-1]["step"]
        )


# --- 8: resources bounded up front
# -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["train.steps=2000000000", "train.ckpt_every=1"], "train.ckpt_every=1"),
        (["train.steps=1000000000"], "checkpoints, at most"),
        (["train.ckpt_log_points=1000000000000"], "train.ckpt_log_points"),
        (
            ["train.steps=100000000", "train.ckpt_every=100000", "train.log_every=1"],
            "train.log_every=1",
        ),
    ],
)
def test_runs_that_cannot_fit_are_refused_at_once(tmp_path, capfd, overrides, fragment):
    t0 = time.perf_counter()
    one_line(capfd, main(["train", *TINY, "--out", str(tmp_path / "r"), *overrides]), 2, fragment)
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "r").exists()


def test_an_allocation_too_large_is_one_line(tmp_path, capfd):
    one_line(
        capfd,
        main(["train", *TINY, "--out", str(tmp_path / "r"), "train.eval_size=100000000000"]),
        1,
        "out of memory",
    )


# --- 9: a full disk
# ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB file system (a tmpfs: needs root); the injected-error tests below cover the rest."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk):
    # unbuffered: a buffered file keeps the bytes the full disk refused, and its close raises
    with open(disk / "filler", "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(small_disk, capfd):
    run = small_disk / "run"
    long = ["train.steps=2000", "train.ckpt_every=1", "train.log_every=10", "train.keep_optim=1"]
    one_line(capfd, main(["train", *TINY, "--out", str(run), *long]), 1, "No space left on device")
    assert_nothing_half_written(run)
    one_line(
        capfd,
        main(["train", "--resume", str(run), "--quiet", "--threads", "1"]),
        1,
        "No space left on device",
    )
    assert_nothing_half_written(run)
    fill(small_disk)
    one_line(capfd, main(["plot", str(run)]), 1, "No space left on device")
    assert_nothing_half_written(run)
    (small_disk / "filler").unlink()
    shutil.rmtree(run)
    sweep = small_disk / "sw"
    code = main(
        [
            "sweep",
            "--preset",
            "tiny",
            "--quiet",
            "--workers",
            "1",
            "--out",
            str(sweep),
            "seed=0",
            *long,
        ]
    )
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    row = json.loads((sweep / "results.jsonl").read_text().splitlines()[-1])
    assert row["status"] == "failed" and "No space left on device" in row["error"]
    assert_nothing_half_written(sweep / "seed=0")


def test_a_failing_checkpoint_write_keeps_no_half_checkpoint(tmp_path, capfd, monkeypatch):
    """The same without a tmpfs: safetensors fails after writing part of the file, at the 3rd
    checkpoint's weights and (second run) at an optimizer file, after its weights were renamed
    in."""
    real = checkpoints.save_file

    def failing(part):
        def save_file(tensors, path, metadata=None):
            if int(metadata["step"]) >= 3 and part in Path(path).name:
                Path(path).write_bytes(b"half")
                raise SafetensorError(
                    "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                    'message: "No space left on device" })'
                )
            return real(tensors, path, metadata=metadata)

        return save_file

    for part in (".safetensors", ".optim."):
        monkeypatch.setattr(checkpoints, "save_file", failing(part))
        run = tmp_path / part.strip(".")
        one_line(
            capfd,
            main(["train", *TINY, "--out", str(run), "train.steps=10", "train.ckpt_every=1"]),
            1,
            "No space left on device",
            "step_3",
        )
        assert_nothing_half_written(run)
        assert [c.step for c in checkpoints.list_checkpoints(run / "checkpoints")] == [0, 1, 2]


def test_what_a_kill_mid_write_leaves_is_removed_on_the_next_start(tiny_run, tmp_path):
    """kill -9 inside a checkpoint or an atomic write leaves these; the next writer cleans them."""
    run = copy_run(tiny_run, tmp_path)
    debris = [
        run / "checkpoints" / ".step_40.json.abc123.tmp",
        run / "checkpoints" / ".step_40.safetensors.x1.tmp",
        run / "checkpoints" / "step_40.safetensors",
        run / "checkpoints" / "step_40.optim.safetensors",
        run / ".metrics.jsonl.q9.tmp",
        run / ".summary.json.z.tmp",
    ]
    for p in debris:
        p.write_bytes(b"partial")
    keep = (
        run / ".report.html.r.tmp"
    )  # another command's write in progress: not the trainer's to remove
    keep.write_bytes(b"x")
    assert main(["train", "--resume", str(run), "--quiet", "--threads", "1", "train.steps=25"]) == 0
    assert not any(p.exists() for p in debris) and keep.exists()


def test_a_sweep_cleans_its_temporary_files_on_resume(tmp_path):
    out = tmp_path / "sw"
    assert (
        main(
            [
                "sweep",
                "--preset",
                "tiny",
                "--quiet",
                "--workers",
                "1",
                "--out",
                str(out),
                "seed=0",
                "train.steps=3",
            ]
        )
        == 0
    )
    left = out / ".results.jsonl.k3.tmp"
    left.write_bytes(b"{")
    assert main(["sweep", "--resume", str(out), "--quiet"]) == 0
    assert not left.exists() and (out / "summary.md").exists()


def test_a_figure_that_cannot_be_written_leaves_the_previous_one(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from abrupt.plots import figure

    path = tmp_path / "f.png"
    path.write_bytes(b"previous")

    def full(self, fname, **kwargs):
        Path(fname).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(OSError):
        with figure(path):
            pass
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["f.png"]


# --- 10: tracebacks where a line is due
# --------------------------------------------------------------------


@pytest.mark.parametrize("edit", [{"width": 64}, {"arch": "gpt", "ln_eps": 1e-5}])
def test_an_edited_config_is_one_line_on_resume_and_analyze(tiny_run, tmp_path, capfd, edit):
    run = copy_run(tiny_run, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"].update(edit)
    (run / "config.json").write_text(json.dumps(cfg))
    one_line(
        capfd,
        main(["train", "--resume", str(run), "--quiet", "train.steps=30"]),
        1,
        "config.json edited",
    )
    one_line(capfd, main(["analyze", str(run), "--only", "copying"]), 1, "config.json edited")


def test_groups_an_arch_lacks_are_refused_and_components_skip_them(tmp_path, capfd):
    for overrides in (["train.trainable=ln_embed"], ["train.trainable=mlp,ln_embed"]):
        one_line(
            capfd,
            main(["train", *TINY, "--out", str(tmp_path / "r"), "model.arch=gpt", *overrides]),
            2,
            "model.arch=gpt has no parameters in group(s) ln_embed",
        )
    gpt = preset("gpt_cpu").model
    assert "ln_embed" not in component_groups(gpt) and "readout" in component_groups(gpt)
    assert "ln_embed" in component_groups(ModelConfig(layers=2))
    state = torch.get_rng_state()
    component_groups(ModelConfig(layers=3, arch="gpt"))
    assert torch.equal(
        state, torch.get_rng_state()
    )  # the check builds a model without touching the RNG


def test_names_too_long_for_the_file_system_are_one_line(tmp_path, capfd):
    long = tmp_path / ("a" * 300)
    one_line(capfd, main(["train", *TINY, "--out", str(long)]), 2, "at most")
    one_line(
        capfd,
        main(["sweep", "--preset", "tiny", "--quiet", "--out", str(long), "seed=0"]),
        2,
        "at most",
    )
    assert os.listdir(tmp_path) == []


@needs_extra("ray", "ray")
def test_an_unreachable_ray_address_is_one_line_at_once(tmp_path, capfd):
    t0 = time.perf_counter()
    one_line(
        capfd,
        main(
            [
                "sweep",
                "--preset",
                "tiny",
                "--quiet",
                "--backend",
                "ray",
                "--address",
                "127.0.0.1:1",
                "--out",
                str(tmp_path / "sw"),
                "seed=0",
            ]
        ),
        2,
        "--address 127.0.0.1:1",
    )
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "sw").exists()


# over 20 s: `python3 -m pytest -m slow` (keeps the default suite under 10 minutes)
@pytest.mark.slow
def test_ctrl_c_while_the_workers_start_is_one_line_and_resumable(tmp_path):
    out = tmp_path / "sw"
    cmd = [
        sys.executable,
        "-m",
        "abrupt.cli",
        "sweep",
        "--preset",
        "tiny",
        "--quiet",
        "--workers",
        "2",
        "--out",
        str(out),
        "seed=0,1,2",
        "train.steps=10",
    ]
    proc = subprocess.Popen(
        cmd,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "sweep.json").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # the trial processes are importing torch
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        f"abrupt: interrupted; resume with `abrupt sweep --resume {out}`"
    ]
    assert main(["sweep", "--resume", str(out), "--quiet", "--workers", "2"]) == 0


# --- 12: messages that fit
# ----------------------------------------------------------------------------------


def test_divergence_advice_names_the_extreme_setting(tmp_path, capfd):
    line = one_line(
        capfd,
        main(
            [
                "train",
                *TINY,
                "--out",
                str(tmp_path / "r"),
                "train.steps=3",
                "model.attn_temperature=1e-30",
            ]
        ),
        1,
        "model.attn_temperature=1e-30",
    )
    assert "train.lr" not in line
    cfg = preset("tiny")
    assert "lower train.lr" in divergence_advice(cfg)
    cfg.model.init_std = 50.0
    cfg.train.group_lr = "mlp=1000"
    cfg.train.grokfast_lambda = 1e4
    advice = divergence_advice(cfg)
    assert (
        "model.init_std=50" in advice
        and "mlp" in advice
        and "grokfast_lambda" in advice
        and "lower train.lr" not in advice
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_analyze_on_a_device_this_machine_lacks_is_a_usage_error(tiny_run, capfd):
    for device in ("cuda", "cuda:3"):
        line = one_line(
            capfd, main(["analyze", str(tiny_run), "--device", device]), 2, f"--device={device}"
        )
        assert "train.device" not in line


def test_analyze_refuses_to_compare_step_0_with_itself(tiny_run, tmp_path, capfd):
    run = copy_run(tiny_run, tmp_path)
    for p in (run / "checkpoints").iterdir():
        if not p.name.startswith("step_0."):
            p.unlink()
    one_line(capfd, main(["analyze", str(run)]), 2, "only its step-0 checkpoint", "--steps 0")
    assert not (run / "analysis").exists()


def test_interrupt_hints_name_the_command_and_its_path(tiny_run, tmp_path):
    # noqa: E731
    hint = lambda command, **kw: _interrupt_hint(argparse.Namespace(command=command, **kw))
    assert (
        hint("sweep", resumable=tmp_path / "sw")
        == f"resume with `abrupt sweep --resume {tmp_path / 'sw'}`"
    )
    assert hint("sweep") == "nothing was started"
    assert (
        hint("components", resumable=tmp_path / "c")
        == f"resume with `abrupt components --resume {tmp_path / 'c'}`"
    )
    assert f"abrupt report {tiny_run}" in hint("report", run=tiny_run)
    assert f"abrupt analyze {tiny_run} --only" in hint("analyze", run=tiny_run)


def test_sigterm_of_analyze_names_analyze_and_its_run(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "abrupt.cli", "analyze", str(run)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "analysis" / "skipped.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"abrupt: interrupted; the analyses that finished are kept in {run / 'analysis'}"
        )
    )


def test_overrides_are_taken_after_flags_too(tmp_path, capfd):
    run = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--threads",
                "1",
                "train.steps=3",
                "--quiet",
                "train.log_every=1",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["steps"] == 3 and cfg["train"]["log_every"] == 1
    args = _parse(
        [
            "sweep",
            "--preset",
            "tiny",
            "seed=0,1",
            "--workers",
            "1",
            "train.steps=3",
            "--quiet",
            "model.width=16,32",
        ]
    )
    assert (
        str(args.spec) == "seed=0,1"
        and args.overrides == ["train.steps=3", "model.width=16,32"]
        and args.workers == 1
    )
    assert _parse(["baseline", "--n", "4", "data.m=3", "--json", "data.n=3"]).overrides == [
        "data.m=3",
        "data.n=3",
    ]
    capfd.readouterr()
    one_line(
        capfd,
        main(["train", "--preset", "tiny", "train.steps=3", "--quiet", "--bogus"]),
        2,
        "--bogus",
    )
    one_line(capfd, main(["presets", "x=1"]), 2, "x=1")


def test_a_stop_while_a_checkpoint_is_read_is_a_stop_not_a_corrupt_file(tiny_run, monkeypatch):
    """SIGINT/SIGTERM inside safetensors' reader used to surface as its own ValueError ("cannot read
    step_1.safetensors: could not determine the shape ..."): now the read finishes and the stop
    follows."""
    from abrupt.run import checkpoints

    real = checkpoints.load_file
    done = []

    def reader_interrupted_midway(path):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # a delivered signal would raise here, inside the reader
        done.append(path)
        return real(path)

    monkeypatch.setattr(checkpoints, "load_file", reader_interrupted_midway)
    weights = next((tiny_run / "checkpoints").glob("step_*.safetensors"))
    previous = signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # Python's own, whatever ran before
    try:
        with pytest.raises(KeyboardInterrupt):
            checkpoints.load_tensors(weights)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done == [str(weights)]
