"""Moving-window sum, the follow-up's main task (Gopalani & Hu 2025, Sec. 3).

Sequence (L = 2n + 1): x_1 .. x_n uniform in low..high, SEP, y_1 .. y_n with y_1 = x_1 and
y_i = (x_(i-1) + x_i) mod `modulus`. Tokens: inputs and outputs are their own ids, SEP = modulus
(as in their code: 17 for 16 integers 1..16), vocabulary modulus + 1.
Correct keys (their attention progress measure, one layer): output y_i reads x_(i-1) and x_i
(y_1: x_1); defined in the last layer only.
"""

from __future__ import annotations

import torch

from ..config import Config
from .sequence import SequenceTask, output_rows, randint


class MovingWindowSum(SequenceTask):
    name = "mws"
    about = "moving-window sum, y_i = x_(i-1) + x_i mod 17 (y_1 = x_1)"

    def vocab(self, cfg: Config) -> int:
        return cfg.task.modulus + 1

    def sample(self, cfg: Config, count: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        k = cfg.task
        x = randint(k.low, k.high, (count, k.length), gen)
        sep = torch.full((count, 1), k.modulus, dtype=x.dtype, device=x.device)
        return self.answer(cfg, torch.cat([x, sep, x], dim=1)), k.length + 1

    def answer(self, cfg, tokens):
        n, mod = cfg.task.length, cfg.task.modulus
        x = tokens[:, :n]
        y = x.clone()
        y[:, 1:] = (x[:, :-1] + x[:, 1:]) % mod
        return torch.cat([tokens[:, : n + 1], y], dim=1)

    def token_modulus(self, cfg):
        return cfg.task.modulus

    def key_map(self, tokens, out_start, cfg, layer, layers):
        if layer != layers - 1:
            return None
        j, key = output_rows(cfg.task.length, tokens.shape[1] - 1, tokens.device)
        m = (key == j) | (key == j - 1)
        return m.expand(len(tokens), -1, -1)


TASK = MovingWindowSum()
