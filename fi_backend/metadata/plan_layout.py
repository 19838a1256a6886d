"""The plan's memory layout: the contract between the host planner and the device kernels.

A plan lives in ONE int32 buffer of fixed size (a pinned host staging copy and a persistent
device copy, filled by one async copy). Its address and size never change for the life of
the engine, so a CUDA graph captured once replays correctly for any batch within the
capacities (DESIGN.md, decision 4). Sections, in order, each a fixed-capacity int32 array:

  header[HEADER_LEN]      num_work_items, num_merge_items, num_ctas, num_partial_slots,
                          max_merge_rows (rows of the largest merge item: the merge kernel
                          spreads each item's rows over CTAs in blocks of a CTA's pass)
  cta_work_indptr[C+1]    work items of persistent CTA c are [indptr[c], indptr[c+1])
  work_request[W]         request index b (row of qo_indptr / seq_lens)
  work_kv_head[W]         KV head; its query heads kv_head*group .. +group-1 are packed as rows
  work_q_start[W]         first query token of the tile, relative to the request's queries
  work_q_len[W]           query tokens in the tile (exact: query lengths are exact on the host)
  work_kv_start[W]        KV chunk [kv_start, kv_end) in token positions of the request;
  work_kv_end[W]            planned from KV-length upper bounds, kernels clamp both to the
                            exact seq_lens[b] read on the device (an empty range is legal)
  work_partial_slot[W]    -1: the item covers the tile's whole KV range and writes the final
                            output (sinks applied); s >= 0: writes partial state to slot s
  merge_request[M]        one merge item per split tile: (request, kv_head, q_start, q_len)
  merge_kv_head[M]          identify the tile, its partial states live in the consecutive
  merge_q_start[M]          slots [slot_start, slot_start + num_slots)
  merge_q_len[M]
  merge_slot_start[M]
  merge_num_slots[M]
  merge_slot_row[M]         row of the tile's first row inside those slots (0 but in cascade
                            plans, metadata/cascade_plan.py, where a merge item may cover
                            part of a tile)
  merge_extra_slot_start[M] a second range of slots folded into the same rows (a cascade
  merge_extra_num_slots[M]    prefix tile's: 0 slots otherwise), its rows starting at row
  merge_extra_slot_row[M]     merge_extra_slot_row of those slots

Tile rows: row r of a tile is (token t = r // group, query head kv_head*group + r % group),
i.e. token-major with the GQA group packed. A tile holds at most MAX_TILE_ROWS rows.
Partial slots: partial_o float32 `[num_partial_slots, MAX_TILE_ROWS, head_dim]` and
partial_lse float32 `[num_partial_slots, MAX_TILE_ROWS]` (natural-log LSE, no sink).
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER_LEN = 5
MAX_TILE_ROWS = 128
"""Rows (query tokens x GQA group) of one work item; the kernels' largest query tile."""

DECODE_TILE_ROWS = 16
"""A tile of at most this many rows is a decode tile: the kernels run it on their decode path."""


def gqa_group_size(num_qo_heads: int, num_kv_heads: int) -> int:
    """Query heads per KV head; its query heads are packed as the rows of one tile."""
    if not (isinstance(num_qo_heads, int) and isinstance(num_kv_heads, int)
            and num_kv_heads >= 1 and num_qo_heads >= num_kv_heads
            and num_qo_heads % num_kv_heads == 0):
        raise ValueError(
            f"num_qo_heads {num_qo_heads!r} must be a positive multiple of num_kv_heads "
            f"{num_kv_heads!r}")
    group = num_qo_heads // num_kv_heads
    if group > MAX_TILE_ROWS:
        raise ValueError(
            f"GQA group size {group} (num_qo_heads {num_qo_heads} / num_kv_heads {num_kv_heads}) "
            f"is not supported: a tile holds at most MAX_TILE_ROWS = {MAX_TILE_ROWS} rows, so "
            f"the group may be at most {MAX_TILE_ROWS}")
    return group


def tile_tokens(group: int) -> int:
    """Query tokens per tile: as many whole GQA groups as fit MAX_TILE_ROWS rows. A request
    whose query fits one tile (every decode request) gets exactly one tile."""
    return MAX_TILE_ROWS // group

WORK_FIELDS = ("work_request", "work_kv_head", "work_q_start", "work_q_len",
               "work_kv_start", "work_kv_end", "work_partial_slot")
MERGE_FIELDS = ("merge_request", "merge_kv_head", "merge_q_start", "merge_q_len",
                "merge_slot_start", "merge_num_slots", "merge_slot_row",
                "merge_extra_slot_start", "merge_extra_num_slots", "merge_extra_slot_row")


@dataclass(frozen=True)
class PlanCapacity:
    """Fixed capacities of a plan; every batch the engine may run must fit them."""

    num_ctas: int
    max_work_items: int
    max_merge_items: int
    max_partial_slots: int

    def __post_init__(self) -> None:
        for name in ("num_ctas", "max_work_items", "max_merge_items", "max_partial_slots"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PlanCapacity.{name} must be an int >= 1, got {value!r}")

    @classmethod
    def for_engine(cls, max_requests: int, max_batched_tokens: int, max_model_len: int,
                   num_qo_heads: int, num_kv_heads: int, num_ctas: int) -> "PlanCapacity":
        """The smallest capacities that hold every batch the engine may schedule.

        The planner (fi_backend/metadata/planner.py) cuts the batch into query tiles of
        `tile_tokens(group)` tokens per KV head and splits KV only where a CTA boundary falls
        inside a tile, so a plan has at most `num_tiles + num_ctas - 1` work items, at most
        `num_ctas - 1` split tiles (merge items) and at most `2 * (num_ctas - 1)` partial
        slots, whatever the KV lengths. The tile count is largest when as many requests as
        allowed hold one query token each (one tile apiece) and the remaining tokens fill
        whole tiles. `max_model_len` bounds no section (chunks are cut where CTAs need them,
        not at a fixed length); it is checked so that the engine's limits are consistent.
        """
        for name, value in (("max_requests", max_requests),
                            ("max_batched_tokens", max_batched_tokens),
                            ("max_model_len", max_model_len), ("num_ctas", num_ctas)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        group = gqa_group_size(num_qo_heads, num_kv_heads)
        single_token_requests = min(max_requests, max_batched_tokens)
        tiles_per_kv_head = (single_token_requests
                             + (max_batched_tokens - single_token_requests) // tile_tokens(group))
        max_splits = num_ctas - 1
        return cls(num_ctas=num_ctas,
                   max_work_items=tiles_per_kv_head * num_kv_heads + max_splits,
                   max_merge_items=max(1, max_splits),
                   max_partial_slots=max(1, 2 * max_splits))


@dataclass(frozen=True)
class PlanLayout:
    """Offsets (in int32 elements) of every section of the plan buffer."""

    capacity: PlanCapacity

    @property
    def offsets(self) -> dict[str, int]:
        cap = self.capacity
        offsets = {"header": 0, "cta_work_indptr": HEADER_LEN}
        cursor = HEADER_LEN + cap.num_ctas + 1
        for name in WORK_FIELDS:
            offsets[name] = cursor
            cursor += cap.max_work_items
        for name in MERGE_FIELDS:
            offsets[name] = cursor
            cursor += cap.max_merge_items
        offsets["_end"] = cursor
        return offsets

    @property
    def num_int32(self) -> int:
        return self.offsets["_end"]

    def section_capacity(self, name: str) -> int:
        """Length (int32 elements) of section `name`; its used prefix is what the header says."""
        cap = self.capacity
        if name == "header":
            return HEADER_LEN
        if name == "cta_work_indptr":
            return cap.num_ctas + 1
        if name in WORK_FIELDS:
            return cap.max_work_items
        if name in MERGE_FIELDS:
            return cap.max_merge_items
        raise ValueError(
            f"plan section {name!r} does not exist; sections: header, cta_work_indptr, "
            f"{', '.join(WORK_FIELDS + MERGE_FIELDS)}")
