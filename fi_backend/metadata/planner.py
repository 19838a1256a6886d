"""Load-balanced planner: cuts a batch's attention into work items for a fixed grid of
persistent CTAs and writes them into the fixed plan buffer (layout: plan_layout.py).

plan() runs on the host once per engine step from host copies of the lengths (query lengths
exact, KV lengths upper bounds: kernels clamp to the exact `seq_lens` on the device). Its hot
path is `fi_backend._C.PlanScheduler` (csrc/planner.cpp); this module owns the buffers, the
parameters and their documentation.

Work items
----------
A request's queries are cut into tiles of `tile_tokens(group) = MAX_TILE_ROWS // group`
tokens per KV head; a tile's rows are its tokens x the GQA group (token-major). A request
whose `q_len * group <= DECODE_TILE_ROWS` (every decode) is therefore one small tile, which
the kernels run on their decode path; decode and prefill tiles share one plan. Each tile
sees the KV range `[kv_begin, kv_end)`: causal ends it after the tile's last query, a sliding
window starts it at the window of the tile's first query. Because the planned KV length is
an upper bound, the window start is taken at the smallest exact length the bound may stand
for (`kv_len - kv_len_slack`, at least `q_len`), so no key an exact length needs is trimmed.
A work item is (request, KV head, tile, KV chunk); an unsplit tile is one item.

Cost model
----------
An item with R rows over N KV tokens costs
`(N' + item_overhead_tokens) * (kv_load_rows + R') + row_overhead_tokens * R'`
with `R'` = R rounded up to `row_granule` (16, the MMA row granule: a 4-row decode tile
computes 16 rows) and `N'` = N rounded up to `kv_tile_tokens` (64, the kernels' KV tile: the
first tile of a causal prefill, 16 keys, computes a whole 64-key tile). Why this form: per KV
token a CTA (a) streams the token's K and V rows from memory and (b) multiplies them with its
R' query rows (QK^T and PV, 4 * head_dim FLOPs per row) and exponentiates R' logits. (a) is
independent of R: at H100's ~300 FLOP per byte of HBM bandwidth a KV token (4 * head_dim
bytes) takes as long as the MMA work of ~300 rows, but prefill tiles find their KV mostly in
L2 (the request's other tiles read the same pages), and softmax costs more than MMA per row;
`kv_load_rows = 64` puts a KV token's load between the L2 and HBM figures, so a decode token
costs 64 + 16 = 80 and a full 128-row prefill token 192. Each item also pays a fixed part
(`item_overhead_tokens` = 32: the chain of dependent metadata loads and the pipeline fill)
and a part per row (`row_overhead_tokens` per padded row: the query tile's load, the output
or float32 partial state written, and the tile's first S = Q K^T and last P V, which run
without the other half of the software pipeline beside them). The per-row part was
calibrated on an H100 (bench_kernels.py --cost-model, causal prefill of 32 query / 8 KV
heads, items of 128 rows): at 0, CTAs holding many short items ran up to 1.4x longer than
the mean (Nsight Compute: SMs active 65 % of the kernel at 1 x 4096); 320 / 448 / 576 / 704
took 1 x 4096 from 436 us to 359 / 344 / 323 / 311 us on the Hopper kernels, and 448 the
portable kernels' from 877 to 836 us. The default, 512, lies between the best points;
decode is unaffected (within 2 %). Only ratios of costs matter to the policy below.

Split policy
------------
Two schedules; the plan uses the first when it is balanced enough, else the second.

List schedule (whole tiles). The tiles are listed in KV-locality order (request, then KV
head, then query tile from the last, i.e. the longest under causal masking) and each goes,
whole, to the CTA with the smallest estimated load so far: the CTA the kernel frees first,
so CTAs run the tiles in about the order of the list and concurrent CTAs share KV pages in
L2. It is used when no CTA exceeds the mean cost by more than `overfill_fraction`. Why: the
stream cut below gives CTA c a consecutive stretch of the list, so at any moment the 132
CTAs read 132 far-apart stretches: at causal 1 x 16384 (8 KV heads, 64 MB of KV, more than
the L2) Nsight Compute measured an L2 hit rate of 56 % and 5.6 GB read from DRAM on the
Hopper kernels; with the list schedule, 97 % and 0.2 GB, and the kernel ran 1.13x faster
(1 x 4096: 1.29x). Splitting is then never needed, so such plans have no merges.
The last `sorted_tail_per_cta * num_ctas` tiles of the list are dealt longest first (the LPT
order): dealt in list order, the last (request, KV head)'s long causal tiles arrive when the
loads are nearly even and overfill the CTAs that take them; sorted, the last tiles dealt are
the batch's shortest. At causal 8 x 2048 on the portable kernels' 264 CTAs the plain order
left the busiest CTA 5.8 % above the mean, so the stream cut ran instead, with the CTAs
reading all 64 (request, KV head) pairs (67 MB) at once: L2 hit rate 31-42 % on an H100
(ncu), against 78-86 % under the list schedule. With the sorted tail the list schedule
balances within 1.3 % there, and within 2.3 % on the batches simulated (causal 1 x 16384 to
64 x 256, 132 and 264 CTAs); the tail spans only a few (request, KV head) pairs.

Stream cut (splits). When the list schedule would leave a CTA too heavy (few or long
tiles: small decode batches, one long request), all tiles form one stream (request, then
KV head, then query tile: consecutive items of a CTA reuse KV pages) and the stream is cut
into `num_ctas` consecutive pieces of equal cost, like a stream-K decomposition: CTA c takes
items until its target is reached: the unassigned
cost over the CTAs still to fill (plus the overhead the remaining splits will add), but never
less than the first CTA's target, so that CTAs left light by earlier whole tiles stay light
instead of splitting tiles that would not lower the busiest CTA's cost. When the
next tile overfills a CTA by more than `overfill_fraction` of its target, the tile is split
at the KV position that fills the CTA exactly; the rest continues in the next CTA. Chunk
boundaries sit on multiples of `chunk_align_tokens` (64: whole KV tiles, whole pages). A chunk
(and the rest) holds at least `min_chunk_tokens` (512) tokens: a split item pays a fixed
cost (a chain of dependent metadata loads, the pipeline fill, a float32 partial state written
and read back by the merge) worth a few hundred tokens, so shorter chunks cost more than they
balance. When that forbids a cut, the CTA closes a little early and the tile moves on. When a
CTA's whole share is below the minimum chunk (little work, e.g. one decode of 512 tokens over
132 SMs), an empty CTA takes one minimum chunk, or the whole rest when no minimum chunk would
remain: the work then runs on fewer CTAs, some idle, which is faster than cutting it into
tiny pieces for all of them and merging those. How few: when the batch's KV tokens per CTA
(all KV heads) times `small_work_chunk_factor` (4) fall below `min_chunk_tokens`, the plan's
minimum chunk is that product rounded up to a power of two, at least two alignment units
(128). A single decode of 512 tokens then runs in 128-token chunks on 32 CTAs of the
portable kernels instead of 8 chunks of 512 on 8 CTAs: each of those CTAs walked 8 KV tiles
one after another, latency-bound. Measured on an H100 (portable kernels, 264 CTAs,
min_chunk_tokens 512 / 256 / 128 for every batch): 1 x 512 decode 17.5 / 15.7 / 14.3 us,
1 x 2048 20.8 / 18.3 / 20.0 us, while 1 x 8192 (31.9 / 34.3 / 35.2) and 16 x 512 (26.9 /
29.5 / 29.5) need 512; the Hopper kernels' 132 CTAs showed 512 best or equal on all four.
The rule gives 128, 256, 512 and 512 there.
Consequences: when every CTA's share is at least a minimum chunk, every CTA's cost is within a
few percent of the mean by construction; otherwise no CTA holds more than about two minimum
chunks of one tile. Splits happen only at CTA boundaries (at most num_ctas - 1 splits, hence
the capacities in `PlanCapacity.for_engine` do not depend on KV lengths). A plan costs at most
three passes over the tiles (the list schedule's heap holds one entry per CTA).

Partial states: a split tile's pieces are consecutive items and own consecutive partial
slots; one merge item per split tile names them. An unsplit tile writes the final output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fi_backend._streams import current_raw_stream
from fi_backend.metadata.plan_layout import (HEADER_LEN, MAX_TILE_ROWS, MERGE_FIELDS,
                                             WORK_FIELDS, PlanCapacity, PlanLayout,
                                             gqa_group_size, tile_tokens)
from fi_backend.variants import AttentionVariant

__all__ = ["CostModel", "SplitPolicy", "Plan", "Planner", "cta_costs"]

SECTIONS = ("header", "cta_work_indptr") + WORK_FIELDS + MERGE_FIELDS


def _load_scheduler_module():
    try:
        from fi_backend import _C
    except ImportError as error:
        raise ImportError(
            "fi_backend._C is not built, and the planner's hot path lives there: run "
            "`pip install -e . --no-build-isolation` (see setup.py)") from error
    return _C


@dataclass(frozen=True)
class CostModel:
    """Estimated cost of a work item (see the module docstring, "Cost model")."""

    kv_load_rows: float = 64.0
    row_granule: int = 16
    kv_tile_tokens: int = 64
    item_overhead_tokens: float = 32.0
    row_overhead_tokens: float = 512.0

    def item_cost(self, rows, kv_tokens):
        """Cost of items with `rows` rows over `kv_tokens` KV tokens (numbers or arrays)."""
        padded_rows = -(-np.asarray(rows) // self.row_granule) * self.row_granule
        charged_tokens = -(-np.asarray(kv_tokens) // self.kv_tile_tokens) * self.kv_tile_tokens
        return ((charged_tokens + self.item_overhead_tokens) * (self.kv_load_rows + padded_rows)
                + self.row_overhead_tokens * padded_rows)


@dataclass(frozen=True)
class SplitPolicy:
    """How tiles are scheduled on the CTAs (module docstring, "Split policy"). overfill_fraction
    bounds both how far the list schedule of whole tiles may load a CTA above the mean and how
    far the stream cut may overfill a CTA's target instead of splitting a tile;
    small_work_chunk_factor lowers min_chunk_tokens for batches with little KV per CTA (0:
    never);
    sorted_tail_per_cta x num_ctas is how many of the list's last tiles are dealt longest
    first (0: the plain locality order)."""

    overfill_fraction: float = 0.05
    min_chunk_tokens: int = 512
    small_work_chunk_factor: int = 4
    chunk_align_tokens: int = 64
    sorted_tail_per_cta: int = 2

    def __post_init__(self) -> None:
        if not (isinstance(self.chunk_align_tokens, int) and self.chunk_align_tokens >= 1
                and isinstance(self.min_chunk_tokens, int)
                and self.min_chunk_tokens >= self.chunk_align_tokens):
            raise ValueError(
                f"SplitPolicy needs chunk_align_tokens >= 1 and min_chunk_tokens >= "
                f"chunk_align_tokens; got {self.chunk_align_tokens!r} and "
                f"{self.min_chunk_tokens!r}")
        for name in ("small_work_chunk_factor", "sorted_tail_per_cta"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"SplitPolicy.{name} must be an int >= 0; got {value!r}")


class Plan:
    """One batch's plan: the persistent device buffer (its contents valid for this batch
    until the next plan() call) and host views of what was written.

    `section(name)` is the used part of a section in the pinned host staging buffer; it is
    overwritten by the next plan() of the same Planner."""

    __slots__ = ("buffer", "layout", "group_size", "num_work_items", "num_merge_items",
                 "num_partial_slots", "_staging", "max_item_rows")

    def __init__(self, buffer: torch.Tensor, layout: PlanLayout, group_size: int,
                 num_work_items: int, num_merge_items: int, num_partial_slots: int,
                 staging: np.ndarray) -> None:
        self.buffer = buffer
        self.layout = layout
        self.group_size = group_size
        self.num_work_items = num_work_items
        self.num_merge_items = num_merge_items
        self.num_partial_slots = num_partial_slots
        self._staging = staging
        # Rows (query tokens x GQA group) of the largest work item, 0 without items; at most
        # DECODE_TILE_ROWS means a decode batch. Read now: the staging buffer is rewritten by
        # the planner's next plan().
        q_len = self.section("work_q_len")
        self.max_item_rows = int(q_len.max()) * group_size if q_len.size else 0

    @property
    def num_ctas(self) -> int:
        return self.layout.capacity.num_ctas

    def section(self, name: str) -> np.ndarray:
        """int32 host view of the used prefix of section `name` (plan_layout.py)."""
        if name == "header":
            used = HEADER_LEN
        elif name == "cta_work_indptr":
            used = self.num_ctas + 1
        elif name in WORK_FIELDS:
            used = self.num_work_items
        elif name in MERGE_FIELDS:
            used = self.num_merge_items
        else:
            raise ValueError(f"plan section {name!r} does not exist; sections: "
                             f"{', '.join(SECTIONS)}")
        start = self.layout.offsets[name]
        return self._staging[start:start + used]

    def as_on_device(self) -> "Plan":
        """The plan the device buffer holds now, read back (synchronizes; for tests and
        debugging): after a device-side adoption (metadata/shared_prefix.py) it is the
        composed cascade plan, not the one this host object describes."""
        values = self.buffer.cpu().numpy()
        header = values[self.layout.offsets["header"]:]
        return Plan(self.buffer, self.layout, self.group_size, int(header[0]), int(header[1]),
                    int(header[3]), values)


def cta_costs(plan: Plan, cost_model: CostModel) -> np.ndarray:
    """float64 [num_ctas]: the estimated cost of each CTA's work items."""
    rows = plan.section("work_q_len") * plan.group_size
    kv_tokens = plan.section("work_kv_end") - plan.section("work_kv_start")
    item_costs = cost_model.item_cost(rows, kv_tokens).astype(np.float64)
    indptr = plan.section("cta_work_indptr")
    cumulative = np.concatenate([[0.0], np.cumsum(item_costs)])
    return cumulative[indptr[1:]] - cumulative[indptr[:-1]]


class Planner:
    """Owns one engine's plan buffers (fixed for its life) and plans batches into them.

    Capacities come from the engine limits (`PlanCapacity.for_engine`) unless `capacity` is
    given. `kv_len_slack`: how much the KV lengths handed to plan() may exceed the exact
    lengths (0 when they are exact). On a CUDA `device` the staging buffer is pinned and each
    plan is published on the current stream by async copies of the used part only: header
    and CTA ranges, then one 2D copy for the work sections and one for the merge sections
    (sections sit at their capacity's pitch, so a whole-buffer copy would move hundreds of KB
    per step for a few KB of plan). plan() waits for the previous plan's copy before it
    rewrites the staging buffer. On a CPU `device` the "device" buffer is a second CPU
    tensor, filled by memcpy."""

    def __init__(self, *, max_requests: int, max_batched_tokens: int, max_model_len: int,
                 num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
                 num_ctas: int, device: torch.device | str = "cpu", kv_len_slack: int = 0,
                 capacity: PlanCapacity | None = None, cost_model: CostModel = CostModel(),
                 split_policy: SplitPolicy = SplitPolicy()) -> None:
        self.group_size = gqa_group_size(num_qo_heads, num_kv_heads)
        for name, value in (("head_dim", head_dim), ("page_size", page_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(kv_len_slack, int) or kv_len_slack < 0:
            raise ValueError(f"kv_len_slack must be an int >= 0, got {kv_len_slack!r}")
        if capacity is None:
            capacity = PlanCapacity.for_engine(max_requests, max_batched_tokens, max_model_len,
                                               num_qo_heads, num_kv_heads, num_ctas)
        elif capacity.num_ctas != num_ctas:
            raise ValueError(f"capacity.num_ctas {capacity.num_ctas} differs from num_ctas "
                             f"{num_ctas}")
        self.num_qo_heads = num_qo_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.page_size = page_size
        self.kv_len_slack = kv_len_slack
        self.cost_model = cost_model
        self.split_policy = split_policy
        self.layout = PlanLayout(capacity)
        self.device = torch.device(device)
        self._is_cuda = self.device.type == "cuda"
        if self._is_cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

        self._staging = torch.zeros(self.layout.num_int32, dtype=torch.int32,
                                    pin_memory=self._is_cuda)
        self._staging_np = self._staging.numpy()
        self.buffer = torch.zeros(self.layout.num_int32, dtype=torch.int32, device=self.device)

        config = _load_scheduler_module().PlanSchedulerConfig()
        for name, value in (
                ("num_kv_heads", num_kv_heads), ("group_size", self.group_size),
                ("tile_tokens", tile_tokens(self.group_size)), ("num_ctas", num_ctas),
                ("max_requests", max_requests), ("max_batched_tokens", max_batched_tokens),
                ("max_model_len", max_model_len), ("kv_len_slack", kv_len_slack),
                ("max_work_items", capacity.max_work_items),
                ("max_merge_items", capacity.max_merge_items),
                ("max_partial_slots", capacity.max_partial_slots),
                ("kv_load_rows", cost_model.kv_load_rows),
                ("row_granule", cost_model.row_granule),
                ("kv_tile_tokens", cost_model.kv_tile_tokens),
                ("item_overhead_tokens", cost_model.item_overhead_tokens),
                ("row_overhead_tokens", cost_model.row_overhead_tokens),
                ("overfill_fraction", split_policy.overfill_fraction),
                ("min_chunk_tokens", split_policy.min_chunk_tokens),
                ("small_work_chunk_factor", split_policy.small_work_chunk_factor),
                ("chunk_align_tokens", split_policy.chunk_align_tokens),
                ("sorted_tail_per_cta", split_policy.sorted_tail_per_cta)):
            setattr(config, name, value)
        # Copies of plans composed on the host (publish), awaited before the next one.
        self._publish_done = torch.cuda.Event() if self._is_cuda else None
        self._publish_pending = False
        offsets = self.layout.offsets
        self._scheduler = _load_scheduler_module().PlanScheduler(
            config, [offsets[name] for name in SECTIONS], self._staging.data_ptr(),
            self.buffer.data_ptr(), self._is_cuda)

    @property
    def capacity(self) -> PlanCapacity:
        return self.layout.capacity

    @property
    def partial_o_shape(self) -> tuple[int, int, int]:
        """float32 partial outputs `(max_partial_slots, MAX_TILE_ROWS, head_dim)`."""
        return (self.capacity.max_partial_slots, MAX_TILE_ROWS, self.head_dim)

    @property
    def partial_lse_shape(self) -> tuple[int, int]:
        """float32 natural-log partial LSEs `(max_partial_slots, MAX_TILE_ROWS)`."""
        return (self.capacity.max_partial_slots, MAX_TILE_ROWS)

    def publish(self, composed) -> Plan:
        """Publishes a plan composed on the host (metadata.cascade_plan.ComposedPlan) through
        this Planner's fixed buffers: checks it against the capacities (ValueError, nothing
        written), waits for the previous publish's copy, writes its sections into the staging
        buffer and copies the whole buffer to the device on the current stream. A Planner
        that publishes composed plans does not also plan() (each path awaits only its own
        copies)."""
        cap = self.capacity
        for what, count, limit in (("work items", composed.num_work_items, cap.max_work_items),
                                   ("merge items", composed.num_merge_items,
                                    cap.max_merge_items),
                                   ("partial slots", composed.num_partial_slots,
                                    cap.max_partial_slots)):
            if count > limit:
                raise ValueError(f"composed plan has {count} {what}; the capacity is {limit}")
        if composed.num_ctas != cap.num_ctas or composed.group_size != self.group_size:
            raise ValueError(f"composed plan for {composed.num_ctas} CTAs and GQA group "
                             f"{composed.group_size}; this Planner has {cap.num_ctas} and "
                             f"{self.group_size}")
        if self._publish_pending:
            self._publish_done.synchronize()
        offsets = self.layout.offsets
        for name in SECTIONS:
            values = composed.section(name)
            self._staging_np[offsets[name]:offsets[name] + len(values)] = values
        if self._is_cuda:
            self.buffer.copy_(self._staging, non_blocking=True)
            self._publish_done.record()
            self._publish_pending = True
        else:
            self.buffer.copy_(self._staging)
        return Plan(self.buffer, self.layout, self.group_size, composed.num_work_items,
                    composed.num_merge_items, composed.num_partial_slots, self._staging_np)

    def plan(self, qo_indptr_host: np.ndarray, kv_len_host: np.ndarray,
             variant: AttentionVariant) -> Plan:
        """Plan a batch: `qo_indptr_host` int32 [B+1] (exact), `kv_len_host` int32 [B] (upper
        bounds, at most `kv_len_slack` above the exact lengths). Raises ValueError, having
        written nothing, when the batch does not fit the capacities."""
        stream = current_raw_stream(self.device) if self._is_cuda else 0
        num_work_items, num_merge_items, num_partial_slots = self._scheduler.plan(
            qo_indptr_host, kv_len_host, variant.causal, variant.window_left, stream)
        return Plan(self.buffer, self.layout, self.group_size, num_work_items,
                    num_merge_items, num_partial_slots, self._staging_np)
