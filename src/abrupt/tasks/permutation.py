"""Permutation (Gopalani & Hu 2025, Sec. 4): apply a permutation given in context.

Sequence (L = 3n + 2): values v_1 .. v_n, SEP, p_1 .. p_n (a uniform permutation of 1..n), SEP,
then v_(p_1) .. v_(p_n). Tokens: SEP = 0, positions p as 1..n, values as n + (low..high), so
that no two kinds share an id (their code: values 17..32 for n = 16); vocabulary n + high + 1.
Correct keys (their two measures): the first layer's output query j reads p_j (position n + j),
the last layer reads v_(p_j) (position p_j - 1); one layer: the latter.
"""

from __future__ import annotations

import torch

from ..config import Config
from .sequence import SequenceTask, output_rows, randint


class Permutation(SequenceTask):
    name = "permutation"
    about = "permutation, the values reordered by a permutation given in context"

    def vocab(self, cfg: Config) -> int:
        return cfg.task.length + cfg.task.high + 1

    def sample(self, cfg: Config, count: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        k = cfg.task
        n = k.length
        values = randint(k.low, k.high, (count, n), gen) + n
        # uniform permutations, 0-based
        perm = torch.rand((count, n), generator=gen, device=gen.device).argsort(dim=1)
        sep = torch.zeros((count, 1), dtype=values.dtype, device=values.device)
        return self.answer(cfg, torch.cat([values, sep, perm + 1, sep, values], dim=1)), 2 * n + 2

    def answer(self, cfg, tokens):
        n = cfg.task.length
        perm = tokens[:, n + 1 : 2 * n + 1] - 1
        return torch.cat([tokens[:, : 2 * n + 2], tokens[:, :n].gather(1, perm)], dim=1)

    def value_tokens(self, cfg):
        numbers = torch.arange(cfg.task.low, cfg.task.high + 1)
        return numbers + cfg.task.length, numbers.numpy().astype(float)

    def key_map(self, tokens, out_start, cfg, layer, layers):
        n, t = cfg.task.length, tokens.shape[1] - 1
        j, key = output_rows(n, t, tokens.device)
        if layer == 0 and layers > 1:
            return (key == n + 1 + j).expand(len(tokens), -1, -1)
        if layer != layers - 1:
            return None
        source = tokens[:, n + 1 : 2 * n + 1] - 1  # (B, n): position of v_(p_j)
        return key[None] == source[:, :, None]


TASK = Permutation()
