import torch

from .sequence import SequenceTask, randint


class Reverse(SequenceTask):
    name = "zz_reverse"

    def vocab(self, k):  # values 1..high, then the separator high + 1
        return k.high + 2

    def sample(self, k, count, gen):  # (tokens (B, 2L + 1) on gen's device, out_start)
        x = randint(k.low, k.high, (count, k.length), gen)
        sep = torch.full((count, 1), k.high + 1, dtype=x.dtype, device=x.device)
        return torch.cat([x, sep, x.flip(1)], dim=1), k.length + 1

    def key_map(self, tokens, out_start, k, layer, layers):
        return None  # no correct keys defined: no attention progress


TASK = Reverse()

TASK = Reverse()
