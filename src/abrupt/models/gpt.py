"""The decoder: `Decoder` (GPT-2 blocks, the attention-edit channel, `run_from`), and its two
models, `MatrixGPT` (the paper's GPT variant) and `SequenceGPT` (the follow-up's sequence tasks,
Gopalani & Hu 2025; their batch and objective are the task's, tasks/sequence.py).

The GPT variant (Fig. 11, 12): a decoder-only transformer that reads a masked matrix and then
writes the whole matrix, trained with next-token cross-entropy on the written half.

Sequence: [masked matrix tokens] [SEP] [full matrix tokens], row-major, T = m*n each side. The
model sees the first 2T tokens and predicts the next one at each position; the loss is on the
last T predictions (the full matrix). Architecture: GPT-2 (pre-LayerNorm blocks, tanh GELU,
learned absolute positions, a final LayerNorm) with an untied output head, so that the read-in
and read-out embeddings can differ; held to `transformers.GPT2Model` by a test. It shares hook
points and their names with the BERT (`hooks.act_name`), so hook-based analyses work on it.

Vocabulary: MASK = 0, SEP = 1, value x -> 2 + round(100 x) + 1000 over -10.00 ... 10.00
(ids 2 ... 2002). The authors' GPT tokens (x -> 1 + 100x + 200, MASK 0, SEP 404) collide just
outside the training range (x = 2.03 gives the SEP id, x = -2.01 the MASK id); here no value the
vocabulary admits can produce a special id, and a value outside it is refused (or clipped with
data.clip), never misread.

`model.attention=linear` gives it the follow-up's linear attention (layers.Attention); it is
pre-LN already, so `model.norm` stays a BERT option.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..data import MASK_ID, VOCAB_SIZE, Batch, id_to_value, value_to_id
from ..hooks import HookedModule, HookPoint, mode
from . import layers
from .layers import AttentionEdit, AttentionSite, Block, KVCache, edit_terms, init_weights

GPT_MASK, GPT_SEP = 0, 1
_SHIFT = 1  # a GPT value id is the BERT value id + 1 (room for SEP after MASK)
GPT_VOCAB = VOCAB_SIZE + _SHIFT  # 2003


def value_ids(values: torch.Tensor, check: bool = True) -> torch.Tensor:
    """GPT token ids of values (a value outside the vocabulary is refused, as in
    data.value_to_id; `check=False` skips that test, a device-to-host sync)."""
    return value_to_id(values, check=check) + _SHIFT


def id_values(ids: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Values of GPT value ids (special ids have no value: refused unless `check=False`)."""
    return id_to_value(ids - _SHIFT, check=check)


def sequence(batch: Batch) -> torch.Tensor:
    """(B, 2T + 1): masked matrix, SEP, full matrix, from a BERT-tokenized batch (its target was
    range-checked when the batch was made: not again here, which would sync every step)."""
    full = value_ids(batch.target, check=False)
    masked = full.masked_fill(batch.mask, GPT_MASK)
    sep = torch.full((len(full), 1), GPT_SEP, dtype=torch.long, device=full.device)
    return torch.cat([masked, sep, full], dim=1)


def value_argmax(logits: torch.Tensor) -> torch.Tensor:
    """The most likely value token (never a special id) of logits (..., GPT_VOCAB): ids (...)."""
    return logits[..., 2:].argmax(-1) + 2


def masked_prefix(tokens: torch.Tensor) -> torch.Tensor:
    """BERT tokens of a masked matrix as GPT ids."""
    return torch.where(tokens == MASK_ID, torch.full_like(tokens, GPT_MASK), tokens + _SHIFT)


def gpt_losses(logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """Cross-entropy on the written half, and per observed / hidden entry: cross-entropy, accuracy,
    and the MSE of the decoded value (argmax over value tokens) against the true value."""
    t = batch.target.shape[1]
    out = logits[:, t:, :].float()  # the predictions of the T full-matrix tokens
    # No range checks here (each a device-to-host sync, six a training step): the batch's target
    # was checked when it was made, and `guess` is a value id by construction.
    target_ids = value_ids(batch.target, check=False).to(out.device)
    ce = F.cross_entropy(
        out.reshape(-1, out.shape[-1]), target_ids.reshape(-1), reduction="none"
    ).view_as(target_ids)
    guess = value_argmax(out)
    guess_values = id_values(guess, check=False)
    sq = (guess_values - batch.target.to(out.device)) ** 2
    hidden = batch.mask.to(out.device)
    correct = (guess == target_ids).float()

    def mean(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        n = where.sum()
        return torch.where(
            n > 0,
            (x * where).sum() / n.clamp_min(1),
            torch.full_like(n, float("nan"), dtype=x.dtype),
        )

    return {
        "loss": ce.mean(),
        "ce_obs": mean(ce, ~hidden),
        "ce_mask": mean(ce, hidden),
        "acc_obs": mean(correct, ~hidden),
        "acc_mask": mean(correct, hidden),
        "loss_obs": mean(sq, ~hidden),
        "loss_mask": mean(sq, hidden),
        "mask_value": mean(guess_values.abs(), hidden),
    }


class Decoder(HookedModule):
    """GPT-2's decoder: tokens (B, L <= positions) ids in [0, vocab) -> next-token logits
    (B, L, vocab). Token and position embeddings, `cfg.layers` pre-norm Blocks (tanh GELU), a
    final LayerNorm, an untied head without bias. The matrix and sequence models subclass it with
    their tokens and objective (MatrixGPT, SequenceGPT).

    `attention_edits`: {name: edit} of the interventions acting now (`layers.AttentionSite`, which
    carries the task's correct keys `keys`; set by src/abrupt/interventions/, empty by default)."""

    causal = True  # a position attends to itself and earlier ones
    # GPT-2's init of the residual output projections, N(0, init_std / sqrt(2 layers)), so the
    # residual stream's variance does not grow with depth (the follow-up's code); off: init_std
    scaled_residual_init = False

    def __init__(self, cfg: ModelConfig, vocab: int, positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.attention_edits: dict[str, AttentionEdit] = {}
        # registration order sets which draws of the seeded RNG each weight gets
        self.tok_embed = nn.Embedding(vocab, cfg.width)
        self.pos_embed = nn.Embedding(positions, cfg.width)
        self.blocks = nn.ModuleList(
            Block(cfg, causal=True, pre_norm=True, gelu="tanh") for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.width, vocab, bias=False)
        self.hook_tok_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.hook_embed = HookPoint()
        self.hook_out = HookPoint()
        self.name_hook_points()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        if self.scaled_residual_init:
            std = self.cfg.init_std / math.sqrt(2 * self.cfg.layers)
            for block in self.blocks:
                nn.init.normal_(block.attn.o.weight, std=std)
                nn.init.normal_(block.mlp_out.weight, std=std)

    def forward(
        self,
        tokens: torch.Tensor,
        keys: torch.Tensor | None = None,
        *,
        pad: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        last: bool = False,
    ) -> torch.Tensor:
        """`keys`: the task's correct keys (B, layers, >= L, >= L) bool, read by attention edits.
        `cache` (one KVCache per layer, from `new_cache`): `tokens` continue the positions it has
        read, and are added to it; every hook then sees the new positions only. `last`: the logits
        of the last position alone, (B, 1, vocab) (greedy decoding needs no others). `pad`: refused
        (no size mixtures)."""
        if pad is not None:
            raise ValueError("the GPT variant does not take size mixtures")
        start = 0 if cache is None else cache[0].length
        length = tokens.shape[1]
        positions = self.pos_embed.num_embeddings
        if not 1 <= start + length <= positions:
            raise ValueError(f"expected sequences of length 1..{positions}, got {start + length}")
        tok = self.hook_tok_embed(self.tok_embed(tokens.to(self.pos_embed.weight.device)))
        pos = self.hook_pos_embed(self.pos_embed.weight[start : start + length].unsqueeze(0))
        return self._layers(0, self.hook_embed(tok + pos), keys, cache, last)

    def run_from(
        self, layer: int, resid_pre: torch.Tensor, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Finish a forward pass from `blocks.{layer}.hook_resid_pre` (TransformerLens's
        `start_at_layer`): resid_pre (B, L, d), as `run_with_cache` stored it there -> logits
        (B, L, vocab); `keys` as in `forward`. Equal, bit for bit, to the whole forward pass when
        no hook acts on the layers before `layer` (the BERT's `run_from`, the same contract)."""
        if not 0 <= layer < len(self.blocks):
            raise ValueError(f"layer {layer} out of range: the model has {len(self.blocks)}")
        return self._layers(layer, resid_pre, keys, None, False)

    def _layers(
        self,
        first: int,
        x: torch.Tensor,
        keys: torch.Tensor | None,
        cache: list[KVCache] | None,
        last: bool,
    ) -> torch.Tensor:
        """Blocks `first`.. on the residual stream x (B, L, d), the final LayerNorm, the head."""
        length = x.shape[1]
        for layer in range(first, len(self.blocks)):
            bias = scale = None
            if self.attention_edits:
                site = AttentionSite(layer, length, x.device, x.dtype, keys=keys)
                bias, scale = edit_terms(self.attention_edits, site)
                if cache is not None and (bias is not None or scale is not None):
                    # an edit's terms cover a whole sequence, not the new positions of a cached pass
                    raise ValueError(
                        "an attention edit acts on a pass with a KV cache; decode without one"
                    )
            block = self.blocks[layer]
            x = block(x, bias=bias, scale=scale, cache=None if cache is None else cache[layer])
        if last:
            x = x[:, -1:]
        return self.hook_out(self.head(self.ln_final(x)))

    def new_cache(self) -> list[KVCache]:
        return [KVCache(self.pos_embed.num_embeddings) for _ in self.blocks]


class SequenceGPT(Decoder):
    """The decoder of the follow-up's sequence tasks (Gopalani & Hu 2025), as in their
    minGPT-based code: tokens (B, T <= seq_len) -> logits (B, T, vocab), trained on the task's
    objective (tasks/sequence.py). Initialisation (GPT-2's, theirs): every weight N(0, init_std),
    biases 0, LayerNorms 1, residual output projections N(0, init_std / sqrt(2 layers))."""

    scaled_residual_init = True

    def __init__(self, cfg: ModelConfig, vocab: int, seq_len: int) -> None:
        super().__init__(cfg, vocab, seq_len)
        self.vocab = vocab
        self.seq_len = seq_len


class MatrixGPT(Decoder):
    """tokens (B, L <= 2T) GPT ids -> next-token logits (B, L, GPT_VOCAB)."""

    # what model.* options and tasks this architecture serves (checks.validate_run)
    supports = frozenset({"attention_linear", "sequence_tasks"})

    def __init__(self, cfg: ModelConfig, seq_len: int, cols: int | None = None) -> None:
        # cols: the registry's common signature; the decoder's edits read no columns
        super().__init__(cfg, GPT_VOCAB, 2 * seq_len)
        self.seq_len = seq_len  # T = m*n; the model reads up to 2T tokens

    @staticmethod
    def for_sequences(cfg: ModelConfig, vocab: int, seq_len: int) -> SequenceGPT:
        """This architecture's model for a sequence task (`supports` has "sequence_tasks")."""
        return SequenceGPT(cfg, vocab, seq_len)

    # --- what the matrix task and the analyses call -------------------------------------------

    @torch.no_grad()
    def complete(self, tokens: torch.Tensor, cache: bool = True) -> torch.Tensor:
        """GPT ids (B, 2T + 1) of masked BERT tokens (B, T): the masked matrix, SEP, then T values
        written greedily (argmax over value tokens), each fed back in.

        `cache=True` decodes with a key/value cache: the masked matrix and SEP in one pass, then one
        position per token, the output head on the last position only. `cache=False` reruns the
        whole sequence and the head at every position for each token (the reference that tests and
        benchmarks hold the cache to: the same tokens, to rounding). Hooks under a cache see only
        the positions each pass adds, so they must act position by position (every analysis's
        hook does; `hook_pattern` then has the shape (B, H, new, read so far))."""
        prefix = masked_prefix(tokens.to(self.pos_embed.weight.device))
        seq = torch.cat(
            [prefix, torch.full((len(prefix), 1), GPT_SEP, dtype=torch.long, device=prefix.device)],
            dim=1,
        )
        t = prefix.shape[1]
        kv = self.new_cache() if cache else None
        step = seq
        for _ in range(t):
            logits = self(step, cache=kv, last=True) if cache else self(seq)[:, -1:]
            step = logits[:, -1, 2:].argmax(-1, keepdim=True) + 2
            seq = torch.cat([seq, step], dim=1)
        return seq

    def prediction_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The sequences (B, 2T) a greedy completion reads, as one teacher-forced input: the masked
        matrix, SEP and the model's own completion but its last token."""
        return self.complete(tokens)[:, :-1]

    @torch.no_grad()
    def predict(
        self, tokens: torch.Tensor, pad: torch.Tensor | None = None, cache: bool = True
    ) -> torch.Tensor:
        """The completed matrix (B, T) for masked BERT tokens (see `complete`), in evaluation mode,
        layers.CHUNK matrices at a time."""
        if pad is not None:
            raise ValueError("the GPT variant does not take size mixtures")
        t = tokens.shape[1]
        with mode(self):
            return torch.cat(
                [
                    id_values(self.complete(tokens[i : i + layers.CHUNK], cache)[:, t + 1 :]).cpu()
                    for i in range(0, len(tokens), layers.CHUNK)
                ]
            )
