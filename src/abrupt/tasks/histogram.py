"""Histogram (Gopalani & Hu 2025, Sec. 4): for each letter of the input, how often it occurs.

Sequence (L = 2n + 1): x_1 .. x_n letters uniform in 1..alphabet, SEP = 0, c_1 .. c_n with
c_i = #{j : x_j = x_i} (1..n). Vocabulary max(alphabet, n) + 1, as in their code.
Correct keys: with two or more layers, the first layer's output query i reads x_i (their
measure) and the last layer reads every x_j equal to x_i (the count); one layer: the latter.
"""

from __future__ import annotations

import torch

from ..config import TaskConfig
from .sequence import SequenceTask, output_rows, randint


class Histogram(SequenceTask):
    name = "histogram"

    def vocab(self, k: TaskConfig) -> int:
        return max(k.alphabet, k.length) + 1

    def sample(self, k: TaskConfig, count: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        x = randint(1, k.alphabet, (count, k.length), gen)
        counts = (x[:, :, None] == x[:, None, :]).sum(-1)
        sep = torch.zeros((count, 1), dtype=x.dtype, device=x.device)
        return torch.cat([x, sep, counts], dim=1), k.length + 1

    def key_map(self, tokens, out_start, k, layer, layers):
        n, t = k.length, tokens.shape[1] - 1
        j, key = output_rows(n, t, tokens.device)
        if layer == 0 and layers > 1:
            return (key == j).expand(len(tokens), -1, -1)
        if layer != layers - 1:
            return None
        x = tokens[:, :n]
        same = torch.zeros((len(tokens), n, t), dtype=torch.bool, device=tokens.device)
        same[:, :, :n] = x[:, :, None] == x[:, None, :]
        return same


TASK = Histogram()
