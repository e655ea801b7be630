"""The probe and embeddings analyses on sequence tasks and on the GPT variant on matrices: hand-set
models whose answers are known."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from abrupt.analysis import embeddings, probe
from abrupt.analysis.common import Inputs
from abrupt.config import apply_overrides, preset
from abrupt.hooks import act_name
from abrupt.models.registry import build_model
from abrupt.tasks import get


def seq_config(task: str, *extra: str):
    return apply_overrides(
        preset(task), ["model.width=16", "model.mlp=32", "model.heads=2", *extra]
    )


class Knower(torch.nn.Module):
    """A stand-in one-block model of an mws run: its embedding holds the token read (one-hot) and
    its block's output the token that follows (one-hot; the task's answer at the last position,
    whose next token the pass does not read), so that a linear probe finds the answer after the
    block and not before."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg, self.task = cfg, get(cfg.task.name)
        self.blocks = [None]
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the analysis reads the device from it

    def run_with_cache(self, tokens, names, keys=None):
        vocab = self.task.vocab(self.cfg)
        whole = self.task.answer(self.cfg, torch.cat([tokens, tokens[:, -1:]], dim=1))
        cache = {
            act_name("embed"): F.one_hot(tokens, vocab).float(),
            act_name("resid_post", 0): F.one_hot(whole[:, 1:], vocab).float(),
        }
        return None, {n: cache[n] for n in names}


def test_probe_finds_the_answer_where_the_model_holds_it():
    cfg = seq_config("mws")
    inputs = Inputs({5: Knower(cfg)}, cfg.data, config=cfg)
    rows = probe.run(inputs, n=256).numbers["rows"]
    embed, block = rows
    assert (embed["layer"], block["layer"]) == (0, 1)
    # the next output is in the block's output exactly, not in the token read
    assert block["answer_acc"] == 1.0 and embed["answer_acc"] < 0.2
    # chance: the held-out share of the fitting set's most common of 17 residues
    assert 1 / 17 - 0.03 < block["answer_chance"] < 1 / 17 + 0.03
    assert set(block) == {
        "step",
        "layer",
        *[f"{t}_{s}" for t in ("answer", "key_first", "key_last") for s in ("acc", "chance")],
    }


@pytest.mark.parametrize("task", ["mws", "histogram"])
def test_probe_and_embeddings_run_on_a_random_sequence_model(task, tmp_path, one_thread):
    cfg = seq_config(task)
    t = get(task)
    models = {s: t.build_model(apply_overrides(cfg, [f"seed={s}"])) for s in (1, 2)}
    inputs = Inputs(models, cfg.data, config=cfg)
    result = probe.run(inputs, n=64)
    layers = cfg.model.layers
    assert len(result.numbers["rows"]) == 2 * (layers + 1)
    assert probe.plot(result, tmp_path) and probe.render(result.numbers)
    emb = embeddings.run(inputs, n=32, permutations=2)
    e = emb.numbers
    # the inputs and the output-predicting positions of the L - 1 read: 16 each of 32 in mws
    assert e["chance"]["segment"] == pytest.approx(15 / 31)
    assert ("token_circle" in e["steps"][2]) == (task == "mws")  # histogram has no modulus
    assert set(e["permutation"]["original"]) == {"loss", "acc", "seq_acc"}
    assert embeddings.plot(emb, tmp_path) and embeddings.render(e)


def test_embeddings_find_a_residue_circle_and_the_segments():
    """Token r of mws at angle 2 pi 3 r / 17 in two directions, the positions of each segment
    at one point of their own: the circle holds (at frequency 3 or its mirror 14) and purity by
    segment is 1. Permuting positions mixes the segments, and changes the metrics; permuting
    positions that are all equal changes none."""
    cfg = seq_config("mws")
    task = get("mws")
    model = task.build_model(cfg)
    ids, numbers = task.token_labels(cfg)
    angle = 2 * np.pi * 3 * numbers / 17
    segment = torch.as_tensor(task.position_labels(cfg)["segment"], dtype=torch.float32)
    with torch.no_grad():
        model.tok_embed.weight.zero_()
        model.tok_embed.weight[ids, 0] = torch.as_tensor(np.cos(angle), dtype=torch.float32)
        model.tok_embed.weight[ids, 1] = torch.as_tensor(np.sin(angle), dtype=torch.float32)
        model.pos_embed.weight.zero_()
        model.pos_embed.weight[: len(segment), 2] = segment
    inputs = Inputs({9: model}, cfg.data, config=cfg)
    e = embeddings.run(inputs, n=32, permutations=2).numbers
    c = e["steps"][9]["token_circle"]
    assert c["holds"] and c["order"] == 1.0 and c["frequency"] in (3, 14)
    # not 1 exactly: residue 0 is no input, so the 16 tokens' centre is off the circle's by 1/16
    assert c["r"] > 0.99 and c["r_chance"] < 0.9
    assert e["steps"][9]["position_knn_purity_segment"] == 1.0
    assert e["permutation"]["original"] != e["permutation"]["permuted_mean"]
    flat = task.build_model(cfg)
    with torch.no_grad():
        flat.pos_embed.weight.zero_()
    batch = task.seeded_batch(cfg, 32, 1)
    p = embeddings.permutation_test(task, (9, flat), batch, 0, len(segment), 2)
    assert p["original"] == p["permuted_mean"]


def test_circle_is_not_found_in_shuffled_tokens():
    numbers = np.arange(1, 17, dtype=float)
    angle = 2 * np.pi * numbers / 17
    xy = np.stack([np.cos(angle), np.sin(angle)], 1)
    assert embeddings.circle(xy, numbers, 17, 0)["holds"]
    scrambled = xy[np.random.default_rng(1).permutation(16)]
    c = embeddings.circle(scrambled, numbers, 17, 0)
    assert not c["holds"] and c["order"] < 0.5
    # addition's digits mod 10 at frequency 3: found there (f = 5 is no candidate: sharing a
    # factor with 10, it puts the digits at two angles)
    digits = np.arange(10, dtype=float)
    xy = np.stack([np.cos(2 * np.pi * 3 * digits / 10), np.sin(2 * np.pi * 3 * digits / 10)], 1)
    c = embeddings.circle(xy, digits, 10, 0)
    assert c["holds"] and c["frequency"] in (3, 7) and c["r"] == pytest.approx(1.0)


def test_probe_and_embeddings_on_the_gpt_variant_read_its_masked_matrix(one_thread):
    cfg = apply_overrides(preset("tiny"), ["model.arch=gpt", "data.m=3", "data.n=3", "data.rank=1"])
    model = build_model(cfg.model, 9, seed=0, cols=3)
    inputs = Inputs({1: model}, cfg.data, config=cfg)
    rows = probe.run(inputs, n=32).numbers["rows"]
    assert len(rows) == cfg.model.layers + 1 and {
        "row_abs_cos",
        "value_masked_r2",
        "value_observed_r2",
        "singular_abs_cos",
    } <= set(rows[-1])
    before = model.pos_embed.weight.detach().clone()
    e = embeddings.run(inputs, n=8, permutations=2).numbers
    assert e["chance"] == {"column": 2 / 8, "row": 2 / 8}  # 9 positions of its 18
    assert "loss_mask" in e["permutation"]["original"] and "token_circle" not in e["steps"][1]
    assert torch.equal(model.pos_embed.weight, before)  # the permutation is undone
