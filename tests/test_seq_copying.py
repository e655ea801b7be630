"""copying on sequence tasks: the follow-up's repetition bias, with stand-in decoders whose
outputs are known (one copies its input, one repeats a token)."""

import types

import pytest
import torch

from abrupt import tasks
from abrupt.analysis import copying
from abrupt.analysis.common import Inputs
from abrupt.analysis.registry import missing
from abrupt.config import apply_overrides, preset
from abrupt.hooks import HookedModule, HookPoint


def mws():
    return apply_overrides(preset("mws"), ["task.length=6", "model.width=16", "model.mlp=32"])


class Writer(HookedModule):
    """Teacher-forced logits (B, L - 1, V) that put each output query's argmax on a chosen token:
    the input token at the output's index (`copy`) or token 1 always (`repeat`)."""

    def __init__(self, vocab: int, out_start: int, how: str) -> None:
        super().__init__()
        self.vocab, self.q0, self.how = vocab, out_start - 1, how
        self.blocks = torch.nn.ModuleList()
        self.hook_out = HookPoint()
        self.name_hook_points()

    def forward(self, tokens, keys=None):
        b, t = tokens.shape
        want = torch.ones(b, t, dtype=torch.long)
        if self.how == "copy":
            want[:, self.q0 :] = tokens[:, : t - self.q0]
        return self.hook_out(10.0 * torch.nn.functional.one_hot(want, self.vocab).float())


def test_a_copying_model_copies_and_a_repeating_one_repeats():
    cfg = mws()
    task = tasks.get("mws")
    out_start = cfg.task.length + 1
    models = {1: Writer(task.vocab(cfg), out_start, "repeat")}
    models[2] = Writer(task.vocab(cfg), out_start, "copy")
    res = copying.run(Inputs(models, cfg.data, config=cfg), n=64).numbers
    assert "rows" not in res  # no matrices, so no substitution (Table 1)
    repeat, copy = res["outputs"]
    assert repeat["repeat"] == 1.0 and copy["copy"] == 1.0
    x = task.seeded_batch(cfg, 64, 0).tokens
    inputs, outputs = x[:, : cfg.task.length], x[:, out_start:]
    # the copier repeats as often as its inputs do; the data's shares are the correct outputs'
    assert copy["repeat"] == pytest.approx((inputs[:, 1:] == inputs[:, :-1]).float().mean().item())
    assert (
        copy["data_repeat"]
        == repeat["data_repeat"]
        == pytest.approx((outputs[:, 1:] == outputs[:, :-1]).float().mean().item())
    )
    # y_1 = x_1: at least one output in length copies its input
    assert copy["data_copy"] >= 1 / cfg.task.length
    assert res["headline"] == "loss" and copy["metrics"]["acc"] == pytest.approx(copy["data_copy"])
    text = copying.render(res)[0].text
    assert "the follow-up's repetition bias" in text and "unlike" not in text


def test_copying_needs_one_of_substitute_and_outputs():
    assert missing(copying, mws()) is None
    assert missing(copying, preset("tiny")) is None
    needs_matrices = types.SimpleNamespace(NEEDS_ANY=frozenset({"substitute", "matrices"}))
    assert missing(needs_matrices, mws()) == (
        "task mws provides none of matrices, substitute (one is needed; tasks/base.py)"
    )
