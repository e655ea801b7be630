"""Prefix sum (Gopalani & Hu 2025, Sec. 4): y_i = (x_1 + ... + x_i) mod `modulus`.

Sequence (L = 2n + 1): x_1 .. x_n uniform in low..high, SEP = modulus, y_1 .. y_n. Vocabulary
modulus + 1. Correct keys (last layer): output y_i reads x_1 .. x_i.
"""

from __future__ import annotations

import torch

from ..config import Config
from .sequence import SequenceTask, output_rows, randint


class PrefixSum(SequenceTask):
    name = "prefix_sum"
    about = "prefix sum mod 17, y_i = x_1 + ... + x_i mod 17"

    def vocab(self, cfg: Config) -> int:
        return cfg.task.modulus + 1

    def sample(self, cfg: Config, count: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        k = cfg.task
        x = randint(k.low, k.high, (count, k.length), gen)
        sep = torch.full((count, 1), k.modulus, dtype=x.dtype, device=x.device)
        return self.answer(cfg, torch.cat([x, sep, x], dim=1)), k.length + 1

    def answer(self, cfg, tokens):
        n = cfg.task.length
        return torch.cat([tokens[:, : n + 1], tokens[:, :n].cumsum(1) % cfg.task.modulus], dim=1)

    def token_modulus(self, cfg):
        return cfg.task.modulus

    def key_map(self, tokens, out_start, cfg, layer, layers):
        if layer != layers - 1:
            return None
        j, key = output_rows(cfg.task.length, tokens.shape[1] - 1, tokens.device)
        return (key <= j).expand(len(tokens), -1, -1)


TASK = PrefixSum()
