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

Cascade (shared prefix, FlashInfer paper section 3.1): when all requests of a step share
their first pages, build() also plans the step as two levels on the host (the prefix level:
every query token as one request over the shared pages, non-causal; the suffix level: each
request over its own later pages) and composes them into ONE plan over the batch's own page
table (fi_backend/metadata/cascade_plan.py): prefix items read the shared pages once per query
tile of the whole batch, suffix items each request's own, and the plan's merge folds both.
Layers run it as any step: one attention launch and one merge. The prefix comes from vLLM
where its V1 runner announces one (`common_prefix_len`, opt-in: CASCADE_ENV), else from the
device (metadata/shared_prefix.py): the host guesses it from an earlier step's measurement,
and the device swaps the composed plan into the live plan buffer only if this step's page
table shares that prefix. The live buffer never moves, so cascade steps run in the same full
CUDA graphs as any other.
"""

from __future__ import annotations

import os
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
from fi_backend.metadata.cascade_plan import compose_cascade_plan
from fi_backend.metadata.plan_layout import (MAX_TILE_ROWS, PlanCapacity, gqa_group_size,
                                             tile_tokens)
from fi_backend.metadata.planner import Plan, Planner
from fi_backend.metadata.shared_prefix import SharedPrefixProbe
from fi_backend.variants import AttentionVariant

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import AttentionSpec

    from fi_backend.attention import BatchAttention

NO_WINDOW = -1

CPU_PLAN_NUM_CTAS = 132
"""Persistent CTAs of plans made on a CPU device (tests without a GPU): an H100's SM count."""

MIN_CASCADE_PREFIX_TOKENS = 256
"""Below this, the prefix reads cascade saves do not pay for its second attention pass and
merge per layer (FlashAttention's backend in vLLM uses the same threshold)."""
MIN_CASCADE_REQUESTS = 8
"""Fewer requests re-read the prefix too few times for cascade to pay off."""
CASCADE_ENV = "FI_BACKEND_CASCADE"
"""Set to 1 to let vLLM's V1 runner announce shared prefixes to this backend. Off by default:
vLLM runs the steps it cascades eagerly between piecewise graphs (CPU-bound end to end, see
benchmarks/NOTES.md), while the prefixes the device finds (SHARED_PREFIX_ENV) cascade inside
full CUDA graphs."""
SHARED_PREFIX_ENV = "FI_BACKEND_SHARED_PREFIX"
"""Set to 0 to never cascade the steps whose shared prefix the device finds
(metadata/shared_prefix.py); on by default."""
CASCADE_WORKSPACE_BYTES = 128 << 20
"""Partial-state workspace that cascade steps may use. Every work item of a composed plan
writes a float32 partial state of MAX_TILE_ROWS rows (the merge folds the prefix's into each
request's), so a cascade step needs one slot per item: 64 decodes over 8 KV heads, about 650
slots (41 MB at head_dim 128). Steps whose composed plan needs more run without cascade."""


@dataclass
class FIMetadata(AttentionMetadata):
    """What every layer of one KV-cache group reads in one step.

    qo_indptr:  device int32 [B + 1], vLLM's `query_start_loc` (exact).
    seq_lens:   device int32 [B], exact KV lengths including this step's tokens.
    kv:         BSR page table over the group's paged cache (views of persistent buffers).
    plans:      window_left -> the step's plan for layers with that window (-1: none). Its
                device buffer holds the composed cascade plan instead where the device
                adopted one (see the module docstring).
    attention:  window_left -> the BatchAttention that runs it (empty on a CPU device).
    cascade_prefix_len: the shared prefix (tokens) a cascade plan was composed for this step
                (0: none); the device adopted it if every request shares that prefix.
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
    cascade_prefix_len: int = 0


def plan_step(planner: Planner, attention: "BatchAttention | None", qo_indptr_host: np.ndarray,
              kv_len_host: np.ndarray, variant: AttentionVariant) -> Plan:
    """The step's plan, through the BatchAttention where there is one (it then checks at run
    time that layers run the variant it was planned for)."""
    if attention is not None:
        return attention.plan(qo_indptr_host, kv_len_host, variant)
    return planner.plan(qo_indptr_host, kv_len_host, variant)


def cascade_pays_off(common_prefix_len: int, query_lens: np.ndarray, group_size: int) -> bool:
    """Whether reading the shared prefix once per query tile of the whole batch (cascade)
    instead of once per query tile of each request saves enough to pay for the second pass.

    Each query tile (`tile_tokens(group_size)` tokens x the GQA group) reads the KV it
    attends to once. Without cascade, request b's ceil(q_len_b / tile) tiles each read the
    prefix; with cascade, the batch's ceil(sum q_len / tile) tiles do. Cascade adds a second
    pass and a merge per layer (a few launches and 2 x num_tokens x heads x head_dim of
    traffic), so it is used only for a prefix of at least MIN_CASCADE_PREFIX_TOKENS shared by
    at least MIN_CASCADE_REQUESTS requests, and only when it at least halves the prefix reads:
    decode and speculative-decode batches (e.g. 64 decodes, group 4: 64 reads -> 2), not
    batches of long prefills, whose tiles are full either way.

    The prefix level is one request holding all query tokens, and the planner requires a
    request's queries to fit its KV (`q_len <= kv_len`): batches with more query tokens than
    prefix tokens are not cascaded (they are prefill-heavy, where cascade saves little)."""
    num_reqs = len(query_lens)
    num_query_tokens = int(np.sum(query_lens))
    if (common_prefix_len < MIN_CASCADE_PREFIX_TOKENS or num_reqs < MIN_CASCADE_REQUESTS
            or num_query_tokens > common_prefix_len):
        return False
    tile = tile_tokens(group_size)
    prefix_reads_per_request = -(-np.asarray(query_lens, dtype=np.int64) // tile)
    prefix_reads_cascade = -(-num_query_tokens // tile)
    return int(prefix_reads_per_request.sum()) >= 2 * prefix_reads_cascade


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


def layer_cascade_blockers(vllm_config: "VllmConfig", layer_names: list[str],
                           window_lefts: tuple[int, ...]) -> list[str]:
    """Why no step of this group can be cascaded, whoever finds the prefix (empty list: any
    may be). Sliding windows and ALiBi depend on the query's position, which the prefix level
    (all queries as one request) does not keep; a sink must enter the softmax once, after the
    merge."""
    blockers = []
    if window_lefts != (NO_WINDOW,):
        blockers.append(f"sliding windows {window_lefts}")
    layers = get_layers_from_vllm_config(vllm_config, AttentionLayerBase, layer_names)
    for name in ("alibi_slopes", "sinks"):
        if any(getattr(layer.impl, name, None) is not None for layer in layers.values()):
            blockers.append(f"layers with {name}")
    return blockers


def vllm_cascade_blockers(vllm_config: "VllmConfig") -> list[str]:
    """Why vLLM never announces a shared prefix to this engine (empty list: it may, where the
    layers allow cascade at all: `layer_cascade_blockers`).

    vLLM 0.26 asks for cascade only in its V1 runner and only when the user opted in
    (`disable_cascade_attn=False`); fi_backend takes part only with CASCADE_ENV=1 (see there
    why)."""
    blockers = []
    if os.environ.get(CASCADE_ENV, "0") != "1":
        blockers.append(f"{CASCADE_ENV} is not 1")
    if getattr(vllm_config.model_config, "disable_cascade_attn", True):
        blockers.append("cascade attention is disabled (disable_cascade_attn)")
    if getattr(vllm_config, "use_v2_model_runner", False):
        blockers.append("vLLM's V2 model runner does not use cascade attention")
    return blockers


def cascade_prefix_len(prefix_len: int, qo_indptr_host: np.ndarray, kv_len_host: np.ndarray,
                       page_size: int) -> int:
    """`prefix_len` cut to whole pages that end before every request's first query by the
    host's KV lengths (upper bounds: the device checks the exact ones before it adopts)."""
    q_len_host = np.diff(qo_indptr_host)
    context_len_host = (kv_len_host - q_len_host)[q_len_host > 0]
    if context_len_host.size:
        prefix_len = min(prefix_len, int(context_len_host.min()))
    return max(prefix_len, 0) // page_size * page_size


def cascade_live_capacity(plain: PlanCapacity, head_dim: int) -> PlanCapacity:
    """Capacities of a live plan buffer that also holds composed cascade plans: at least the
    plain plans' and CASCADE_WORKSPACE_BYTES of partial states (one slot per work item, at
    most two merge items per item)."""
    slot_bytes = MAX_TILE_ROWS * (head_dim + 1) * 4
    slots = max(plain.max_partial_slots, CASCADE_WORKSPACE_BYTES // slot_bytes)
    return PlanCapacity(num_ctas=plain.num_ctas,
                        max_work_items=max(plain.max_work_items, slots),
                        max_merge_items=max(plain.max_merge_items, 2 * slots),
                        max_partial_slots=slots)


class CascadePlanning:
    """What a group whose steps may be cascaded keeps: the level planners (host only: their
    plans are composed, never launched), the planner that stages composed plans on the device
    (the live planner's layout, so the device can copy one over the other) and the probe that
    measures shared prefixes on the device."""

    def __init__(self, make_planner, max_requests: int, kv_len_slack: int,
                 capacity: PlanCapacity, device: torch.device, guess_from_device: bool):
        host = torch.device("cpu")
        # Prefix level: one request with up to max_num_batched_tokens queries over at most a
        # whole sequence of shared pages; its length is host-known, hence exact.
        self.prefix = make_planner(1, 0, host)
        # Suffix level: the batch's requests over their own pages, bounded as the batch's.
        self.suffix = make_planner(max_requests, kv_len_slack, host)
        self.staging = make_planner(max_requests, kv_len_slack, capacity=capacity)
        self.probe = SharedPrefixProbe(device)
        self.guess_from_device = guess_from_device

    def compose(self, prefix_len: int, qo_indptr_host: np.ndarray, kv_len_host: np.ndarray,
                causal: bool) -> Plan | None:
        """The step's composed plan, published into the staging buffer; None where the
        cascade would not pay off or its plan would not fit the capacities."""
        group = self.staging.group_size
        q_len_host = np.diff(qo_indptr_host)
        if not cascade_pays_off(prefix_len, q_len_host, group):
            return None
        # Prefix level: all query tokens as one request over the shared pages, no mask: every
        # query sits after the prefix. Suffix level: each request over its keys after the
        # prefix (queries and keys both lose prefix_len positions, so the batch's causal mask
        # holds unchanged; requests without KV, CUDA-graph padding, stay empty).
        num_query_tokens = int(qo_indptr_host[-1])
        prefix_plan = self.prefix.plan(np.array([0, num_query_tokens], dtype=np.int32),
                                       np.array([prefix_len], dtype=np.int32),
                                       AttentionVariant(causal=False))
        suffix_plan = self.suffix.plan(
            qo_indptr_host, np.maximum(kv_len_host - prefix_len, 0).astype(np.int32),
            AttentionVariant(causal=causal))
        # One slot per item; merge items (at most two per suffix item) then fit as well.
        if prefix_plan.num_work_items + suffix_plan.num_work_items > \
                self.staging.capacity.max_partial_slots:
            return None
        return self.staging.publish(compose_cascade_plan(
            prefix_plan, suffix_plan, qo_indptr_host, prefix_len, tile_tokens(group)))


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

        def make_planner(max_requests: int, slack: int, plan_device: torch.device = device,
                         capacity=None) -> Planner:
            return Planner(
                max_requests=max_requests,
                max_batched_tokens=scheduler_config.max_num_batched_tokens,
                max_model_len=self.max_model_len + slack,
                num_qo_heads=self.num_qo_heads, num_kv_heads=self.num_kv_heads,
                head_dim=self.head_dim, page_size=self.page_size, num_ctas=num_ctas,
                device=plan_device, kv_len_slack=slack, capacity=capacity)

        # Cascade (see the module docstring) where the layers allow it and someone may find
        # a prefix: the live planner then holds composed plans too (cascade_live_capacity).
        self.cascade: CascadePlanning | None = None
        live_capacity = None
        guess_from_device = os.environ.get(SHARED_PREFIX_ENV, "1") != "0"
        layers_allow = not layer_cascade_blockers(vllm_config, layer_names, self.window_lefts)
        vllm_announces = layers_allow and not vllm_cascade_blockers(vllm_config)
        if layers_allow and (guess_from_device or vllm_announces):
            live_capacity = cascade_live_capacity(
                PlanCapacity.for_engine(self.max_requests,
                                        scheduler_config.max_num_batched_tokens,
                                        self.max_model_len + kv_len_slack, self.num_qo_heads,
                                        self.num_kv_heads, num_ctas),
                self.head_dim)
            self.cascade = CascadePlanning(make_planner, self.max_requests, kv_len_slack,
                                           live_capacity, device, guess_from_device)
        self.vllm_announces_cascade = vllm_announces
        self.planners = {window_left: make_planner(self.max_requests, kv_len_slack,
                                                   capacity=live_capacity)
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
        plans = {window_left: plan_step(planner, self.attention.get(window_left),
                                        qo_indptr_host, kv_len_host,
                                        AttentionVariant(causal=causal, window_left=window_left))
                 for window_left, planner in self.planners.items()}
        prefix_len = 0
        if self.cascade is not None:
            prefix_len = self._stage_cascade(common_prefix_len, cam, kv, qo_indptr_host,
                                             kv_len_host, plans[NO_WINDOW], causal)
        return FIMetadata(
            num_actual_tokens=cam.num_actual_tokens, num_reqs=num_reqs, causal=causal,
            qo_indptr=cam.query_start_loc, seq_lens=cam.seq_lens[:num_reqs],
            slot_mapping=cam.slot_mapping, kv=kv, plans=plans, attention=self.attention,
            cascade_prefix_len=prefix_len)

    def _stage_cascade(self, common_prefix_len: int, cam: CommonAttentionMetadata,
                       kv: BlockSparseKV, qo_indptr_host: np.ndarray, kv_len_host: np.ndarray,
                       live: Plan, causal: bool) -> int:
        """Measures this step's shared prefix on the device and, where a prefix is known
        (vLLM's, else the device's from an earlier step) and cascade pays off, composes the
        cascade plan and lets the device adopt it into `live`'s buffer (module docstring).
        Returns the prefix length composed for (0: none)."""
        cascade = self.cascade
        guess = common_prefix_len
        if guess == 0 and cascade.guess_from_device:
            guess = cascade.probe.last_shared_pages() * self.page_size
        cascade.probe.measure(kv, cam.seq_lens, cam.query_start_loc, cam.num_reqs)
        prefix_len = cascade_prefix_len(guess, qo_indptr_host, kv_len_host, self.page_size)
        staged = cascade.compose(prefix_len, qo_indptr_host, kv_len_host, causal)
        if staged is None:
            return 0
        cascade.probe.adopt(staged.buffer, live.buffer, prefix_len // self.page_size)
        # The kernel choice must suit either plan (the portable decode-only kernel would run
        # the composed plan's prefix tiles 16 rows at a time).
        live.max_item_rows = max(live.max_item_rows, staged.max_item_rows)
        return prefix_len

    def use_cascade_attention(self, common_prefix_len: int, query_lens: np.ndarray,
                              num_query_heads: int, num_kv_heads: int, use_alibi: bool,
                              use_sliding_window: bool, use_local_attention: bool,
                              num_sms: int, dcp_world_size: int) -> bool:
        """vLLM's V1 runner asks this each step in which all requests share their first
        `common_prefix_len` tokens; True makes it pass that length to build().

        No cascade where fi_backend takes no part (`vllm_cascade_blockers`) or a level could
        not express the layers' attention (windows, chunked local attention, ALiBi, sinks: see
        `layer_cascade_blockers`; decode context parallelism, which fi_backend does not
        support), else `cascade_pays_off` decides. The tiles are those of this group's planners
        (its own head counts; vLLM passes the same numbers)."""
        if (not self.vllm_announces_cascade or use_alibi or use_sliding_window
                or use_local_attention or dcp_world_size > 1):
            return False
        return cascade_pays_off(common_prefix_len, query_lens,
                                gqa_group_size(self.num_qo_heads, self.num_kv_heads))

    @staticmethod
    def _kv_len_upper_bounds(cam: CommonAttentionMetadata) -> np.ndarray:
        """int32 [B] host upper bounds of the KV lengths, without touching device data."""
        if cam.seq_lens_cpu_upper_bound is not None:
            return np.ascontiguousarray(cam.seq_lens_cpu_upper_bound[:cam.num_reqs].numpy(),
                                        dtype=np.int32)
        # Runners that give no per-request bound still give the batch's (max_seq_len).
        return np.full(cam.num_reqs, cam.max_seq_len, dtype=np.int32)
