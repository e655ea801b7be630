"""Low-rank matrices, masks and the paper's tokenization.

A batch is X = U V^T (U: m x r, V: n x r, i.i.d. factors), each entry hidden independently with
probability p_mask, flattened row-major (position p = n*i + j). Tokens: MASK = 0, value x ->
1 + round(100 x) + 1000, so -10.00 .. 10.00 map to ids 1 .. 2001. Targets are the rounded matrix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .config import VOCAB_MAX, DataConfig

MASK_ID = 0
_STEPS = int(round(VOCAB_MAX * 100))  # 1000 hundredths either side of 0
_OFFSET = MASK_ID + 1 + _STEPS  # id of the value 0.00 (1001)
VOCAB_SIZE = _OFFSET + _STEPS + 1  # MASK + 2001 value tokens (2002)


class VocabularyRangeError(ValueError):
    """An entry lies outside the token vocabulary's [-10, 10]."""


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, m*n) int64; MASK_ID where hidden
    target: torch.Tensor  # (B, m*n) float32, the rounded full matrix
    mask: torch.Tensor  # (B, m*n) bool, True where hidden
    matrix: torch.Tensor  # (B, m, n) float32, unrounded X
    # (B, m*n) bool, True outside an example's own size (a size mixture)
    pad: torch.Tensor | None = None
    size: torch.Tensor | None = None  # (B,) int64, index into DataConfig.size_list()

    def to(self, device: torch.device | str) -> "Batch":
        moved = {
            k: None if v is None else v.to(device) for k, v in dataclasses.asdict(self).items()
        }
        return Batch(**moved)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, rows: slice) -> "Batch":
        return Batch(
            **{k: None if v is None else v[rows] for k, v in dataclasses.asdict(self).items()}
        )


def hundredths(x: torch.Tensor) -> torch.Tensor:
    """Values rounded to the vocabulary's 0.01 grid, as whole hundredths (int64): the one rounding
    that both a value's token and its target come from. In float64, so that a float32 value just
    below a tie (2.675 is 2.67499995 in float32) rounds as the number it is, not as its product."""
    return torch.round(x.double() * 100).long()


def round_values(x: torch.Tensor) -> torch.Tensor:
    """Values rounded to the vocabulary's 0.01 grid (float32): the value its token stands for."""
    return (hundredths(x).double() / 100).float()


def value_to_id(x: torch.Tensor, clip: bool = False, check: bool = True) -> torch.Tensor:
    """Token ids of values; raises VocabularyRangeError outside [-10, 10] unless clip=True.
    `check=False` skips that test (a device-to-host sync), for data whose range is validated."""
    hundredths_ = hundredths(x)
    if clip:
        hundredths_ = hundredths_.clamp(-_STEPS, _STEPS)
    elif check and hundredths_.numel() and hundredths_.abs().max().item() > _STEPS:
        worst = x.flatten()[hundredths_.abs().flatten().argmax()].item()
        raise VocabularyRangeError(
            f"value {worst:.4g} is outside the vocabulary [-{VOCAB_MAX:g}, {VOCAB_MAX:g}]; "
            "narrow the factor distribution or set data.clip=true"
        )
    return hundredths_ + _OFFSET


def id_to_value(ids: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Values of value-token ids; MASK_ID is rejected (it has no value). `check=False` skips that
    test (two device-to-host syncs), for ids that are value ids by construction."""
    if check and ((ids < 1).any() or (ids >= VOCAB_SIZE).any()):
        raise ValueError(f"token ids must be value tokens in [1, {VOCAB_SIZE - 1}]")
    return (ids - _OFFSET).double().div(100).float()


def sample_factors(
    cfg: DataConfig, batch: int, rows: int, gen: torch.Generator, shift: float = 0.0
) -> torch.Tensor:
    shape = (batch, rows, cfg.rank)
    if cfg.distribution == "uniform":
        # `shift` (a curriculum) is added to the bounds so that shift 0 draws bit-identical factors
        return (cfg.low + shift) + (cfg.high - cfg.low) * torch.rand(
            shape, generator=gen, device=gen.device
        )
    if cfg.distribution == "signed":
        # zero mean (so the plateau's high-order saddle stays) but |factor| >= mag_low (better
        # conditioned)
        magnitude = cfg.mag_low + (cfg.mag_high - cfg.mag_low) * torch.rand(
            shape, generator=gen, device=gen.device
        )
        sign = torch.rand(shape, generator=gen, device=gen.device) < 0.5
        return torch.where(sign, -magnitude, magnitude) + shift
    if cfg.distribution == "gaussian":
        return cfg.sigma * torch.randn(shape, generator=gen, device=gen.device)
    if cfg.distribution == "laplace":
        # Inverse CDF on our own generator: torch.distributions cannot take one.
        u = torch.rand(shape, generator=gen, device=gen.device) - 0.5
        u = u.clamp(-0.5 + 1e-7, 0.5 - 1e-7)
        return -cfg.scale * torch.sign(u) * torch.log1p(-2 * u.abs())
    raise ValueError(f"unknown distribution '{cfg.distribution}'")


def sample_matrices(
    cfg: DataConfig, batch: int, gen: torch.Generator, shift: float = 0.0
) -> torch.Tensor:
    u = sample_factors(cfg, batch, cfg.m, gen, shift)
    v = sample_factors(cfg, batch, cfg.n, gen, shift)
    return u @ v.transpose(1, 2)


def sample_mask(cfg: DataConfig, batch: int, gen: torch.Generator) -> torch.Tensor:
    """(B, m*n) bool, True = hidden, each entry independently with probability p_mask."""
    return torch.rand((batch, cfg.m * cfg.n), generator=gen, device=gen.device) < cfg.p_mask


def make_batch(
    matrix: torch.Tensor, mask: torch.Tensor, clip: bool = False, check: bool = True
) -> Batch:
    """Tokenize given matrices (B, m, n) under a given hidden-mask (B, m*n)."""
    flat = matrix.reshape(matrix.shape[0], -1)
    if clip:
        flat = flat.clamp(-VOCAB_MAX, VOCAB_MAX)
    ids = value_to_id(flat, clip=clip, check=check)
    tokens = torch.where(mask, torch.full_like(ids, MASK_ID), ids)
    return Batch(tokens=tokens, target=round_values(flat), mask=mask, matrix=matrix.float())


def sample_batch(
    cfg: DataConfig, batch: int, gen: torch.Generator, shift: float = 0.0, check: bool = True
) -> Batch:
    """A batch drawn on `gen`'s device (a CUDA generator samples on the GPU: no host copy)."""
    matrix = sample_matrices(cfg, batch, gen, shift)
    mask = sample_mask(cfg, batch, gen)
    if not cfg.sizes.strip():
        return make_batch(matrix, mask, clip=cfg.clip, check=check)
    return _mixture(cfg, matrix, mask, check)


def _mixture(cfg: DataConfig, matrix: torch.Tensor, mask: torch.Tensor, check: bool) -> Batch:
    """Equal shares of each size (in turn along the batch). A smaller r x c matrix sits in the
    top-left corner of the m x n grid, so an entry (i, j) has the same position, hence the same
    position embedding, at every size; the rest of the grid is padding, which attention ignores
    and the loss excludes. The r x c corner of U V^T is itself a rank-r product of the same law."""
    sizes = cfg.size_list()
    b = matrix.shape[0]
    size = torch.arange(b, device=matrix.device) % len(sizes)
    rows = torch.tensor([r for r, _ in sizes], device=matrix.device)[size]
    cols = torch.tensor([c for _, c in sizes], device=matrix.device)[size]
    i = torch.arange(cfg.m, device=matrix.device)[None, :, None]
    j = torch.arange(cfg.n, device=matrix.device)[None, None, :]
    pad = ((i >= rows[:, None, None]) | (j >= cols[:, None, None])).reshape(b, -1)
    matrix = matrix.masked_fill(pad.reshape(matrix.shape), 0.0)
    out = make_batch(matrix, mask & ~pad, clip=cfg.clip, check=check)
    return dataclasses.replace(out, pad=pad, size=size)


def seeded_batch(cfg: DataConfig, count: int, seed: int) -> Batch:
    """The one seeded batch every analysis and baseline uses: matrices then masks from one stream
    seeded by `seed`, so batches that differ only in p_mask share their matrices and have nested
    masks. Clipping follows `cfg.clip`: pass a copy with clip=True to evaluate out of
    distribution."""
    return sample_batch(cfg, count, generator(seed))


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
