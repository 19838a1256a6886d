"""Attention variants as data (DESIGN.md, decision 5).

One `AttentionVariant` describes every built-in modification of softmax attention that the
kernels, the planner and the float32 oracle understand. Semantics, for a query at absolute
position `q_pos` and a key at absolute position `kv_pos` (positions count from 0 at the first
token of the request's KV sequence; a request with `q_len` new tokens and `kv_len` tokens in
total has its queries at `kv_len - q_len ... kv_len - 1`):

    s = sm_scale * dot(q, k)
    s = logits_soft_cap * tanh(s / logits_soft_cap)        if logits_soft_cap > 0
    s = s + alibi_slopes[q_head] * (kv_pos - q_pos)         if alibi_slopes is given
    key visible  iff  (not causal or kv_pos <= q_pos)
                 and  (window_left < 0 or kv_pos >= q_pos - window_left)
                 and  custom_mask[q, kv]                    if a custom mask is given
    p = softmax over visible keys, where with sinks the denominator also holds
        exp(sinks[q_head]) (a logit without a value: it only absorbs probability mass)

The log-sum-exp (LSE) we expose is the natural logarithm of that denominator, in the same
units as `s` (with sinks included when sinks are applied). A row with no visible key and
no sink has output 0 and LSE -inf.

Sinks are applied exactly once per output row, by whoever writes the final output: the
attention kernel for a row computed in one piece, the merge for a row split over KV chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AttentionVariant:
    """Built-in variant parameters. Tensors (alibi_slopes, sinks) are float32 `[num_qo_heads]`."""

    causal: bool = True
    window_left: int = -1
    logits_soft_cap: float = 0.0
    sm_scale: float | None = None
    alibi_slopes: Any = None
    sinks: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.window_left, int) or self.window_left < -1:
            raise ValueError(
                f"window_left {self.window_left!r} is not allowed; use -1 (no window) or an "
                "int >= 0 (number of earlier keys a query may see)")
        if not (self.logits_soft_cap >= 0.0 and math.isfinite(self.logits_soft_cap)):
            raise ValueError(
                f"logits_soft_cap {self.logits_soft_cap!r} is not allowed; use 0 (off) or a "
                "finite value > 0")
        if self.sm_scale is not None and not (self.sm_scale > 0 and math.isfinite(self.sm_scale)):
            raise ValueError(f"sm_scale {self.sm_scale!r} is not allowed; use a finite value > 0")

    def scale_for(self, head_dim: int) -> float:
        return self.sm_scale if self.sm_scale is not None else 1.0 / math.sqrt(head_dim)

    @property
    def has_window(self) -> bool:
        return self.window_left >= 0
