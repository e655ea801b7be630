"""`abrupt export RUN --to hf DIR`: transformers loads what it writes and predicts as abrupt does
(to 1e-5), the README's own lines included; what has no counterpart is refused in one line."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from abrupt.cli import main
from abrupt.data import generator, sample_batch
from abrupt.run.checkpoints import load_run
from abrupt.tasks import get as get_task

transformers = pytest.importorskip("transformers")
from hf_oracle import hf_state_dict  # noqa: E402  (imports transformers lazily, after the skip)

QUICK = [
    "--quiet",
    "train.batch_size=16",
    "train.eval_size=32",
    "train.log_every=2",
    "train.ckpt_every=4",
    "train.ckpt_log_points=2",
]


def train(out, preset: str, *overrides: str, steps: int = 4):
    assert (
        main(
            [
                "train",
                "--preset",
                preset,
                "--out",
                str(out),
                f"train.steps={steps}",
                *QUICK,
                *overrides,
            ]
        )
        == 0
    )
    return out


def export(run, out, *flags: str) -> int:
    return main(["export", str(run), *flags, "--to", "hf", str(out)])


def readme_code(directory) -> str:
    """The code block of an export's README.md, with `DIR` standing for the directory."""
    text = (directory / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_bert_export_loads_as_bertmodel_and_predicts_as_abrupt(tmp_path, one_thread):
    run = train(tmp_path / "run", "tiny", steps=6)
    assert export(run, tmp_path / "hf") == 0
    out = tmp_path / "hf"
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "readout.safetensors",
        "README.md",
    }
    cfg, model, ckpt = load_run(run)
    assert ckpt.step == 6
    tokens = sample_batch(cfg.data, 16, generator(3)).tokens
    ours = model.predict(tokens)
    # the README's three lines, as a reader runs them
    scope = {"DIR": str(out), "tokens": tokens}
    with torch.no_grad():
        exec(readme_code(out), scope)
    torch.testing.assert_close(scope["pred"], ours, rtol=0, atol=1e-5)
    assert scope["pred"].shape == tokens.shape
    bert = transformers.BertModel.from_pretrained(out)  # the plain call loads too (adds a pooler)
    assert not bert.training and bert.config.type_vocab_size == 1
    # the weights are those of the independent mapping of tests/hf_oracle.py, MASK's row zero
    written = load_file(out / "model.safetensors")
    for name, tensor in hf_state_dict(model).items():
        assert torch.equal(written[name], tensor), name
    assert not written["embeddings.word_embeddings.weight"][0].any()
    readout = load_file(out / "readout.safetensors")
    assert readout["weight"].shape == (1, cfg.model.width) and readout["bias"].shape == (1,)
    # an earlier step, into an existing empty directory
    (tmp_path / "empty").mkdir()
    assert export(run, tmp_path / "empty", "--step", "4") == 0
    early = load_file(tmp_path / "empty" / "model.safetensors")
    assert not torch.equal(
        early["encoder.layer.0.attention.self.query.weight"],
        written["encoder.layer.0.attention.self.query.weight"],
    )


def test_the_temperature_is_folded_and_the_bias_exports_once_switched_off(tmp_path, one_thread):
    run = train(
        tmp_path / "run",
        "tiny",
        "model.attn_temperature=2.0",
        "attn_bias.factor=3.0",
        "attn_bias.until=2",
    )
    assert export(run, tmp_path / "on", "--step", "1") == 2  # the bias acts at step 1
    assert not (tmp_path / "on").exists()
    assert export(run, tmp_path / "hf") == 0  # step 4: the bias is off
    cfg, model, _ = load_run(run)
    assert not model.attention_edits
    tokens = sample_batch(cfg.data, 8, generator(1)).tokens
    scope = {"DIR": str(tmp_path / "hf"), "tokens": tokens}
    with torch.no_grad():
        exec(readme_code(tmp_path / "hf"), scope)
    torch.testing.assert_close(scope["pred"], model.predict(tokens), rtol=0, atol=1e-5)


def test_gpt_variant_exports_to_gpt2lmheadmodel(tmp_path, one_thread):
    run = train(
        tmp_path / "run",
        "tiny",
        "model.arch=gpt",
        "model.ln_eps=1e-5",
        "model.attn_temperature=0.5",
        "data.m=3",
        "data.n=3",
    )
    assert export(run, tmp_path / "hf") == 0
    cfg, model, _ = load_run(run)
    gpt2 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert gpt2.lm_head.weight.data_ptr() != gpt2.transformer.wte.weight.data_ptr()  # untied
    batch = get_task("matrix").batch(cfg, 8, generator(2))
    ids = get_task("matrix").inputs(model, batch)[0][0]
    with torch.no_grad():
        torch.testing.assert_close(gpt2(input_ids=ids).logits, model(ids), rtol=0, atol=1e-5)
        t = batch.tokens.shape[1]
        scope = {"DIR": str(tmp_path / "hf"), "ids": model.complete(batch.tokens)[:, : t + 1]}
        exec(readme_code(tmp_path / "hf"), scope)  # the README's greedy completion
    assert torch.equal(scope["full"], model.complete(batch.tokens)[:, t + 1 :])


def test_a_softmax_sequence_decoder_exports_and_linear_attention_is_refused(
    tmp_path, one_thread, capsys
):
    soft = train(
        tmp_path / "soft", "mws", "model.attention=softmax", "model.width=32", "model.mlp=64"
    )
    assert export(soft, tmp_path / "hf") == 0
    cfg, model, _ = load_run(soft)
    batch = get_task("mws").batch(cfg, 8, generator(0))
    scope = {"DIR": str(tmp_path / "hf"), "ids": batch.tokens[:, :-1]}
    with torch.no_grad():
        exec(readme_code(tmp_path / "hf"), scope)
        logits = model(batch.tokens[:, :-1])
    assert torch.equal(scope["next_token"], logits.argmax(-1))
    gpt2 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(
            gpt2(input_ids=batch.tokens[:, :-1]).logits, logits, rtol=0, atol=1e-5
        )
    capsys.readouterr()
    linear = train(tmp_path / "linear", "mws", "model.width=32", "model.mlp=64", steps=1)
    assert export(linear, tmp_path / "no") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "linear attention" in err and "model.attention" in err
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    "case,message",
    [
        ("no run", "not a run directory"),
        ("no step", "no checkpoint at step 3"),
        ("not empty", "exists and is not an empty directory"),
        ("target", "unknown target 'onnx'"),
        ("pre-LN", "model.norm=pre"),
        ("scale", "attn_scale.factor"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, case, message):
    extra = {
        "pre-LN": ["model.norm=pre"],
        "scale": [
            "task.name=mws",
            "model.arch=gpt",
            "model.attention=softmax",
            "attn_scale.factor=2",
        ],
    }.get(case, [])
    run = train(tmp_path / "run", "tiny", *extra, steps=1)
    out = tmp_path / "hf"
    if case == "not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    capsys.readouterr()
    args = {
        "no run": ["export", str(tmp_path / "nothing"), "--to", "hf", str(out)],
        "no step": ["export", str(run), "--step", "3", "--to", "hf", str(out)],
        "target": ["export", str(run), "--to", "onnx", str(out)],
    }.get(case, ["export", str(run), "--to", "hf", str(out)])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("abrupt: error: ") and err.count("\n") == 1 and message in err, err
    assert (out / "keep.txt").read_text() == "mine" if case == "not empty" else not out.exists()


def test_without_transformers_it_names_the_extra_and_an_interrupt_names_the_command(
    tmp_path, capsys, monkeypatch
):
    import argparse
    import sys

    from abrupt.cli import _interrupt_hint

    run = train(tmp_path / "run", "tiny", steps=1)
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    assert export(run, tmp_path / "hf") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'abrupt[hf]'" in err
    assert not (tmp_path / "hf").exists()
    assert "abrupt export" in _interrupt_hint(argparse.Namespace(command="export"))
