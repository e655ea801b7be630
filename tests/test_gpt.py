"""The GPT variant: vocabulary without collisions, parity with transformers.GPT2Model, training and
analyses through the CLI."""

import json

import pytest
import torch

from abrupt import tasks
from abrupt.cli import main
from abrupt.config import ModelConfig, apply_overrides, preset
from abrupt.data import generator, sample_batch
from abrupt.models import gpt
from abrupt.models.gpt import GPT_MASK, GPT_SEP, GPT_VOCAB, MatrixGPT
from hf_oracle import HFMatrixGPT


def test_no_value_the_vocabulary_admits_collides_with_a_special_token():
    values = (
        torch.arange(-1000, 1001, dtype=torch.float64) / 100
    )  # every value token: -10.00 ... 10.00
    ids = gpt.value_ids(values)
    assert ids.min() == 2 and ids.max() == GPT_VOCAB - 1 and len(set(ids.tolist())) == len(ids)
    assert not ((ids == GPT_MASK) | (ids == GPT_SEP)).any()
    torch.testing.assert_close(gpt.id_values(ids).double(), values, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt.value_ids(torch.tensor([10.01]))
    # the authors' scheme (x -> 1 + 100x + 200, MASK 0, SEP 404) collides just outside training
    # range
    authors = lambda x: round(1 + 100 * x + 200)  # noqa: E731
    assert authors(2.03) == 404 and authors(-2.01) == 0


def test_sequence_layout():
    cfg = apply_overrides(preset("tiny"), [])
    b = sample_batch(cfg.data, 3, generator(0))
    seq = gpt.sequence(b)
    t = b.tokens.shape[1]
    assert seq.shape == (3, 2 * t + 1) and (seq[:, t] == GPT_SEP).all()
    assert torch.equal(seq[:, :t], gpt.masked_prefix(b.tokens))
    assert ((seq[:, :t] == GPT_MASK) == b.mask).all()
    torch.testing.assert_close(gpt.id_values(seq[:, t + 1 :]), b.target)


@pytest.mark.parametrize("layers,heads,hidden", [(2, 2, 32), (1, 4, 16)])
def test_equals_transformers_gpt2(layers, heads, hidden):
    torch.manual_seed(0)
    model = MatrixGPT(
        ModelConfig(
            arch="gpt", width=hidden, layers=layers, heads=heads, mlp=4 * hidden, ln_eps=1e-5
        ),
        49,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # LayerNorms and biases away from their init too
    ref = HFMatrixGPT(model).eval()
    tokens = torch.randint(0, GPT_VOCAB, (3, 98))
    with torch.no_grad():
        ours, theirs = model(tokens), ref(tokens)
        exact, _ = model.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        exact, theirs, rtol=1e-5, atol=1e-5
    )  # the exact (hooked) attention path too


def test_greedy_completion_writes_values():
    torch.manual_seed(0)
    model = MatrixGPT(ModelConfig(arch="gpt", width=16, layers=1, heads=2, mlp=32, ln_eps=1e-5), 9)
    b = sample_batch(
        apply_overrides(preset("tiny"), ["data.m=3", "data.n=3", "data.rank=1"]).data,
        4,
        generator(0),
    )
    pred = model.predict(b.tokens)
    assert pred.shape == (4, 9) and (pred.abs() <= 10).all()


def test_train_analyze_and_report_the_gpt_through_the_cli(tmp_path, capsys):
    run = tmp_path / "gpt"
    assert (
        main(
            [
                "train",
                "--preset",
                "gpt_cpu",
                "--quiet",
                "--out",
                str(run),
                "train.steps=20",
                "train.log_every=10",
                "train.eval_size=64",
                "model.width=32",
                "model.mlp=64",
            ]
        )
        == 0
    )
    row = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert {"eval_loss", "eval_acc_obs", "eval_acc_mask", "eval_loss_obs", "eval_loss_mask"} <= set(
        row
    )
    assert row["eval_loss"] > 1  # a cross-entropy over 2003 tokens, not an MSE
    capsys.readouterr()
    assert (
        main(
            [
                "analyze",
                str(run),
                "--only",
                "attention,copying,probe,patching,embeddings",
                "--set",
                "copying.n=16",
                "--set",
                "attention.n=8",
                "--set",
                "patching.n=16",
                "--set",
                "probe.n=64",
                "--set",
                "embeddings.n=16",
            ]
        )
        == 0
    )
    assert "skipped" not in capsys.readouterr().out
    for name in ("attention", "copying", "patching", "probe", "embeddings"):
        assert (run / "analysis" / name / "results.json").exists()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "Not run on this run" not in page and all(
        f'id="{name}"' in page for name in ("attention", "copying", "patching", "probe")
    )


def test_gpt_refuses_what_it_does_not_support():
    from abrupt.checks import validate_run
    from abrupt.config import ConfigError

    with pytest.raises(ConfigError, match="model.arch=bert only"):
        validate_run(apply_overrides(preset("gpt_cpu"), ["train.progress=true"]))
    with pytest.raises(ConfigError, match="model.arch: must be one of bert, gpt"):
        validate_run(apply_overrides(preset("tiny"), ["model.arch=rnn"]))


def random_gpt(seq_len: int, seed: int = 0) -> MatrixGPT:
    torch.manual_seed(seed)
    model = MatrixGPT(
        ModelConfig(arch="gpt", width=32, layers=2, heads=2, mlp=64, ln_eps=1e-5), seq_len
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # spread logits: no near-ties for rounding to flip
    return model


def test_cached_greedy_completion_writes_the_same_tokens_as_rerunning_the_sequence(one_thread):
    model = random_gpt(49)
    tokens = sample_batch(apply_overrides(preset("tiny"), []).data, 16, generator(3)).tokens
    fast, slow = model.complete(tokens), model.complete(tokens, cache=False)
    assert fast.shape == (16, 99) and torch.equal(fast, slow)
    assert (
        len(set(fast[:, 50:].flatten().tolist())) > 20
    )  # it writes many different values, not one
    torch.testing.assert_close(model.predict(tokens), gpt.id_values(slow[:, 50:]))
    # the logits of the cached passes are those of the full sequence, position by position
    seq = fast[:, :-1]
    kv = model.new_cache()
    with torch.no_grad():
        parts = [model(seq[:, :50], cache=kv)] + [
            model(seq[:, i : i + 1], cache=kv) for i in range(50, 98)
        ]
        # to float32 rounding: logits ~10, and one of 3 M differed by 1.2e-5 on an AVX512 CPU (the
        # cached passes multiply shorter matrices, so the kernels sum in another order)
        torch.testing.assert_close(torch.cat(parts, 1), model(seq), rtol=1e-5, atol=5e-5)


def test_analyses_on_the_gpt_give_the_same_numbers_with_and_without_the_cache(
    monkeypatch, one_thread
):
    """Hooks that act position by position (every analysis's) see the same activations either way:
    ablation (zero, uniform over the causal keys, whole-batch mean), copying, switching."""
    from abrupt.analysis import ablation, copying, switching
    from abrupt.analysis.common import Inputs

    data = apply_overrides(
        preset("tiny"), ["data.m=3", "data.n=3", "data.rank=1", "data.p_mask=0.4"]
    ).data
    inputs = Inputs({1: random_gpt(9, 1), 2: random_gpt(9, 2)}, data)
    complete = MatrixGPT.complete
    runs = []
    for cache in (True, False):
        monkeypatch.setattr(
            MatrixGPT,
            "complete",
            lambda self, tokens, cache_=True, c=cache: complete(self, tokens, c),
        )
        runs.append(
            [
                ablation.run(inputs, n=12).numbers,
                copying.run(inputs, n=12).numbers,
                switching.run(inputs, n=12, groups=("attention",)).numbers,
            ]
        )
    assert runs[0] == runs[1]
    chosen = runs[0][0]["steps"][2]["chosen"]
    assert len({round(v["loss_mask"], 6) for v in chosen.values()}) == 3  # the three modes differ


def test_uniform_ablation_of_the_gpt_attends_to_no_later_position():
    from abrupt.analysis import ablation

    model = random_gpt(9)
    tokens = torch.randint(2, GPT_VOCAB, (2, 18))
    name = "blocks.0.attn.hook_pattern"
    with torch.no_grad(), model.hooks(ablation.ablation_hooks([(0, 1)], "uniform", causal=True)):
        _, cache = model.run_with_cache(tokens, names=[name])
    expected = torch.ones(18, 18).tril()
    torch.testing.assert_close(
        cache[name][:, 1], (expected / expected.sum(-1, keepdim=True)).expand(2, 18, 18)
    )


def test_a_training_step_reads_nothing_back_from_the_device():
    # .item() and bool() of a tensor run aten._local_scalar_dense: on a GPU each is a host sync
    from torch.utils._python_dispatch import TorchDispatchMode

    class ScalarReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ScalarReads.count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    cfg = apply_overrides(preset("tiny"), ["model.arch=gpt"])
    model = MatrixGPT(cfg.model, cfg.data.m * cfg.data.n)
    batch = sample_batch(cfg.data, 8, generator(0), check=False)
    task = tasks.get("matrix")
    args, _ = task.inputs(model, batch)
    with ScalarReads():
        task.objective(model, model(*args), batch)["loss"].backward()
    assert ScalarReads.count == 0
