"""FIMetadataBuilder: one engine step's attention metadata for one KV-cache group.

build() runs eagerly once per step, outside any CUDA graph, and does two things:

1. BSR translation on the device: the block table and the exact device `seq_lens` become a
   BlockSparseKV written into persistent buffers (`block_table_to_bsr(..., out=)`), so the
   addresses a captured graph holds stay valid.
2. The host plan: query offsets from `query_start_loc_cpu` (exact) and KV lengths from
   `seq_lens_cpu_upper_bound` (upper bounds; kernels clamp to the device `seq_lens`) go to
   the planner, which publishes the plan into its fixed device buffer with one async copy.
   Never `seq_lens_cpu` (deprecated, a device-to-host sync under the V2 runner) and never a
   `.item()` or `.cpu()` on device data.

One plan per distinct sliding window among the group's layers (a window shortens the KV
range a tile needs, so it changes the plan); soft-cap, ALiBi, sinks and the scale only change
the kernel's arithmetic and are taken per layer at run time. Because run() always launches
the same fixed grids and reads only fixed buffers, a graph captured for any batch replays
correctly for any other within the capacities: `AttentionCGSupport.ALWAYS` (full graphs for
decode, prefill and mixed batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from vllm.config import CUDAGraphMode, get_layers_from_vllm_config
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.utils.math_utils import cdiv
from vllm.v1.attention.backend import (
    AttentionCGSupport,
    AttentionMetadata,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)

from fi_backend.metadata.block_sparse import BlockSparseKV, BsrBuffers, block_table_to_bsr
from fi_backend.metadata.planner import Plan, Planner
from fi_backend.variants import AttentionVariant

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import AttentionSpec

    from fi_backend.attention import BatchAttention

NO_WINDOW = -1

CPU_PLAN_NUM_CTAS = 132
"""Persistent CTAs of plans made on a CPU device (tests without a GPU): an H100's SM count."""


@dataclass
class FIMetadata(AttentionMetadata):
    """What every layer of one KV-cache group reads in one step.

    qo_indptr:  device int32 [B + 1], vLLM's `query_start_loc` (exact).
    seq_lens:   device int32 [B], exact KV lengths including this step's tokens.
    kv:         BSR page table over the group's paged cache (views of persistent buffers).
    plans:      window_left -> the step's plan for layers with that window (-1: none).
    attention:  window_left -> the BatchAttention that runs it (empty on a CPU device).
    """

    num_actual_tokens: int
    num_reqs: int
    causal: bool
    qo_indptr: torch.Tensor
    seq_lens: torch.Tensor
    slot_mapping: torch.Tensor
    kv: BlockSparseKV
    plans: dict[int, Plan]
    attention: dict[int, "BatchAttention"]


def layer_window_lefts(vllm_config: "VllmConfig", layer_names: list[str],
                       kv_cache_spec: "AttentionSpec") -> tuple[int, ...]:
    """The distinct `window_left` values of the group's layers (vLLM window w -> w - 1)."""
    layers = get_layers_from_vllm_config(vllm_config, AttentionLayerBase, layer_names)
    windows = {layer.impl.window_left for layer in layers.values()
               if hasattr(layer.impl, "window_left")}
    if not windows:
        # No layer objects to ask (e.g. a builder made for tests): the spec's window.
        sliding_window = getattr(kv_cache_spec, "sliding_window", None)
        windows = {NO_WINDOW if sliding_window is None else sliding_window - 1}
    return tuple(sorted(windows))


class FIMetadataBuilder(AttentionMetadataBuilder[FIMetadata]):
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.ALWAYS

    def __init__(self, kv_cache_spec: "AttentionSpec", layer_names: list[str],
                 vllm_config: "VllmConfig", device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        # Decodes first, with speculative rows (1 + k queries) counted as decodes: the
        # planner makes them small GQA-packed decode tiles either way; the order only keeps
        # the cheap rows together at the front of the plan's work stream.
        self._init_reorder_batch_threshold(1, supports_spec_as_decode=True)

        model_config = vllm_config.model_config
        scheduler_config = vllm_config.scheduler_config
        self.page_size = kv_cache_spec.block_size
        self.num_kv_heads = kv_cache_spec.num_kv_heads
        self.head_dim = kv_cache_spec.head_size
        self.num_qo_heads = self._num_qo_heads(vllm_config, layer_names)
        self.max_requests = scheduler_config.max_num_seqs
        self.max_model_len = model_config.max_model_len
        # With asynchronous speculative decoding the CPU bound assumes all drafts accepted.
        speculative_config = vllm_config.speculative_config
        num_spec_tokens = (speculative_config.num_speculative_tokens
                           if speculative_config is not None else None) or 0
        kv_len_slack = num_spec_tokens * (
            2 if speculative_config is not None and speculative_config.parallel_drafting else 1)
        # One spare column per request for that slack, so a bound never outgrows the buffers.
        self.max_pages_per_req = cdiv(self.max_model_len + kv_len_slack, self.page_size)
        self.bsr_buffers = BsrBuffers(self.max_requests,
                                      self.max_requests * self.max_pages_per_req, device)

        self.window_lefts = layer_window_lefts(vllm_config, layer_names, kv_cache_spec)
        num_ctas = self._num_ctas(kv_cache_spec.dtype)
        self.planners = {
            window_left: Planner(
                max_requests=self.max_requests,
                max_batched_tokens=scheduler_config.max_num_batched_tokens,
                max_model_len=self.max_model_len + kv_len_slack,
                num_qo_heads=self.num_qo_heads, num_kv_heads=self.num_kv_heads,
                head_dim=self.head_dim, page_size=self.page_size, num_ctas=num_ctas,
                device=device, kv_len_slack=kv_len_slack)
            for window_left in self.window_lefts}
        self.attention = self._make_attention()

    @staticmethod
    def _num_qo_heads(vllm_config: "VllmConfig", layer_names: list[str]) -> int:
        layers = get_layers_from_vllm_config(vllm_config, AttentionLayerBase, layer_names)
        heads = {layer.impl.num_heads for layer in layers.values()}
        if len(heads) > 1:
            raise ValueError(f"fi_backend needs one query head count per KV-cache group; the "
                             f"layers {layer_names} have {sorted(heads)}")
        if heads:
            return heads.pop()
        return vllm_config.model_config.get_num_attention_heads(vllm_config.parallel_config)

    def _num_ctas(self, dtype: torch.dtype) -> int:
        if self.device.type != "cuda":
            return CPU_PLAN_NUM_CTAS
        from fi_backend.attention import ctas_per_sm

        num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        return num_sms * ctas_per_sm(dtype, self.head_dim, self.device)

    def _make_attention(self) -> dict[int, "BatchAttention"]:
        if self.device.type != "cuda":
            return {}
        from fi_backend.attention import BatchAttention

        # In FULL graph mode for mixed batches, a graph captured on a decode batch is replayed
        # on batches with prefills: keep the kernel that tiles prefills at full size.
        mixed_full_graphs = (self.vllm_config.compilation_config.cudagraph_mode.mixed_mode()
                             == CUDAGraphMode.FULL)
        return {window_left: BatchAttention(planner, decode_kernel=not mixed_full_graphs)
                for window_left, planner in self.planners.items()}

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> FIMetadata:
        cam = common_attn_metadata
        if isinstance(cam.causal, torch.Tensor):
            raise NotImplementedError(
                "fi_backend plans one causal mode per batch; per-request causal flags (a "
                "torch.Tensor `causal`) are not supported")
        num_reqs = cam.num_reqs
        qo_indptr_host = np.ascontiguousarray(cam.query_start_loc_cpu[:num_reqs + 1].numpy(),
                                              dtype=np.int32)
        kv_len_host = self._kv_len_upper_bounds(cam)

        # Only the block-table columns the longest request can use: the translation's work
        # and the buffers it fills scale with these, not with max_model_len.
        longest = int(kv_len_host.max()) if num_reqs > 0 else 0
        num_columns = max(1, min(cam.block_table_tensor.shape[1], cdiv(longest, self.page_size)))
        kv = block_table_to_bsr(cam.block_table_tensor[:num_reqs, :num_columns],
                                cam.seq_lens[:num_reqs], self.page_size, out=self.bsr_buffers)

        causal = bool(cam.causal)
        plans = {}
        for window_left, planner in self.planners.items():
            variant = AttentionVariant(causal=causal, window_left=window_left)
            attention = self.attention.get(window_left)
            plans[window_left] = (attention.plan(qo_indptr_host, kv_len_host, variant)
                                  if attention is not None
                                  else planner.plan(qo_indptr_host, kv_len_host, variant))
        return FIMetadata(
            num_actual_tokens=cam.num_actual_tokens, num_reqs=num_reqs, causal=causal,
            qo_indptr=cam.query_start_loc, seq_lens=cam.seq_lens[:num_reqs],
            slot_mapping=cam.slot_mapping, kv=kv, plans=plans, attention=self.attention)

    @staticmethod
    def _kv_len_upper_bounds(cam: CommonAttentionMetadata) -> np.ndarray:
        """int32 [B] host upper bounds of the KV lengths, without touching device data."""
        if cam.seq_lens_cpu_upper_bound is not None:
            return np.ascontiguousarray(cam.seq_lens_cpu_upper_bound[:cam.num_reqs].numpy(),
                                        dtype=np.int32)
        # Runners that give no per-request bound still give the batch's (max_seq_len).
        return np.full(cam.num_reqs, cam.max_seq_len, dtype=np.int32)
