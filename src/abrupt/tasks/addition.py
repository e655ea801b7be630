"""Multi-digit addition with the sum written reversed (Gopalani & Hu 2025, Sec. 4).

Sequence (L = 3d + 3, d = `addition.digits`): the d digits of a (most significant first,
zero-padded), '+', those of b, '=', then the d + 1 digits of a + b least significant first. a
and b uniform in 1..10^d - 1 (as in their code). Tokens: digits 0..9, '+' = 10, '=' = 11;
vocabulary 12.
Correct keys (last layer): sum digit j reads the digits of a and b of place j and of place j - 1
(the carry's nearest source), where they exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config, ConfigError
from .sequence import SequenceTask, output_rows

PLUS, EQUALS = 10, 11


def digits(x: torch.Tensor, count: int) -> torch.Tensor:
    """(B,) non-negative integers -> (B, count) decimal digits, most significant first."""
    powers = 10 ** torch.arange(count - 1, -1, -1, device=x.device)
    return (x[:, None] // powers) % 10


@dataclass
class AdditionSettings:
    """The addition task's own setting (`task.digits` in an older config.json)."""

    #: digits of each operand (the sum is written reversed, digits + 1 long)
    digits: int = 4

    def check(self, cfg: Config) -> None:
        if not 1 <= self.digits <= 9:
            raise ConfigError(f"addition.digits: must be in [1, 9], got {self.digits}")


class Addition(SequenceTask):
    name = "addition"
    about = "addition of two integers, the sum written least significant digit first"
    settings = AdditionSettings

    def vocab(self, cfg: Config) -> int:
        return 12

    def sample(self, cfg: Config, count: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        d = cfg.addition.digits
        a, b = torch.randint(1, 10**d, (2, count), generator=gen, device=gen.device)
        plus = torch.full((count, 1), PLUS, dtype=a.dtype, device=a.device)
        equals = torch.full((count, 1), EQUALS, dtype=a.dtype, device=a.device)
        # the sum's places are written by `answer`, from the operands' digits
        sum_places = torch.zeros((count, d + 1), dtype=a.dtype, device=a.device)
        tokens = torch.cat([digits(a, d), plus, digits(b, d), equals, sum_places], dim=1)
        return self.answer(cfg, tokens), 2 * d + 2

    def answer(self, cfg, tokens):
        d = cfg.addition.digits
        powers = 10 ** torch.arange(d - 1, -1, -1, device=tokens.device)
        a = (tokens[:, :d] * powers).sum(1)
        b = (tokens[:, d + 1 : 2 * d + 1] * powers).sum(1)
        return torch.cat([tokens[:, : 2 * d + 2], digits(a + b, d + 1).flip(1)], dim=1)

    def value_tokens(self, cfg):
        ids = torch.arange(10)
        return ids, ids.numpy().astype(float)

    def free_positions(self, cfg):
        d = cfg.addition.digits
        return [*range(d), *range(d + 1, 2 * d + 1)]  # the digits of a and of b

    def token_modulus(self, cfg):
        return 10

    def key_map(self, tokens, out_start, cfg, layer, layers):
        if layer != layers - 1:
            return None
        d, t = cfg.addition.digits, tokens.shape[1] - 1
        j, key = output_rows(d + 1, t, tokens.device)
        # place p of a sits at position d - 1 - p, of b at 2d - p
        place = torch.where(key < d, d - 1 - key, 2 * d - key)
        operand = (key < d) | ((key > d) & (key <= 2 * d))
        m = operand & ((place == j) | (place == j - 1))
        return m.expand(len(tokens), -1, -1)


TASK = Addition()
