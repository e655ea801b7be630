"""Hooks never write through: an in-place edit inside a hook acts as a replacement of the
activation and leaves the weights, the input tokens and tensors other hooks kept untouched, at
every hook point of both models (issue 17, item 2)."""

import pytest
import torch

from abrupt.config import ModelConfig
from abrupt.models.gpt import GPT_VOCAB
from abrupt.models.registry import build_model

T = 9  # 3x3 matrices


def tiny(arch: str):
    """A 2-layer model of `arch` with every parameter moved off its init (LayerNorms included)."""
    model = build_model(
        ModelConfig(arch=arch, width=16, layers=2, heads=2, mlp=32, ln_eps=1e-5), T, seed=0
    ).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def inputs(arch: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return (
        torch.randint(1, 2000, (3, T), generator=g)
        if arch == "bert"
        else torch.randint(0, GPT_VOCAB, (3, 2 * T), generator=g)
    )


def test_the_reported_case_a_zeroing_hook_on_pos_embed_keeps_the_weights():
    model = tiny("bert")
    before = model.pos_embed.weight.detach().clone()
    tokens = inputs("bert")
    with torch.no_grad(), model.hooks([("hook_pos_embed", lambda x, h: x.zero_())]):
        zeroed = model(tokens)
    assert torch.equal(model.pos_embed.weight, before)
    with torch.no_grad(), model.hooks([("hook_pos_embed", lambda x, h: torch.zeros_like(x))]):
        assert torch.equal(zeroed, model(tokens))  # the edit still took effect, for that pass


@pytest.mark.parametrize("arch", ["bert", "gpt"])
@pytest.mark.parametrize("grad", [False, True])
def test_in_place_edits_at_every_hook_point_write_through_to_nothing(arch, grad):
    model = tiny(arch)
    tokens = inputs(arch)
    given = tokens.clone()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        clean = model(tokens)
    points = list(model.hook_points())
    assert len(points) == 4 + 2 * 10
    for name in points:
        with torch.set_grad_enabled(grad):
            with model.hooks([(name, lambda x, h: x.mul_(0.5).add_(0.25))]):
                edited = model(tokens)
            with model.hooks([(name, lambda x, h: x * 0.5 + 0.25)]):
                replaced = model(tokens)
        torch.testing.assert_close(
            edited, replaced, rtol=0, atol=0, msg=f"{name}: in place != replacement"
        )
        assert not torch.allclose(edited, clean), f"{name}: the edit had no effect"
        for k, v in model.state_dict().items():
            assert torch.equal(v, weights[k]), f"{name}: in-place edit changed {k}"
        assert torch.equal(tokens, given), f"{name}: in-place edit changed the input tokens"


@pytest.mark.parametrize("arch", ["bert", "gpt"])
def test_a_kept_activation_is_never_edited_by_a_later_hook(arch):
    """A cache holds what flowed at its point: neither an in-place edit further on of the same
    tensor (resid_post of layer 0 flows on as resid_pre of layer 1) nor one attached after it at
    the same point changes it."""
    model = tiny(arch)
    tokens = inputs(arch)
    zero = lambda x, h: x.zero_()  # noqa: E731
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, names=["blocks.0.hook_resid_post", "hook_embed"])
        _, cache = model.run_with_cache(
            tokens,
            names=["blocks.0.hook_resid_post"],
            fwd_hooks=[("blocks.1.hook_resid_pre", zero)],
        )
        kept: dict[str, torch.Tensor] = {}
        with model.hooks([("hook_embed", lambda x, h: kept.update(x=x)), ("hook_embed", zero)]):
            model(tokens)
    torch.testing.assert_close(
        cache["blocks.0.hook_resid_post"], clean["blocks.0.hook_resid_post"], rtol=0, atol=0
    )
    torch.testing.assert_close(kept["x"], clean["hook_embed"], rtol=0, atol=0)


def test_hooks_are_detached_after_an_exception():
    model = tiny("bert")

    def boom(x, h):
        raise RuntimeError("boom")

    with (
        pytest.raises(RuntimeError, match="boom"),
        model.hooks([("hook_embed", boom), ("hook_out", boom)]),
    ):
        model(inputs("bert"))
    assert not any(p.active for p in model.hook_points().values())
