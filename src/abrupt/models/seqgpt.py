"""The follow-up's sequence tasks (Gopalani & Hu 2025) as the decoder sees them: the batch
(`SeqBatch`) and the objective (`sequence_losses`). The model is `gpt.SequenceGPT`, the shared
`gpt.Decoder` with GPT-2's residual init, as in their minGPT-based code; the attention-score
multiplier (their intervention) is `interventions/attn_scale.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SeqBatch:
    tokens: torch.Tensor  # (B, L) int64: inputs, separator(s), outputs
    out_start: int  # index of the first output token
    # (B, layers, L-1, L-1) bool: each layer's correct keys of each output query (False elsewhere)
    keys: torch.Tensor
    pad: None = None  # no padding and no size mixture (the trainer asks)
    size: None = None

    def to(self, device: torch.device | str) -> "SeqBatch":
        return dataclasses.replace(self, tokens=self.tokens.to(device), keys=self.keys.to(device))

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, rows: slice) -> "SeqBatch":
        return dataclasses.replace(self, tokens=self.tokens[rows], keys=self.keys[rows])


def sequence_losses(logits: torch.Tensor, batch: SeqBatch) -> dict[str, torch.Tensor]:
    """logits (B, L-1, V) -> cross-entropy over the outputs (nats per output token; the training
    objective), token accuracy and whole-sequence accuracy of the argmax (teacher-forced)."""
    out = logits[:, batch.out_start - 1 :].float()
    target = batch.tokens[:, batch.out_start :].to(out.device)
    ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
    right = out.argmax(-1) == target
    return {"loss": ce, "acc": right.float().mean(), "seq_acc": right.all(-1).float().mean()}
