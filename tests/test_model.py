import pytest
import torch

from abrupt.config import DataConfig, ModelConfig
from abrupt.data import MASK_ID, generator, sample_batch
from abrupt.models.bert import MatrixBert
from conftest import randomize

transformers = pytest.importorskip("transformers")
from hf_oracle import HFMatrixBert  # noqa: E402


def tokens(batch=6, seed=1):
    return sample_batch(DataConfig(), batch, generator(seed)).tokens


@pytest.mark.parametrize(
    "hidden,layers,heads,mlp", [(32, 2, 4, 64), (48, 3, 2, 96), (64, 1, 8, 256)]
)
def test_equal_to_huggingface_bert(hidden, layers, heads, mlp):
    model = randomize(
        MatrixBert(ModelConfig(width=hidden, layers=layers, heads=heads, mlp=mlp), 49), seed=hidden
    ).eval()
    ref = HFMatrixBert(model).eval()
    x = tokens()
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
        _, cache = model.run_with_cache(x, names=lambda n: n.endswith("hook_pattern"))
        exact = model.run_with_cache(x, names=lambda n: n.endswith("hook_pattern"))[0]
    assert ours.shape == (6, 49)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exact, theirs, atol=1e-5, rtol=1e-5)  # exact (materialised) path too
    assert len(cache) == layers


def test_mask_embedding_is_zero_and_frozen(small_model):
    assert small_model.tok_embed.weight[MASK_ID].abs().sum() == 0
    x = tokens(4)
    small_model(x).sum().backward()
    assert small_model.tok_embed.weight.grad[MASK_ID].abs().sum() == 0
    assert small_model.tok_embed.weight.grad.abs().sum() > 0


def test_init_scale():
    torch.manual_seed(0)
    m = MatrixBert(
        ModelConfig(width=256, layers=1, heads=4, mlp=512, init_std=0.02, pos_init_std=0.5), 49
    )
    assert abs(m.blocks[0].attn.q.weight.std().item() - 0.02) < 1e-3
    assert abs(m.pos_embed.weight.std().item() - 0.5) < 0.02
    assert m.blocks[0].attn.q.bias.abs().sum() == 0


def test_cache_shapes_and_names(small_model):
    x = tokens(3)
    out, cache = small_model.run_with_cache(x)
    assert set(cache) == set(small_model.hook_points())
    assert cache["blocks.0.attn.hook_pattern"].shape == (3, 4, 49, 49)
    assert cache["blocks.1.attn.hook_z"].shape == (3, 49, 4, 8)
    assert cache["blocks.1.hook_resid_post"].shape == (3, 49, 32)
    torch.testing.assert_close(cache["hook_out"], out)
    # patterns are probability distributions over keys
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(3, 4, 49))
    # post-LN: the input of a layer is the output of the one before
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])


def test_overwriting_a_hook_changes_output_as_expected(small_model):
    randomize(small_model)
    x = tokens(2)
    with torch.no_grad():
        clean, cache = small_model.run_with_cache(x)
        # Replacing an activation by itself changes nothing.
        with small_model.hooks([("blocks.0.hook_mlp_out", lambda a, h: a.clone())]):
            same = small_model(x)
        torch.testing.assert_close(same, clean)
        # The read-out is linear: overwriting the final residual with zeros yields the read-out
        # bias.
        with small_model.hooks([("blocks.1.hook_resid_post", lambda a, h: torch.zeros_like(a))]):
            zeroed = small_model(x)
        torch.testing.assert_close(zeroed, small_model.readout.bias.expand(2, 49))
        # A uniform attention pattern equals attention that averages all values.
        uniform = lambda p, h: torch.full_like(p, 1 / p.shape[-1])
        with small_model.hooks([("blocks.0.attn.hook_pattern", uniform)]):
            _, c2 = small_model.run_with_cache(
                x, names=["blocks.0.attn.hook_z", "blocks.0.attn.hook_v"]
            )
        v = c2["blocks.0.attn.hook_v"]  # (B, H, T, dh)
        expect = v.mean(dim=2, keepdim=True).expand_as(v).transpose(1, 2)
        torch.testing.assert_close(c2["blocks.0.attn.hook_z"], expect)
        # Hooks are removed afterwards.
        torch.testing.assert_close(small_model(x), clean)


def test_unknown_hook_name(small_model):
    with pytest.raises(KeyError, match="unknown hook point"):
        small_model.run_with_cache(tokens(1), names=["blocks.9.hook_resid_pre"])


def test_wrong_sequence_length(small_model):
    with pytest.raises(ValueError, match="length 1..49"):
        small_model(torch.ones(2, 50, dtype=torch.long))
