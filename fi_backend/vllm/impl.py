"""FIAttentionImpl: one attention layer on fi_backend.

Per layer (vLLM builds one impl per Attention module, so layers of one model may differ,
e.g. Gemma-2's alternating sliding and global layers): the sliding window (vLLM's window w
becomes window_left = w - 1: a query sees itself and the w - 1 keys before it, as in vLLM's
FlashAttention backend), the logits soft-cap, ALiBi slopes, attention sinks and the softmax
scale. Per step: the BSR page table and the plan the builder made for this layer's window
(in a shared-prefix step, the composed cascade plan: metadata/cascade_plan.py).

vLLM calls `do_kv_cache_update` (custom op `unified_kv_cache_update`) before `forward`,
because `FIBackend.forward_includes_kv_cache_update` is False; both run inside captured
CUDA graphs, so neither reads device data on the host.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.attention.backend import AttentionImpl, AttentionLayer, AttentionType

from fi_backend import ops
from fi_backend.metadata.block_sparse import split_kv_cache
from fi_backend.variants import AttentionVariant
from fi_backend.vllm.backend import SUPPORTED_KV_CACHE_DTYPES, unsupported_reasons
from fi_backend.vllm.builder import NO_WINDOW, FIMetadata

VLLM_KV_CACHE_LAYOUT = "vllm_packed"
"""`(num_blocks, num_kv_heads, block_size, 2 * head_dim)`, see FIBackend.get_kv_cache_shape."""


class FIAttentionImpl(AttentionImpl[FIMetadata]):
    # fi_backend returns no LSE through vLLM yet, which decode context parallelism needs.
    supports_dcp: bool = False
    can_return_lse_for_decode: bool = False

    def __init__(self, num_heads: int, head_size: int, scale: float,
                 num_kv_heads: int | None = None, alibi_slopes: list[float] | None = None,
                 sliding_window: int | None = None, kv_cache_dtype: str = "auto",
                 logits_soft_cap: float | None = None,
                 attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None,
                 sinks: torch.Tensor | None = None, **unsupported: Any) -> None:
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        reasons = unsupported_reasons(head_size=head_size, kv_cache_dtype=kv_cache_dtype)
        if attn_type != AttentionType.DECODER:
            reasons.append(f"fi_backend: attention type {getattr(attn_type, 'value', attn_type)} "
                           "is not supported; "
                           f"supported: {AttentionType.DECODER.value}")
        if unsupported:
            reasons.append(f"fi_backend: attention options {sorted(unsupported)} are not "
                           "supported")
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            reasons.append(f"fi_backend: num_heads {num_heads} must be a multiple of "
                           f"num_kv_heads {num_kv_heads}")
        if sliding_window is not None and sliding_window < 1:
            reasons.append(f"fi_backend: sliding_window {sliding_window} is not allowed; use "
                           "None or a number of keys >= 1")
        # The model's dtype is the default dtype while vLLM builds the layers; the kernels
        # read the cache in the query's dtype.
        model_dtype = str(torch.get_default_dtype()).removeprefix("torch.")
        if kv_cache_dtype in SUPPORTED_KV_CACHE_DTYPES and kv_cache_dtype not in (
                "auto", model_dtype):
            reasons.append(f"fi_backend: kv_cache_dtype {kv_cache_dtype} differs from the "
                           f"model dtype {model_dtype}; supported: auto or {model_dtype}")
        for name, per_head in (("alibi_slopes", alibi_slopes), ("sinks", sinks)):
            if per_head is not None and len(per_head) != num_heads:
                reasons.append(f"fi_backend: {name} has {len(per_head)} values; it needs one "
                               f"per query head ({num_heads})")
        if reasons:
            raise ValueError("; ".join(reasons))

        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.window_left = NO_WINDOW if sliding_window is None else sliding_window - 1
        self.logits_soft_cap = float(logits_soft_cap or 0.0)
        self.alibi_slopes = (torch.tensor(alibi_slopes, dtype=torch.float32)
                             if alibi_slopes is not None else None)
        # The model's parameter: its values arrive with the weights, after this constructor.
        self.sinks = sinks
        self._variants: dict[bool, AttentionVariant] = {}

    def process_weights_after_loading(self, act_dtype: torch.dtype) -> None:
        # Weights (sinks among them) may have changed: rebuild the variants at next use.
        self._variants = {}

    def variant(self, causal: bool, device: torch.device) -> AttentionVariant:
        """This layer's AttentionVariant with per-head tensors as float32 on `device`."""
        variant = self._variants.get(causal)
        if variant is None:
            def per_head(values: torch.Tensor | None) -> torch.Tensor | None:
                if values is None:
                    return None
                return values.detach().to(device=device, dtype=torch.float32).contiguous()

            variant = AttentionVariant(
                causal=causal, window_left=self.window_left,
                logits_soft_cap=self.logits_soft_cap, sm_scale=self.scale,
                alibi_slopes=per_head(self.alibi_slopes), sinks=per_head(self.sinks))
            self._variants[causal] = variant
        return variant

    def do_kv_cache_update(self, layer: AttentionLayer, key: torch.Tensor,
                           value: torch.Tensor, kv_cache: torch.Tensor,
                           slot_mapping: torch.Tensor) -> None:
        if self.kv_sharing_target_layer_name is not None or kv_cache.numel() == 0:
            return
        k_cache, v_cache = split_kv_cache(kv_cache, VLLM_KV_CACHE_LAYOUT)
        ops.append_kv(key, value, k_cache, v_cache, slot_mapping)

    def forward(self, layer: AttentionLayer, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: FIMetadata | None, output: torch.Tensor,
                output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        """query `(num_tokens, num_heads, head_size)`, output the same shape, written in place
        (rows past the batch's last query token, CUDA-graph padding, are left untouched)."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fi_backend does not fuse output quantization")
        if attn_metadata is None:
            # vLLM's memory-profiling run: no KV cache, no metadata.
            return output.fill_(0)
        k_cache, v_cache = split_kv_cache(kv_cache, VLLM_KV_CACHE_LAYOUT)
        attention = attn_metadata.attention[self.window_left]
        attention.run(query, k_cache, v_cache, attn_metadata.kv, attn_metadata.seq_lens,
                      attn_metadata.qo_indptr, self.variant(attn_metadata.causal, query.device),
                      out=output, plan=attn_metadata.plans[self.window_left])
        return output
