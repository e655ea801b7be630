"""docs/extending.md holds: a task added as one file trains, analyses and reports; an
intervention added as one file acts in training and on checkpoint loading; a run directory written
before the package's layout changed still loads, resumes and analyses."""

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import abrupt.interventions
from abrupt.checks import validate_run
from abrupt.config import ConfigError, apply_overrides, preset, schema
from abrupt.config.schema import RENAMED
from abrupt.data import generator, sample_batch
from abrupt.run import checkpoints
from abrupt.run.rundir import read_config, read_metrics
from abrupt.train.trainer import train
from conftest import plugin_cli

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "extending.md").read_text()
# committed before the layout change
OLD_RUN = ROOT / "docs" / "plateau" / "runs" / "s4_bias3_b256_s0"


def abrupt_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "abrupt.cli", *args], capture_output=True, text=True
    )


def test_a_new_task_is_one_file_as_the_docs_show(tmp_path):
    code = re.search(r"```python\n(import torch\n\nfrom \.sequence.*?)```", DOC, re.S).group(1)
    code = code.replace('name = "reverse"', 'name = "zz_reverse"')
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "zz_reverse.py").write_text(code + "\nTASK = Reverse()\n")
    cli = functools.partial(plugin_cli, {"abrupt.tasks": plugins})
    run = tmp_path / "run"
    r = cli(
        "train",
        "--preset",
        "mws",
        "--out",
        str(run),
        "--quiet",
        "task.name=zz_reverse",
        "train.steps=20",
        "train.batch_size=16",
        "train.eval_size=32",
        "train.log_every=5",
        "train.ckpt_every=10",
        "model.width=16",
        "model.mlp=32",
        "train.progress=true",
    )
    assert r.returncode == 0, r.stderr
    rows = read_metrics(run)
    assert [x["step"] for x in rows] == [1, 5, 10, 15, 20] and 0 < rows[-1]["eval_acc"] <= 1
    assert "prog_repetition" in rows[-1]
    # every analysis whose capabilities the task provides runs; the matrices' are named, skipped
    small = [f"--set={name}.n=16" for name in ("copying", "attention", "patching", "ablation")]
    r = cli(
        "analyze",
        str(run),
        "--steps",
        "10,20",
        "--set=probe.n=32",
        "--set=switching.n=16",
        "--set=embeddings.n=16",
        *small,
    )
    assert r.returncode == 0, r.stderr
    ran = {p.parent.name for p in (run / "analysis").glob("*/results.json")}
    assert ran == {
        "progress",
        "copying",
        "attention",
        "probe",
        "embeddings",
        "patching",
        "ablation",
        "switching",
    }
    for name in ("compare", "ood"):
        assert f"{name:11s} skipped: task zz_reverse does not provide matrices" in r.stdout
    patched = json.loads((run / "analysis" / "patching" / "results.json").read_text())
    assert 0 <= patched["steps"]["20"]["chosen"]["recovery_outputs"] <= 1.5
    assert cli("report", str(run)).returncode == 0


def test_a_new_intervention_is_one_file_as_the_docs_show(tmp_path, monkeypatch):
    """The docs' example, dropped into a temporary folder of the package's path (not into src/:
    parallel test workers share it): its settings are a configuration section (keys, docs,
    checks, config.json), and it puts its attention edit in and takes it out by its schedule
    before every training step and on every loaded checkpoint, and the edit changes the forward
    pass."""
    code = re.search(r"```python\n(\"\"\"A nudge toward.*?)```", DOC, re.S).group(1)
    (tmp_path / "zz_own_position.py").write_text(code)
    registry = abrupt.interventions
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    monkeypatch.setattr(schema, "PLUGIN_SECTIONS", dict(schema.PLUGIN_SECTIONS))
    registry._registry.cache_clear()
    try:
        assert "own_position" in registry.names()
        assert schema.field_docs()["own_position.until"] == (
            "int",
            100,
            "the last training step it acts at",
        )
        with pytest.raises(ConfigError, match="own_position.factor: must be a positive number"):
            apply_overrides(preset("tiny"), ["own_position.factor=0"])
        seen = []
        real_apply = registry.apply

        def apply(model, cfg, step):
            real_apply(model, cfg, step)
            seen.append((step, "own_position" in model.attention_edits))

        monkeypatch.setattr(registry, "apply", apply)
        cfg = apply_overrides(
            preset("tiny"),
            ["train.steps=6", "train.ckpt_every=2"]
            + ["own_position.factor=2", "own_position.until=3"],
        )
        train(cfg, tmp_path / "run", verbose=False)
        assert seen == [(s, s <= 3) for s in range(1, 7)]
        written = json.loads((tmp_path / "run" / "config.json").read_text())
        assert written["own_position"] == {"factor": 2.0, "until": 3}
        assert read_config(tmp_path / "run") == cfg
        for step in (2, 4, 6):
            model = checkpoints.load_model(cfg, checkpoints.find(tmp_path / "run", step))
            assert ("own_position" in model.attention_edits) is (step <= 3)
        tokens = sample_batch(cfg.data, 4, generator(0)).tokens
        real_apply(model, cfg, 1)
        nudged = model.predict(tokens)
        model.attention_edits.clear()
        assert not torch.equal(nudged, model.predict(tokens))
    finally:
        registry._registry.cache_clear()
        schema.field_docs.cache_clear()


def test_an_unknown_task_names_the_registered_ones():
    r = abrupt_cli("train", "--preset", "mws", "task.name=nope", "--out", "/nonexistent/x")
    assert r.returncode == 2 and "task.name: must be one of matrix, addition" in r.stderr


def test_a_run_directory_written_before_the_layout_change_still_loads_resumes_and_analyses(
    tmp_path,
):
    raw = json.loads((OLD_RUN / "config.json").read_text())
    cfg = read_config(OLD_RUN)
    now = cfg.to_dict()
    for old, new in RENAMED.items():  # keys renamed since: read under their new names
        (section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        if old_key in raw[section]:
            raw.setdefault(new_section, {})[new_key] = raw[section].pop(old_key)
    for (
        section,
        values,
    ) in raw.items():  # every value it recorded is read back (newer keys: their defaults)
        if section in ("versions", "segments"):
            continue
        assert (
            (now[section] == values)
            if not isinstance(values, dict)
            else all(now[section][k] == v for k, v in values.items())
        ), section
    assert (
        cfg.attn_bias.factor == 3 and cfg.train.batch_size == 256 and cfg.train.eps == 1e-8
    )  # eps: then unrecorded
    # the same configuration, short and small, trained, killed and resumed, then analysed
    run = tmp_path / "run"
    run.mkdir()
    short = [
        "train.steps=12",
        "train.batch_size=16",
        "train.eval_size=32",
        "train.log_every=4",
        "train.ckpt_every=4",
        "train.ckpt_log_points=0",
        "model.width=16",
        "model.mlp=32",
    ]
    small = validate_run(apply_overrides(read_config(OLD_RUN), short + ["train.steps=8"]))
    train(small, run, verbose=False)
    config = json.loads((run / "config.json").read_text())
    config.pop("segments")  # as written by the version that made OLD_RUN: no segments
    (run / "config.json").write_text(json.dumps(config))
    resumed = train(
        validate_run(apply_overrides(read_config(OLD_RUN), short)), run, resume=True, verbose=False
    )
    assert resumed["steps"] == 12
    r = abrupt_cli(
        "analyze",
        str(run),
        "--only",
        "copying,attention",
        "--set",
        "copying.n=8",
        "--set",
        "attention.n=8",
    )
    assert r.returncode == 0, r.stderr


def test_the_configuration_reference_is_generated_from_the_schema():
    from abrupt.config.reference import markdown
    from abrupt.config.schema import field_docs

    assert all(doc for _, _, doc in field_docs().values()), "a configuration key has no #: doc"
    assert (ROOT / "docs" / "configuration.md").read_text() == markdown(), (
        "docs/configuration.md is stale: python -m abrupt.config.reference > docs/configuration.md"
    )
    help_text = abrupt_cli("train", "--help").stdout
    assert all(key in help_text for key in field_docs())


def test_the_old_run_fixture_is_committed():
    assert (
        shutil.which("git") is None
        or subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(OLD_RUN / "config.json")],
            cwd=ROOT,
            capture_output=True,
        ).returncode
        == 0
    )


def test_a_rule_of_the_registries_refuses_before_a_run_directory_exists(tmp_path, monkeypatch):
    from abrupt.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "task.name=mws"]) == 2  # a sequence task needs the decoder
    assert not (tmp_path / "runs").exists()


def test_a_config_json_the_registries_refuse_is_one_line(tmp_path):
    import pytest

    from abrupt.run.rundir import RunDirError

    run = tmp_path / "run"
    run.mkdir()
    raw = json.loads((OLD_RUN / "config.json").read_text())
    raw["model"]["arch"] = "rnn"
    (run / "config.json").write_text(json.dumps(raw))
    with pytest.raises(RunDirError, match="model.arch: must be one of bert, gpt"):
        read_config(run)


def test_a_renamed_key_and_its_old_name_are_one_key_in_a_sweep():
    import pytest

    from abrupt.config import ConfigError
    from abrupt.sweep.runner import SweepSpec, expand

    spec = SweepSpec(
        preset="tiny", fixed={"model.hidden": "32"}, grid={"model.width": ["16", "64"]}
    )
    with pytest.raises(ConfigError, match="given more than once"):
        expand(spec)


def test_a_new_model_is_a_class_and_a_registry_entry(tmp_path, monkeypatch):
    """A toy decoder registered without writing into src/: `model.arch=toy` trains matrix
    completion and a sequence task through the trainer, and its undeclared options are refused."""
    from abrupt.config import ConfigError, preset
    from abrupt.models.gpt import MatrixGPT, SequenceGPT
    from abrupt.models.registry import ARCHS

    built = []

    class ToySequence(SequenceGPT):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append("sequence")

    class Toy(MatrixGPT):
        supports = frozenset({"sequence_tasks"})

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append("matrix")

        for_sequences = ToySequence

    monkeypatch.setitem(ARCHS, "toy", Toy)
    small = ["train.steps=4", "train.log_every=2", "train.ckpt_every=4", "train.eval_size=8"]
    small += ["train.batch_size=8", "model.width=16", "model.mlp=32", "model.layers=1"]
    for name, overrides in (
        ("matrix", ["model.arch=toy", "train.progress=false"]),
        ("mws", ["model.arch=toy", "task.name=mws", "train.progress=true"]),
    ):
        run = tmp_path / name
        train(apply_overrides(preset("gpt_cpu"), overrides + small), run, verbose=False)
        rows = read_metrics(run)
        assert [r["step"] for r in rows] == [1, 2, 4] and all(r["loss"] > 0 for r in rows)
    assert "matrix" in built and "sequence" in built
    linear = apply_overrides(preset("gpt_cpu"), ["model.arch=toy", "model.attention=linear"])
    with pytest.raises(ConfigError, match=r"^model.attention=linear: built for .*, not toy$"):
        validate_run(linear)
