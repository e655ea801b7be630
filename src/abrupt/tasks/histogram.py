"""Histogram (Gopalani & Hu 2025, Sec. 4): for each letter of the input, how often it occurs.

Sequence (L = 2n + 1): x_1 .. x_n letters uniform in 1..`histogram.alphabet`, SEP = 0,
c_1 .. c_n with c_i = #{j : x_j = x_i} (1..n). Vocabulary max(alphabet, n) + 1, as in their code.
Correct keys: with two or more layers, the first layer's output query i reads x_i (their
measure) and the last layer reads every x_j equal to x_i (the count); one layer: the latter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config, ConfigError
from .sequence import SequenceTask, output_rows, randint


@dataclass
class HistogramSettings:
    """The histogram task's own setting (`task.alphabet` in an older config.json)."""

    #: letters 1..alphabet
    alphabet: int = 12

    def check(self, cfg: Config) -> None:
        if not 2 <= self.alphabet <= 1000:
            raise ConfigError(f"histogram.alphabet: must be in [2, 1000], got {self.alphabet}")


class Histogram(SequenceTask):
    name = "histogram"
    about = "histogram, for each input letter its count in the sequence"
    settings = HistogramSettings

    def vocab(self, cfg: Config) -> int:
        return max(cfg.histogram.alphabet, cfg.task.length) + 1

    def sample(self, cfg: Config, count: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        k = cfg.task
        x = randint(1, cfg.histogram.alphabet, (count, k.length), gen)
        sep = torch.zeros((count, 1), dtype=x.dtype, device=x.device)
        return self.answer(cfg, torch.cat([x, sep, x], dim=1)), k.length + 1

    def answer(self, cfg, tokens):
        n = cfg.task.length
        x = tokens[:, :n]
        return torch.cat([tokens[:, : n + 1], (x[:, :, None] == x[:, None, :]).sum(-1)], dim=1)

    def value_tokens(self, cfg):
        ids = torch.arange(1, cfg.histogram.alphabet + 1)
        return ids, ids.numpy().astype(float)

    def key_map(self, tokens, out_start, cfg, layer, layers):
        n, t = cfg.task.length, tokens.shape[1] - 1
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
