"""attention on sequence tasks: per-head shares of |attention| on the correct keys, with a
stand-in decoder whose patterns are known, and beside the follow-up's attention progress."""

import pytest
import torch

from abrupt import tasks
from abrupt.analysis import attention
from abrupt.analysis.common import Inputs
from abrupt.config import apply_overrides, preset
from abrupt.hooks import HookedModule, HookPoint


def small(name):
    return apply_overrides(
        preset(name), ["task.length=6", "model.width=16", "model.mlp=32", "model.heads=2"]
    )


class _Attn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_pattern = HookPoint()


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _Attn()


class KeyReader(HookedModule):
    """Two heads a layer: head 0 attends, with linear attention's signs, only to each query's
    correct keys (where it has some; to itself elsewhere), head 1 only to the query itself."""

    causal = True

    def __init__(self, layers: int, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.blocks = torch.nn.ModuleList(_Block() for _ in range(layers))
        self.hook_out = HookPoint()
        self.name_hook_points()

    def forward(self, tokens, keys=None):
        b, t = tokens.shape
        own = torch.eye(t).expand(b, t, t)
        for layer, block in enumerate(self.blocks):
            k = keys[:, layer, :t, :t].float()
            reads = torch.where(k.any(-1, keepdim=True), -0.5 * k, own)  # signed, as linear's
            block.attn.hook_pattern(torch.stack([reads, own], dim=1))
        return self.hook_out(torch.zeros(b, t, self.vocab))


@pytest.mark.parametrize("name", ["mws", "histogram"])
def test_a_head_on_the_correct_keys_scores_one(name):
    cfg = small(name)
    model = KeyReader(cfg.model.layers, tasks.get(name).vocab(cfg))
    res = attention.run(Inputs({0: model, 5: model}, cfg.data, config=cfg), n=16).numbers
    assert res["groups"] == ["correct"] and "lines" not in res
    shares = res["steps"][5]["random"]["correct"]
    with_keys = [l for l in range(cfg.model.layers) if shares[l][0] is not None]
    # mws: the last layer has correct keys; histogram: both of its two layers
    assert with_keys == ([0] if name == "mws" else [0, 1])
    for l in with_keys:
        assert shares[l] == [pytest.approx(1.0), pytest.approx(0.0)]
        assert 0 < res["chance"]["correct"][l] < 0.5
    assert res["steps"][5]["correct_heads"] == [f"{l}:0" for l in with_keys]
    assert set(res["across"]) == {0, 5}
    text = " ".join(b.text for b in attention.render(res) if isinstance(b, attention.Text))
    assert "correct-key heads: " + ", ".join(f"{l}:0" for l in with_keys) in text


def test_a_heads_share_is_the_follow_ups_attention_progress():
    """One head: its share is the layer's attention progress (`Task.progress`, prog_attn_l0)."""
    cfg = apply_overrides(small("mws"), ["model.heads=1"])
    task = tasks.get("mws")
    torch.manual_seed(0)
    model = task.build_model(cfg)
    inputs = Inputs({3: model}, cfg.data, config=cfg)
    res = attention.run(inputs, n=32).numbers
    progress = task.progress(model, inputs.batch(32, 0), cfg)
    assert res["steps"][3]["random"]["correct"][0][0] == pytest.approx(
        progress["prog_attn_l0"], rel=1e-5
    )


def test_matrix_options_are_refused_on_sequences():
    with pytest.raises(ValueError, match="matrices only"):
        attention.check({"lines": (1,)}, small("mws"))
    assert attention.unsupported(small("mws")) is None
