"""Writing past the window: when a sequence's context is full, it shifts, and decoding goes on.

As llama.cpp's context shift (`--keep`, `--context-shift`): the first `keep` tokens stay (the opening as an anchor;
StreamingLLM's attention sinks are the same idea), the older `discard` part of the rest is dropped, and the sequence
continues with what is left at positions 0.. again. How a model follows depends on its positions:

- rotary positions (the modern recipe, Llama, Qwen3): the kept keys are rotated back by the number of positions
  dropped, in the KV cache, with no recomputation (a rotation by p - d is the rotation by p followed by one by -d,
  so the distances between kept tokens are exactly as they were, up to the rounding of the cache's dtype). As in
  llama.cpp, the cached states of the kept tokens beyond the first layer still carry what they read of the dropped
  text: a shifted cache is not a fresh encoding of the kept tokens, it is cheaper and keeps more;
- learned positions (the GPT-2 recipe, GPT-2), or any other: the kept tokens are encoded again at their new positions
  (one prefill of the kept context, whose last logits choose the next token).

The defaults were chosen by measurement (`bench/bench_long.py`, docs/generation-engine.md#writing-past-the-window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_KEEP = 4
DEFAULT_DISCARD = 0.5


@dataclass(frozen=True)
class ContextShift:
    """What a full context keeps: the first `keep` tokens, and the newest of the rest after dropping the oldest
    `discard` fraction of them (at least one token)."""

    keep: int = DEFAULT_KEEP
    discard: float = DEFAULT_DISCARD

    @classmethod
    def for_model(cls, model, keep: int | None = None, discard: float | None = None) -> ContextShift:
        """The model's own policy (VictorianGPT's config carries `context_keep` and `context_discard`, which its own
        generate() also follows), else the defaults here; `keep` and `discard` override either."""
        config = model.config
        return cls(keep=keep if keep is not None else getattr(config, "context_keep", DEFAULT_KEEP),
                   discard=discard if discard is not None else getattr(config, "context_discard", DEFAULT_DISCARD))

    def check(self, window: int) -> ContextShift:
        """A one-line ValueError for a policy that cannot work with a `window`-token context; returns self."""
        if self.keep < 0:
            raise ValueError(f"context keep must be 0 or more, got {self.keep}")
        if not 0 < self.discard < 1:
            raise ValueError(f"context discard must be a fraction between 0 and 1 (exclusive), got {self.discard}")
        if self.keep > window // 2:
            raise ValueError(f"context keep ({self.keep}) must be at most half the model's context ({window} tokens): "
                             "the rest of the window is where the text goes on")
        return self

    def dropped(self, length: int) -> int:
        """How many tokens a shift of a `length`-token context drops (after the first `keep`)."""
        return max(1, int((length - self.keep) * self.discard))

    def apply(self, tokens: list[int]) -> list[int]:
        """The context that stays: the first `keep` tokens and the rest after the dropped ones."""
        return tokens[: self.keep] + tokens[self.keep + self.dropped(len(tokens)) :]


def rotary_frequencies(model) -> torch.Tensor | None:
    """The rotary frequencies (head_dim / 2) a model rotates its keys with, or None when its positions are not plain
    rotary ones (learned positions, or a scaled rotary variant whose angles change with the length)."""
    config = model.config
    if getattr(config, "model_type", None) == "victorian_gpt":
        if config.position_embedding_type != "rope":
            return None
        head_dim = config.n_embd // config.n_head
        return 1.0 / config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    rotary = next((m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "rope_type")), None)
    if rotary is None or rotary.rope_type != "default" or getattr(rotary, "attention_scaling", 1.0) != 1.0:
        return None
    return rotary.inv_freq.detach().float().cpu()


def rotate_back(keys: torch.Tensor, positions: int, frequencies: torch.Tensor) -> torch.Tensor:
    """Keys (..., T, D) rotated by -`positions` (the two halves of a head rotate together, as Llama's RoPE), computed
    in float32 and returned in the keys' dtype."""
    angles = -positions * frequencies.to(keys.device)
    cos, sin = torch.cat((angles, angles)).cos(), torch.cat((angles, angles)).sin()
    x = keys.float()
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(keys.dtype)


def shift_cache(layers, shift: ContextShift, length: int, frequencies: torch.Tensor) -> None:
    """Shift one sequence's KV cache layers (batch 1, `length` tokens, positions 0..) in place: drop the tokens
    `shift` drops and rotate the later keys back by their number."""
    dropped = shift.dropped(length + 1)  # the context counts the token about to be decoded
    start = shift.keep
    for layer in layers:
        keys, values = layer.keys, layer.values
        layer.keys = torch.cat((keys[:, :, :start], rotate_back(keys[:, :, start + dropped :], dropped, frequencies)),
                               dim=2)
        layer.values = torch.cat((values[:, :, :start], values[:, :, start + dropped :]), dim=2)


def add_context_shift_arguments(parser) -> None:
    """`--context-keep` and `--context-discard`, as `victorian-gpt generate` and `victorian-gpt serve` take them
    (llama.cpp's `--keep`; it discards half)."""
    group = parser.add_argument_group("writing past the model's context (the context shifts when it is full)")
    group.add_argument("--context-keep", type=int, default=None, metavar="N",
                       help=f"tokens of the opening always kept at a shift (default: the model's own, "
                            f"`context_keep` in its config.json, else {DEFAULT_KEEP})")
    group.add_argument("--context-discard", type=float, default=None, metavar="F",
                       help=f"fraction of the rest dropped at a shift, the oldest first (default: the model's own, "
                            f"`context_discard`, else {DEFAULT_DISCARD})")


def context_shift_from_args(args, model) -> ContextShift:
    return ContextShift.for_model(model, args.context_keep, args.context_discard)
