"""The analyses' shortcuts change no number (issue 29): a forward pass resumed at a layer equals the
whole pass, ablation and patching from the shared passes equal their reference implementations
(which rerun every pass whole) bit for bit, each (checkpoint, batch) pass runs once per command,
and a nuclear-norm solution read back from the run's cache is the one solved."""

import functools

import pytest
import torch

from abrupt import baselines
from abrupt.analysis import ablation, patching
from abrupt.analysis.common import Inputs
from abrupt.config import apply_overrides, preset
from abrupt.hooks import act_name
from abrupt.models.registry import build_model


def config(*extra):
    return apply_overrides(
        preset("tiny"),
        ["model.width=16", "model.mlp=32", "model.layers=3", "data.m=4", "data.n=4", *extra],
    )


def random_model(cfg, seed):
    model = build_model(cfg.model, cfg.data.m * cfg.data.n, seed, cfg.data.n).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("extra", [(), ("model.norm=pre",), ("attn_bias.factor=3",)])
def test_run_from_equals_the_whole_pass(extra):
    cfg = config(*extra)
    model = random_model(cfg, 0)
    tokens = torch.randint(0, 20, (8, 16))
    names = [act_name("resid_pre", l) for l in range(3)]
    with torch.no_grad():
        whole, cache = model.run_with_cache(tokens, names=names)
        for l in range(3):
            assert torch.equal(model.run_from(l, cache[names[l]]), whole)
        # a hook on layer 2 acts the same whether the pass starts at layer 0 or 2
        hook = [(act_name("z", 2), lambda z, p: z * 0)]
        with model.hooks(hook):
            assert torch.equal(model.run_from(2, cache[names[2]]), model(tokens))
    with pytest.raises(ValueError, match="layer 3 out of range"):
        model.run_from(3, cache[names[0]])


def inputs_of(cfg):
    return Inputs({5: random_model(cfg, 1), 9: random_model(cfg, 2)}, cfg.data)


def test_ablation_from_the_shared_passes_equals_rerunning_everything():
    cfg = config()
    inputs = inputs_of(cfg)
    numbers = ablation.run(inputs, n=48).numbers
    batch = inputs.batch(48, 0)
    for step, model in inputs.models.items():
        entry = numbers["steps"][step]
        means = ablation.mean_patterns(model, batch.tokens)
        heads = [(l, h) for l in range(3) for h in range(2)]
        ablate = functools.partial(ablation.ablate, inputs.task, cfg, model, batch)
        for mode in ablation.MODES:
            assert entry["chosen"][mode] == ablate(heads, mode, means)
            for l, h in heads:
                ref = ablate([(l, h)], mode, means)["loss_mask"]
                assert entry["per_head_loss_mask"][mode][l][h] == ref
    # the ablations change the losses, so the equality above is not that of unused numbers
    assert len({v for row in entry["per_head_loss_mask"]["zero"] for v in row}) == 6


def test_patching_from_the_shared_passes_equals_rerunning_everything():
    cfg = config()
    inputs = inputs_of(cfg)
    numbers = patching.run(inputs, n=48, heads="1:*").numbers
    batch = inputs.batch(48, 0)
    for step, model in inputs.models.items():
        entry = numbers["steps"][step]
        patch = functools.partial(patching.patch, inputs.task, cfg, model, batch)
        assert entry["chosen"] == patch([(1, 0), (1, 1)])
        for l in range(3):
            for h in range(2):
                ref = patch([(l, h)])
                assert entry["per_head_recovery_hidden"][l][h] == ref["recovery_hidden"]
                assert entry["per_head_recovery_observed"][l][h] == ref["recovery_observed"]
                assert 0 != ref["recovery_hidden"]


def test_each_pass_runs_once_per_command(monkeypatch):
    cfg = config()
    inputs = inputs_of(cfg)
    passes = []
    for model in inputs.models.values():

        def counted(*args, forward=model.forward, **kwargs):
            passes.append(1)
            return forward(*args, **kwargs)

        monkeypatch.setattr(model, "forward", counted)
    ablation.run(inputs, n=48, modes=("zero",))
    whole = len(passes)  # one stream pass per checkpoint; the ablated passes start later
    assert whole == 2
    patching.run(inputs, n=48)  # reuses the clean passes; adds the corrupted one per checkpoint
    assert len(passes) == whole + 2
    assert inputs.batch(48, 0) is inputs.batch(48, 0)


def test_solutions_are_read_back_from_the_cache(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, 1, generator=g) @ torch.randn(6, 1, 4, generator=g)
    observed = torch.rand(6, 4, 4, generator=g) > 0.3
    cache = baselines.SolutionCache(tmp_path)
    exact = baselines.complete(a, observed, cache=cache)
    reg = baselines.complete(a, observed, 1e-3, exact=exact.x, cache=cache)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2

    def no_solve(*args, **kwargs):
        raise AssertionError("solved again")

    monkeypatch.setattr(baselines, "torch_admm", no_solve)
    again = baselines.complete(a, observed, cache=cache)
    assert torch.equal(again.x, exact.x) and again.status == exact.status
    assert again.iterations == exact.iterations and again.seconds == exact.seconds
    assert torch.equal(baselines.complete(a, observed, 1e-3, exact=exact.x, cache=cache).x, reg.x)
    # another problem, or another lam, is not read from the cache
    for other in ((a, ~observed, None), (a, observed, 2e-3), (2 * a, observed, None)):
        with pytest.raises(AssertionError, match="solved again"):
            baselines.complete(*other[:2], other[2], exact=exact.x, cache=cache)
    # a damaged file is solved again
    monkeypatch.undo()
    for path in tmp_path.glob("*.safetensors"):
        path.write_bytes(b"not a safetensors file")
    assert torch.equal(baselines.complete(a, observed, cache=cache).x, exact.x)


def test_a_cache_that_cannot_be_written_leaves_the_solve_standing(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would go")
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, 1, generator=g) @ torch.randn(3, 1, 4, generator=g)
    observed = torch.rand(3, 4, 4, generator=g) > 0.3
    out = baselines.complete(a, observed, cache=baselines.SolutionCache(blocked / "cache"))
    assert torch.equal(out.x, baselines.complete(a, observed).x)
