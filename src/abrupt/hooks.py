"""Hook points and the plumbing every model shares: read an activation, replace it, cache it.

Written once here so that a second model (the GPT variant) gets the same names and helpers by
subclassing `HookedModule`. Hook names follow one scheme, built by `act_name`:

    hook_{kind}                    model-level: tok_embed, pos_embed, embed, out
    blocks.{layer}.hook_{kind}     per block: resid_pre, attn_out, resid_mid, mlp_out, resid_post
    blocks.{layer}.attn.hook_{kind}   per attention layer: q, k, v, pattern, z
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]

MODEL_KINDS = ("tok_embed", "pos_embed", "embed", "out")
BLOCK_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
ATTN_KINDS = ("q", "k", "v", "pattern", "z")


def act_name(kind: str, layer: int | None = None) -> str:
    """The hook name of an activation: act_name("pattern", 2) == "blocks.2.attn.hook_pattern"."""
    if kind in MODEL_KINDS:
        if layer is not None:
            raise ValueError(f"hook '{kind}' is model-level: it takes no layer")
        return f"hook_{kind}"
    if kind not in BLOCK_KINDS + ATTN_KINDS:
        raise ValueError(
            f"unknown hook kind '{kind}'; one of "
            f"{', '.join(MODEL_KINDS + BLOCK_KINDS + ATTN_KINDS)}"
        )
    if layer is None:
        raise ValueError(f"hook '{kind}' is per layer: give a layer")
    return (
        f"blocks.{layer}.attn.hook_{kind}" if kind in ATTN_KINDS else f"blocks.{layer}.hook_{kind}"
    )


@contextlib.contextmanager
def mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """`model` in training or evaluation mode for the block, its own mode restored after (also when
    the block raises)."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


class HookPoint(nn.Module):
    """Identity; the place where hooks read or replace an activation.

    Each attached hook is called on its own copy of the activation, made only while a hook is
    attached (training, which attaches none, pays nothing). So an in-place edit acts exactly like
    returning the edited tensor, and it can never write through to what the activation aliases:
    a parameter (`hook_pos_embed` carries a view of `pos_embed.weight`), the caller's input, or
    a tensor an earlier hook kept (a `run_with_cache` cache, the activation of another point).
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.fns: list[HookFn] = []  # attached by HookedModule.hooks, called in order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            own = x.clone()
            out = fn(own, self)
            x = own if out is None else out
        return x

    @property
    def active(self) -> bool:
        return bool(self.fns)


class HookedModule(nn.Module):
    """A model whose activations pass named `HookPoint`s; call `name_hook_points()` at the end of
    `__init__` so that each point knows its own name."""

    def name_hook_points(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name

    def hook_points(self) -> dict[str, HookPoint]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def _resolve(self, names: Iterable[str] | Callable[[str], bool] | None) -> list[HookPoint]:
        points = self.hook_points()
        if names is None:
            return list(points.values())
        if callable(names):
            return [p for n, p in points.items() if names(n)]
        names = list(names)
        unknown = [n for n in names if n not in points]
        if unknown:
            raise KeyError(
                f"unknown hook point(s) {unknown}; see {type(self).__name__}.hook_points()"
            )
        return [points[n] for n in names]

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]]) -> Iterator["HookedModule"]:
        """Temporarily attach `fn(activation, hook_point) -> replacement or None` to hook points
        (None keeps the activation, edited in place or not: the hook holds its own copy)."""
        attached: list[tuple[HookPoint, HookFn]] = []
        try:
            for name, fn in fwd_hooks:
                (point,) = self._resolve([name])
                point.fns.append(fn)
                attached.append((point, fn))
            yield self
        finally:
            for point, fn in reversed(attached):
                point.fns.remove(fn)

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        names: Iterable[str] | Callable[[str], bool] | None = None,
        fwd_hooks: Iterable[tuple[str, HookFn]] = (),
        **forward_kwargs,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass that also returns the (detached) activations at the chosen hook points.

        Caching a `hook_pattern` switches that layer to the exact attention path.
        """
        cache: dict[str, torch.Tensor] = {}

        def store(x: torch.Tensor, point: HookPoint) -> None:
            cache[point.name] = x.detach()

        points = self._resolve(names)
        with self.hooks(list(fwd_hooks) + [(p.name, store) for p in points]):
            out = self(tokens, **forward_kwargs)
        return out, cache
