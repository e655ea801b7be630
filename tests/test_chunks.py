"""No number depends on how a batch is split into forward passes (model.CHUNK): every analysis
gives the same results at two chunk sizes, on the BERT and on the GPT variant (issue 17, item 1)."""

import math

import pytest
import torch

from abrupt.analysis import ablation
from abrupt.analysis.common import Inputs
from abrupt.analysis.registry import discover
from abrupt.config import apply_overrides, preset
from abrupt.data import seeded_batch
from abrupt.hooks import act_name
from abrupt.models import layers as model_
from abrupt.models.registry import build_model


def config(arch: str):
    return apply_overrides(
        preset("tiny"),
        [
            f"model.arch={arch}",
            "model.width=16",
            "model.mlp=32",
            "data.m=3",
            "data.n=3",
            "data.rank=1",
            "data.p_mask=0.3",
        ],
    )


def random_model(cfg, seed: int):
    """The tiny model with every parameter moved off its init, so heads differ between inputs."""
    model = build_model(cfg.model, cfg.data.m * cfg.data.n, seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def assert_same(a, b, where="numbers"):
    """Equal structure, floats within 1e-5 relative (NaN equals NaN); timings are not compared."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a.keys() - {"seconds"}:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(
            a, b, rel_tol=1e-5, abs_tol=1e-7
        ), f"{where}: {a} != {b}"
    else:
        assert a == b, where


def test_the_reported_case_the_matrix_alone_in_the_last_chunk_is_ablated(monkeypatch, one_thread):
    """n = CHUNK + 1: the last matrix sat alone in its chunk, its 'mean' pattern was its own."""
    cfg = config("bert")
    model = random_model(cfg, 0)
    monkeypatch.setattr(model_, "CHUNK", 8)
    batch = seeded_batch(cfg.data, 9, 0)
    heads = [(l, h) for l in range(2) for h in range(2)]
    hooks = ablation.ablation_hooks(
        heads, "mean", means=ablation.mean_patterns(model, batch.tokens)
    )
    with model.hooks(hooks):
        ablated = model.predict(batch.tokens)
    clean = model.predict(batch.tokens)
    assert (
        ablated[8] - clean[8]
    ).abs().max() > 0.05  # it is ablated: before the fix it moved ~1e-7
    with model.hooks(hooks):  # and exactly as when it shares its chunk with the others
        monkeypatch.setattr(model_, "CHUNK", 16)
        torch.testing.assert_close(model.predict(batch.tokens), ablated)
    # the mean is the whole batch's
    name = act_name("pattern", 0)
    _, cache = model.run_with_cache(batch.tokens, names=[name])
    torch.testing.assert_close(ablation.mean_patterns(model, batch.tokens)[0], cache[name].mean(0))


@pytest.mark.parametrize("arch", ["bert", "gpt"])
def test_every_analysis_gives_the_same_numbers_at_two_chunk_sizes(arch, monkeypatch, one_thread):
    cfg = config(arch)
    inputs = Inputs({10: random_model(cfg, 1), 20: random_model(cfg, 2)}, cfg.data)
    ran = []
    for name, mod in discover().items():
        if getattr(mod, "unsupported", lambda c: None)(cfg) or getattr(mod, "ON_REQUEST", False):
            # ON_REQUEST: llc, which does not chunk (SGLD on whole batches), and costs minutes
            continue
        options = {"n": 7} if "n" in mod.run.__code__.co_varnames else {}
        if name == "compare":
            options["p_masks"] = (0.3,)
        results = []
        for chunk in (512, 3):  # one pass, then passes of 3, 3 and 1 matrices
            monkeypatch.setattr(model_, "CHUNK", chunk)
            results.append(mod.run(inputs, **options).numbers)
        assert_same(results[0], results[1], name)
        ran.append(name)
    expected = {"copying", "attention", "probe", "embeddings", "patching", "ablation"}
    expected |= {"switching", "compare", "ood"}
    # progress is computed from the checkpoints where the model can (the BERT's measures)
    assert set(ran) == (expected | {"progress"} if arch == "bert" else expected)
