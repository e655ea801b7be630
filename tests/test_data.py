import math

import pytest
import torch

from abrupt.config import DataConfig
from abrupt.data import (
    MASK_ID,
    VOCAB_SIZE,
    VocabularyRangeError,
    generator,
    id_to_value,
    make_batch,
    sample_batch,
    sample_matrices,
    value_to_id,
)


def test_token_ids_of_the_spec():
    x = torch.tensor([-10.0, -9.99, -1.0, -0.01, 0.0, 0.01, 0.44, -0.24, 1.0, 9.99, 10.0])
    ids = value_to_id(x)
    assert ids.tolist() == [1, 2, 901, 1000, 1001, 1002, 1045, 977, 1101, 2000, 2001]
    assert ids.max().item() == VOCAB_SIZE - 1


def test_round_trip_on_the_grid():
    grid = torch.arange(-1000, 1001).double() / 100
    ids = value_to_id(grid)
    assert ids.tolist() == list(range(1, 2002))
    torch.testing.assert_close(id_to_value(ids).double(), grid, atol=1e-6, rtol=0)


def test_rounding_to_nearest_hundredth():
    assert value_to_id(torch.tensor([0.444, 0.446, -0.446])).tolist() == [1045, 1046, 956]


def test_out_of_vocabulary_is_an_error_or_a_clip():
    with pytest.raises(VocabularyRangeError, match="10.02"):
        value_to_id(torch.tensor([0.5, 10.02]))
    assert value_to_id(torch.tensor([10.02, -25.0]), clip=True).tolist() == [2001, 1]
    # 10.004 rounds to 10.00: inside
    assert value_to_id(torch.tensor([10.004])).tolist() == [2001]


def test_mask_id_has_no_value():
    with pytest.raises(ValueError):
        id_to_value(torch.tensor([MASK_ID]))


def test_batch_layout_row_major_and_masking():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 2, 3) / 10  # 0.0 .. 0.5
    mask = torch.tensor([[False, True, False, False, False, True]])
    b = make_batch(x, mask)
    assert b.tokens.tolist() == [[1001, MASK_ID, 1021, 1031, 1041, MASK_ID]]
    torch.testing.assert_close(b.target, torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]))


def test_sampler_rank_and_distribution():
    cfg = DataConfig(m=7, n=7, rank=2)
    x = sample_matrices(cfg, 2000, generator(0)).double()
    ranks = torch.linalg.matrix_rank(x, rtol=1e-5)  # float32 products
    assert (ranks == 2).all()
    # E[X^2] = r * E[u^2] E[v^2] = 2 * (1/3)^2 = 2/9 for uniform[-1, 1] factors
    assert abs(x.pow(2).mean().item() - 2 / 9) < 0.01
    assert x.abs().max().item() <= 2.0
    # entries of one row are uncorrelated
    assert abs((x[:, :, 0] * x[:, :, 1]).mean().item()) < 0.01


@pytest.mark.parametrize(
    "dist,kw,second_moment",
    [
        ("gaussian", {"sigma": 0.5}, 2 * 0.25**2),
        ("laplace", {"scale": 0.25}, 2 * (2 * 0.25**2) ** 2),
        ("uniform", {"low": 0.0, "high": 1.0}, 2 * (1 / 3) ** 2 + 2 * 1 * (1 / 4) ** 2),
    ],
)
def test_other_factor_distributions(dist, kw, second_moment):
    cfg = DataConfig(distribution=dist, **kw)
    x = sample_matrices(cfg, 20000, generator(1)).double()
    assert math.isclose(x.pow(2).mean().item(), second_moment, rel_tol=0.05)


def test_mask_rate_and_seeds():
    cfg = DataConfig(p_mask=0.3)
    a = sample_batch(cfg, 4000, generator(5))
    assert abs(a.mask.float().mean().item() - 0.3) < 0.005
    assert ((a.tokens == MASK_ID) == a.mask).all()
    b = sample_batch(cfg, 4000, generator(5))
    c = sample_batch(cfg, 4000, generator(6))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.target, b.target)
    assert not torch.equal(a.tokens, c.tokens)


def test_p_mask_zero_hides_nothing():
    b = sample_batch(DataConfig(p_mask=0.0), 100, generator(0))
    assert not b.mask.any()
