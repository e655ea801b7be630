"""Analyses on tiny models with hand-set weights or stand-ins where the right answer is known."""

import functools
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from abrupt import progress, tasks
from abrupt.analysis import ablation, attention, copying, embeddings, patching, probe, switching
from abrupt.analysis.common import Inputs, choose_pre_post, parse_heads
from abrupt.config import Config, DataConfig
from abrupt.data import MASK_ID, id_to_value
from abrupt.data import seeded_batch as seeded
from abrupt.losses import evaluate
from abrupt.models.bert import MatrixBert
from conftest import hand_set_row_head, plugin_cli, randomize

DATA = DataConfig()
MATRIX = tasks.get("matrix")


class CopyModel:
    """Predicts each observed entry's own value and 0 at MASK: the plateau solution, by hand."""

    def predict(self, tokens):
        vals = id_to_value(tokens.clamp_min(1))
        return torch.where(tokens == MASK_ID, torch.zeros_like(vals), vals)


def test_copying_model_copies_substitutes():
    res = copying.run(Inputs({7: CopyModel()}, DATA), n=64, substitutes=(0.44, -0.24)).numbers
    assert len(res["rows"]) == 2 * 3
    for row in res["rows"]:
        assert row["mse_to_substitute"] == pytest.approx(0.0, abs=1e-10)
        assert row["loss_obs"] == pytest.approx(0.0, abs=1e-10)
    # predicting 0 at hidden entries costs L_mask = E[X^2] on low-rank inputs, 2/9 in expectation
    mask_row = next(
        r for r in res["rows"] if r["input"] == "low-rank" and r["substitute"] == "MASK"
    )
    assert mask_row["loss_mask"] == pytest.approx(2 / 9, rel=0.15)


def test_substitution_replaces_only_hidden_tokens():
    batch = seeded(DATA, 8, 0)
    sub = tasks.get("matrix").substitute(batch, 0.44)
    assert (sub.tokens[batch.mask] == 1045).all()
    assert torch.equal(sub.tokens[~batch.mask], batch.tokens[~batch.mask])


def row_pattern(m, n, batch=2, heads=1):
    rel = progress.relation_masks(m, n)["row"].float()
    pat = rel / rel.sum(-1, keepdim=True)
    return pat.expand(1, batch, heads, m * n, m * n)


def test_pattern_on_the_row_has_row_mass_one():
    hidden = torch.zeros(2, 49, dtype=torch.bool)
    masses = progress.head_masses(row_pattern(7, 7), hidden, 7, 7)
    assert masses["row"].item() == pytest.approx(1.0)
    assert masses["column"].item() == pytest.approx(0.0)
    assert masses["observed"].item() == pytest.approx(1.0)
    assert attention.classify(masses, 0.4) == {"row_heads": ["0:0"], "column_heads": []}


def test_hand_set_row_head_is_found():
    res = attention.run(Inputs({1: hand_set_row_head()}, DATA), n=16).numbers
    masses = res["steps"][1]["random"]
    # the query's 6 row-mates and itself share the weight: 6/7 on the row, 1/7 on itself
    assert masses["row"][0][0] == pytest.approx(6 / 7, abs=1e-3)
    assert masses["self"][0][0] == pytest.approx(1 / 7, abs=1e-3)
    assert res["steps"][1]["row_heads"] == ["0:0"] and res["steps"][1]["column_heads"] == []
    # under a structured row mask every query still attends to its own row
    assert res["steps"][1]["rows"]["row"][0][0] == pytest.approx(6 / 7, abs=1e-3)


def test_structured_masks():
    rows = attention.structured_mask(DATA, 3, "rows", (1, 3), keep=2)[0].reshape(7, 7)
    assert (
        rows[1].tolist() == [True, True, False, True, True, True, True]
        and rows[3].sum() == 6
        and rows.sum() == 12
    )
    cols = attention.structured_mask(DATA, 3, "columns", (0,), keep=4)[0].reshape(7, 7)
    assert cols[:, 0].tolist() == [True] * 4 + [False] + [True] * 2 and cols.sum() == 6
    with pytest.raises(ValueError, match="outside"):
        attention.structured_mask(DATA, 1, "rows", (9,), keep=0)


def test_probe_recovers_a_target_contained_in_the_state():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(400, 7, generator=g)
    x = torch.cat([y @ torch.randn(7, 7, generator=g), torch.randn(400, 5, generator=g)], dim=1)
    w = probe.fit_probe(x[:300], y[:300])
    pred = probe.apply_probe(w, x[300:])
    assert ((pred - y[300:].double()) ** 2).mean().item() < 1e-6  # the tiny ridge shrinks a little
    assert probe.mean_abs_cosine(pred, y[300:]) == pytest.approx(1.0, abs=1e-6)
    # a pure-noise state predicts nothing: held-out R^2 near 0 or below
    noise = torch.randn(400, 12, generator=g)
    w2 = probe.fit_probe(noise[:300], y[:300, :1])
    mse = ((probe.apply_probe(w2, noise[300:]) - y[300:, :1].double()) ** 2).mean().item()
    assert mse > 0.8 * y[300:, 0].var().item()


def test_probe_targets_are_the_row_and_sign_fixed_singular_vector():
    from abrupt.config import Config
    from abrupt.tasks.matrix import TASK

    batch = seeded(DATA, 4, 0)
    tg = TASK.probe_targets(Config(data=DATA), batch)
    masked = torch.where(batch.mask, 0.0, batch.target).reshape(4, 7, 7)
    assert torch.equal(tg["row"].y[2, 10], masked[2, 1])  # matrix 2, position 10 = row 1
    v = tg["singular"].y[0, 0]
    assert v[v.abs().argmax()] > 0 and v.norm().item() == pytest.approx(1.0, abs=1e-5)
    # the value is scored on masked and observed entries apart
    assert torch.equal(tg["value"].parts["masked"], batch.mask) and not tg["row"].parts


def test_knn_purity():
    x = np.array([[0, 0], [0, 0.1], [5, 5], [5, 5.1]], dtype=float)
    assert embeddings.knn_purity(x, np.array([0, 0, 1, 1]), k=1) == 1.0
    assert embeddings.knn_purity(x, np.array([0, 1, 0, 1]), k=1) == 0.0


def test_patching_plumbing(small_model):
    model = randomize(small_model, 3)
    batch = seeded(DATA, 16, 1)
    cfg = Config(data=DATA, model=model.cfg)
    patch = functools.partial(patching.patch, MATRIX, cfg, model, batch)
    none = patch([])
    assert none["recovery_hidden"] == 0.0 and none["recovery_observed"] == 0.0
    every = parse_heads("all", 2, 4)
    # Hidden positions hold MASK in both runs, so they differ only through attention: patching every
    # head of every layer recovers the clean output there exactly.
    assert patch(every)["recovery_hidden"] == pytest.approx(1.0, abs=1e-5)
    corrupt = patching.corrupted(MATRIX, cfg, batch, 0)
    assert torch.equal(corrupt.target, -batch.target)  # -X under the same mask
    names = [f"blocks.{l}.attn.hook_z" for l in range(2)]
    _, clean_cache = model.run_with_cache(batch.tokens, names=names)
    clean_z = {l: clean_cache[names[l]] for l in range(2)}
    everywhere = torch.ones_like(batch.mask)
    with model.hooks(patching.patch_hooks(clean_z, every, everywhere)):
        _, patched = model.run_with_cache(corrupt.tokens, names=names)
    for n in names:  # every head of every layer now carries exactly the clean output
        torch.testing.assert_close(patched[n], clean_cache[n])
    # only the chosen head and positions change
    only = patching.position_selector("0,5", MATRIX.regions(cfg, batch))
    with model.hooks(patching.patch_hooks(clean_z, [(1, 2)], only)):
        _, part = model.run_with_cache(corrupt.tokens, names=names)
    _, corrupt_cache = model.run_with_cache(corrupt.tokens, names=names)
    z = part[names[1]]
    torch.testing.assert_close(z[:, [0, 5], 2], clean_cache[names[1]][:, [0, 5], 2])
    torch.testing.assert_close(z[:, 1:5], corrupt_cache[names[1]][:, 1:5])
    torch.testing.assert_close(
        z[:, [0, 5]][:, :, [0, 1, 3]], corrupt_cache[names[1]][:, [0, 5]][:, :, [0, 1, 3]]
    )


def test_recovery_fraction():
    clean, corrupt = torch.tensor([[1.0, 2.0]]), torch.tensor([[-1.0, -2.0]])
    sel = torch.ones(1, 2, dtype=torch.bool)
    assert patching.recovery(clean, clean, corrupt, sel) == pytest.approx(1.0)
    assert patching.recovery(corrupt, clean, corrupt, sel) == pytest.approx(0.0)
    assert patching.recovery(torch.zeros(1, 2), clean, corrupt, sel) == pytest.approx(0.5)


def test_ablating_nothing_changes_nothing_and_modes_act(small_model):
    model = randomize(small_model, 4)
    batch = seeded(DATA, 32, 2)
    base = evaluate(model, batch)
    ablate = functools.partial(ablation.ablate, MATRIX, Config(data=DATA, model=model.cfg), model)
    for mode in ablation.MODES:
        assert ablate(batch, [], mode) == base
        assert ablate(batch, [(0, 1)], mode) != base
    names = ["blocks.1.attn.hook_pattern"]
    with model.hooks(ablation.ablation_hooks([(1, 3)], "uniform")):
        _, cache = model.run_with_cache(batch.tokens, names=names)
    p = cache[names[0]]
    assert torch.allclose(p[:, 3], torch.full_like(p[:, 3], 1 / 49))
    means = ablation.mean_patterns(model, batch.tokens)
    with model.hooks(ablation.ablation_hooks([(1, 0)], "mean", means=means)):
        _, cache = model.run_with_cache(batch.tokens, names=names)
    p = cache[names[0]][:, 0]
    assert torch.allclose(p, p[:1].expand_as(p))  # the same pattern for every input
    _, clean = model.run_with_cache(batch.tokens, names=names)
    torch.testing.assert_close(p[0], clean[names[0]][:, 0].mean(0))  # the intact model's batch mean
    with pytest.raises(ValueError, match="use one or more of mean, uniform, zero"):
        ablation.ablation_hooks([(0, 0)], "random")
    with pytest.raises(ValueError, match="needs the batch-mean patterns"):
        ablation.ablation_hooks([(0, 0)], "mean")


def test_switching_groups_partition_the_parameters(small_model):
    names = set(small_model.state_dict())
    attn = set(switching.group_names(small_model, "attention"))
    rest = set(switching.group_names(small_model, "rest"))
    assert attn and rest and attn | rest == names and not attn & rest
    singles = [
        set(switching.group_names(small_model, g))
        for g in ("qkv", "attn_out", "mlp", "layernorm", "embeddings", "readout")
    ]
    assert set().union(*singles) == names and sum(map(len, singles)) == len(names)
    a, b = randomize(small_model, 1), randomize(MatrixBert(small_model.cfg, 49), 2)
    both = switching.transplant(switching.transplant(a, b, "attention"), b, "rest")
    for n, p in both.state_dict().items():
        assert torch.equal(p, b.state_dict()[n])


def test_choose_pre_post():
    steps = [0, 1, 10, 100, 500, 1000, 1500, 2000]
    assert choose_pre_post(steps, {"drop_step": 1200, "plateau_start": 50})[:2] == (1000, 2000)
    pre, post, note = choose_pre_post(steps, {"drop_step": None})
    assert (pre, post) == (1, 2000) and "no drop" in note
    # a slide before the detected halving: the last checkpoint still within 10% of the plateau
    rows = [
        {"step": s, "eval_loss_mask": v}
        for s, v in ((100, 0.11), (500, 0.109), (1000, 0.08), (1500, 0.07))
    ]
    summary = {"drop_step": 1200, "plateau_start": 50, "plateau_level": 0.11}
    assert choose_pre_post(steps, summary, rows)[:2] == (500, 2000)


def test_parse_heads():
    assert parse_heads("1:0,2:*", 4, 2) == [(1, 0), (2, 0), (2, 1)]
    assert len(parse_heads("all", 4, 8)) == 32
    with pytest.raises(ValueError, match="out of range"):
        parse_heads("4:0", 4, 8)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from abrupt.config import apply_overrides, preset
    from abrupt.train.trainer import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(apply_overrides(preset("tiny"), []), run, verbose=False)
    return run


def strip(d):
    return {k: v for k, v in d.items() if k != "seconds"}


def test_analyze_and_report_end_to_end(tiny_run):
    from abrupt.cli import main

    assert main(["analyze", str(tiny_run), "--set", "compare.n=16", "--set", "ood.n=8"]) == 0
    for name in (
        "copying",
        "attention",
        "probe",
        "embeddings",
        "patching",
        "ablation",
        "switching",
    ):
        res = json.loads((tiny_run / "analysis" / name / "results.json").read_text())
        assert res["figures"] and all(
            (tiny_run / "analysis" / name / f).exists() for f in res["figures"]
        )
        assert "no drop" in res["selection"]
    first = strip(json.loads((tiny_run / "analysis" / "probe" / "results.json").read_text()))
    assert (
        main(
            [
                "analyze",
                str(tiny_run),
                "--only",
                "probe,copying",
                "--steps",
                "20,60",
                "--set",
                "copying.substitutes=0.5",
            ]
        )
        == 0
    )
    assert main(["analyze", str(tiny_run), "--only", "probe"]) == 0
    assert (
        strip(json.loads((tiny_run / "analysis" / "probe" / "results.json").read_text())) == first
    )  # seeded
    cop = json.loads((tiny_run / "analysis" / "copying" / "results.json").read_text())
    assert {r["substitute"] for r in cop["rows"]} == {"MASK", 0.5} and {
        r["step"] for r in cop["rows"]
    } == {20, 60}
    assert main(["report", str(tiny_run)]) == 0
    page = (tiny_run / "report.html").read_text()
    for title in (
        "Copying before the drop",
        "Attention maps",
        "Linear probes",
        "Embeddings",
        "Activation patching",
        "Attention ablation",
        "Switching",
    ):
        assert title in page
    assert main(["analyze", str(tiny_run), "--set", "patching.heads=9:0"]) == 2
    assert main(["analyze", str(tiny_run), "--only", "nonsense"]) == 2


def test_quick_cuts_each_sample_size_unless_set_and_says_so(tiny_run, tmp_path):
    from abrupt.cli import main

    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    argv = ["analyze", str(run), "--only", "copying,probe,patching", "--quick"]
    assert main([*argv, "--set", "patching.n=20"]) == 0
    res = {
        n: json.loads((run / "analysis" / n / "results.json").read_text())
        for n in ("copying", "probe", "patching")
    }
    # copying 512 / 8 = 64; probe 1024 / 8 = 128; patching set by hand, so untouched
    assert [res[n]["options"]["n"] for n in res] == [64, 128, 20]
    assert res["copying"]["n"] == 64
    assert "--quick: n = 64 instead of 512" in " ".join(res["copying"]["notes"])
    assert not any("--quick" in note for note in res["patching"].get("notes", []))
    assert main(["report", str(run)]) == 0
    assert "--quick: n = 128 instead of 1024" in (run / "report.html").read_text()


def test_figures_are_drawn_again_only_when_what_they_show_changed(tiny_run, tmp_path, capsys):
    from abrupt.cli import main

    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    argv = ["analyze", str(run), "--only", "copying,attention"]

    def stamps(name):
        res = json.loads((run / "analysis" / name / "results.json").read_text())
        return {f: (run / "analysis" / name / f).stat().st_mtime_ns for f in res["figures"]}

    assert main(argv) == 0
    first = {n: stamps(n) for n in ("copying", "attention")}
    capsys.readouterr()
    assert main(argv) == 0  # the same numbers and drawing data: every figure kept
    assert capsys.readouterr().out.count("figures unchanged, kept") == 2
    assert {n: stamps(n) for n in first} == first
    # another option of copying changes its numbers: its figure is drawn again, attention's kept
    assert main([*argv, "--set", "copying.substitutes=0.5"]) == 0
    assert stamps("copying") != first["copying"] and stamps("attention") == first["attention"]
    # a figure removed by hand is drawn again, though the key is unchanged
    gone = next(iter(first["attention"]))
    (run / "analysis" / "attention" / gone).unlink()
    assert main(argv) == 0
    assert (run / "analysis" / "attention" / gone).exists()


CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)


@pytest.mark.extra  # not installed by the README's set-up: .ci/run installs it, then runs these
@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (installed by .ci/run)")
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    from abrupt.cli import main

    assert main(["analyze", str(tiny_run), "--only", "copying,attention"]) == 0
    assert main(["report", str(tiny_run)]) == 0
    url = (tiny_run / "report.html").resolve().as_uri()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [
            CHROMIUM,
            *flags,
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0
    images = dom.stdout.split('data-images="')[1].split('"')[0]
    loaded, total = map(int, images.split("/"))
    assert total >= 5 and loaded == total
    assert "CONSOLE" not in dom.stderr, dom.stderr
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000


PLUGIN = '''"""A demo analysis written by a test: one new file, nothing else edited."""
from abrupt.analysis.common import Result, Table, Text
from abrupt.losses import evaluate
from abrupt.data import seeded_batch

TITLE = "Demo analysis added as one file"
PAPER = "Not in the paper."
ORDER = 999


def run(inputs, seed: int = 0, n: int = 8) -> Result:
    batch = seeded_batch(inputs.data, n, seed)
    return Result({"rows": [{"step": s, **evaluate(m, batch)} for s, m in inputs.models.items()]})


def plot(result, out):
    return []


def render(r):
    rows = [[x["step"], x["loss_mask"]] for x in r["rows"]]
    return [Text("demo rows:"), Table(["step", "L_mask"], rows)]
'''


def test_a_new_analysis_module_is_one_file(tiny_run, tmp_path):
    (tmp_path / "zz_demo_plugin.py").write_text(PLUGIN)
    cli = functools.partial(plugin_cli, {"abrupt.analysis": tmp_path})
    listed = cli("analyze", "--options")
    assert "zz_demo_plugin: seed=0, n=8" in listed.stdout
    r = cli("analyze", str(tiny_run), "--only", "zz_demo_plugin", "--set", "zz_demo_plugin.n=4")
    assert r.returncode == 0, r.stderr
    res = json.loads((tiny_run / "analysis" / "zz_demo_plugin" / "results.json").read_text())
    assert res["options"] == {"seed": 0, "n": 4} and len(res["rows"]) == 2
    r = cli("report", str(tiny_run))
    assert r.returncode == 0, r.stderr
    page = (tiny_run / "report.html").read_text()
    assert "Demo analysis added as one file" in page and "demo rows:" in page


def test_hook_names_have_one_spelling(small_model):
    from abrupt.hooks import act_name

    assert act_name("pattern", 2) == "blocks.2.attn.hook_pattern"
    assert act_name("resid_post", 0) == "blocks.0.hook_resid_post"
    assert act_name("embed") == "hook_embed"
    points = set(small_model.hook_points())
    for layer in range(2):
        for kind in (
            "resid_pre",
            "attn_out",
            "resid_mid",
            "mlp_out",
            "resid_post",
            "q",
            "k",
            "v",
            "pattern",
            "z",
        ):
            assert act_name(kind, layer) in points
    for kind in ("tok_embed", "pos_embed", "embed", "out"):
        assert act_name(kind) in points
    with pytest.raises(ValueError, match="per layer"):
        act_name("z")
    with pytest.raises(ValueError, match="unknown hook kind"):
        act_name("nonsense", 0)


SMALL = {
    "1x2": ("bert", 1, 2),
    "2x2": ("bert", 2, 2),
    "2x3": ("bert", 2, 3),
    "gpt 2x2": ("gpt", 2, 2),
}
QUICK = [
    "copying.n=16",
    "attention.n=16",
    "probe.n=64",
    "embeddings.n=16",
    "patching.n=16",
    "ablation.n=16",
    "switching.n=16",
    "compare.n=8",
    "compare.p_masks=0.3",
    "ood.n=8",
]


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """The smallest legal runs, rank 1, trained with the tiny preset for 4 steps."""
    from abrupt.config import apply_overrides, preset
    from abrupt.train.trainer import train

    base = tmp_path_factory.mktemp("small")
    runs = {}
    for name, (arch, m, n) in SMALL.items():
        runs[name] = base / name.replace(" ", "-")
        cfg = apply_overrides(
            preset("tiny"),
            [f"model.arch={arch}", f"data.m={m}", f"data.n={n}", "data.rank=1", "train.steps=4"],
        )
        train(cfg, runs[name], verbose=False)
    return runs


@pytest.mark.parametrize(
    "name,ran",
    [
        ("1x2", {"progress", "copying", "probe", "patching", "ablation", "switching"}),
        (
            "2x2",
            {
                "progress",
                "copying",
                "attention",
                "probe",
                "embeddings",
                "patching",
                "ablation",
                "switching",
                "compare",
                "ood",
            },
        ),
        (
            "2x3",
            {
                "progress",
                "copying",
                "attention",
                "probe",
                "embeddings",
                "patching",
                "ablation",
                "switching",
                "compare",
                "ood",
            },
        ),
        (
            "gpt 2x2",
            {
                "copying",
                "attention",
                "probe",
                "embeddings",
                "patching",
                "ablation",
                "switching",
                "compare",
                "ood",
            },
        ),
    ],
)
def test_analyze_on_the_smallest_runs_runs_what_it_can_and_names_the_rest(
    small_runs, name, ran, capsys, one_thread
):
    from abrupt.analysis.registry import default_analyses
    from abrupt.cli import main

    run = small_runs[name]
    assert main(["analyze", str(run), *[x for o in QUICK for x in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    done = {d.name for d in (run / "analysis").iterdir() if (d / "results.json").exists()}
    skipped = json.loads((run / "analysis" / "skipped.json").read_text())
    assert done == ran and set(skipped) == set(default_analyses()) - ran
    for analysis, why in skipped.items():
        assert f"{analysis:11s} skipped: {why}" in out
    if name == "2x2":  # defaults that exceed 4 positions are lowered, and say so
        emb = json.loads((run / "analysis" / "embeddings" / "results.json").read_text())
        assert emb["k"] == 3 and emb["perplexity"] == 1.0 and emb["options"]["k"] == 4
        assert emb["notes"] == [
            "k lowered from 4 to 3: a position has only 3 neighbours",
            "t-SNE perplexity lowered from 10 to 1 = (positions - 1) / 3",
        ]
        assert "note: k lowered from 4 to 3" in out
        ood = json.loads((run / "analysis" / "ood" / "results.json").read_text())
        assert {r["family"] for r in ood["rows"]} == {"rank", "distribution", "p_mask"} and len(
            ood["notes"]
        ) == 2
        assert main(["report", str(run)]) == 0
        assert "Adjusted to this run: k lowered from 4 to 3" in (run / "report.html").read_text()
        # an explicit value the run cannot take is still refused, in one line
        capsys.readouterr()
        assert main(["analyze", str(run), "--only", "embeddings", "--set", "embeddings.k=4"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "abrupt: error: embeddings options: embeddings.k=4: a position has only 3 neighbours "
            "among the 4 positions the model reads"
        ]
        assert main(["analyze", str(run), "--only", "attention", "--set", "attention.lines=2"]) == 2


def test_no_default_refuses_a_small_run():
    """Every legal shape up to 3x3, every rank, both architectures: planning with the defaults never
    raises, and each analysis either runs or is named with a reason."""
    from abrupt.analysis.registry import discover, plan
    from abrupt.config import apply_overrides, preset

    for arch in ("bert", "gpt"):
        for m in (1, 2, 3):
            for n in (1, 2, 3):
                for rank in range(1, min(m, n) + 1):
                    cfg = apply_overrides(
                        preset("tiny"),
                        [f"model.arch={arch}", f"data.m={m}", f"data.n={n}", f"data.rank={rank}"],
                    )
                    names, skipped = plan(cfg, list(discover()), {})
                    assert set(names) | set(skipped) == set(discover()) and all(skipped.values())
                    assert "copying" in names and ("embeddings" in names) == (m * n >= 4)


@pytest.mark.parametrize("arch,m,n,rank", [("bert", 1, 1, 1), ("bert", 3, 2, 2), ("gpt", 2, 3, 2)])
def test_every_planned_analysis_runs_on_a_small_shape_with_its_defaults(
    arch, m, n, rank, one_thread
):
    import dataclasses

    from abrupt.analysis.registry import default_analyses, discover, plan
    from abrupt.config import apply_overrides, preset
    from abrupt.models.registry import build_model

    cfg = apply_overrides(
        preset("tiny"),
        [
            f"model.arch={arch}",
            f"data.m={m}",
            f"data.n={n}",
            f"data.rank={rank}",
            "model.width=16",
            "model.mlp=16",
        ],
    )
    names, _ = plan(cfg, default_analyses(), {})
    inputs = Inputs(
        {s: build_model(cfg.model, m * n, s).eval() for s in (0, 1)}, dataclasses.replace(cfg.data)
    )
    for name in names:
        sizes = {
            "n": 6,
            **({"p_masks": (0.3,)} if name == "compare" else {}),
        }  # sizes only: every other option at its default
        assert discover()[name].run(inputs, **sizes).numbers, name


def test_analyses_run_one_by_one_on_checkpoints_loaded_and_hashed_once(tiny_run, monkeypatch):
    # the GPU script runs each analysis alone (guarded): every checkpoint is still read once
    from abrupt.analysis import registry
    from abrupt.run import checkpoints

    hashed = []
    real = checkpoints._sha256
    monkeypatch.setattr(checkpoints, "_sha256", lambda path: hashed.append(path.name) or real(path))
    prepared = registry.prepare(
        tiny_run,
        only=["attention", "embeddings"],
        verbose=False,
        opts={"attention": {"n": 8}, "embeddings": {"n": 8}},
    )
    for name in prepared.names:
        assert registry.run_one(prepared, name, verbose=False) == tiny_run / "analysis" / name
    assert sorted(hashed) == sorted(set(hashed))  # each file once
    every = {f"step_{s}.safetensors" for s in prepared.view.steps}
    # attention and embeddings follow every checkpoint (its optimizer state, where kept, is
    # verified with it)
    assert {h for h in hashed if ".optim." not in h} == every
