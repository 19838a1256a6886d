"""The plan's memory layout: the contract between the host planner and the device kernels.

A plan lives in ONE int32 buffer of fixed size (a pinned host staging copy and a persistent
device copy, filled by one async copy). Its address and size never change for the life of
the engine, so a CUDA graph captured once replays correctly for any batch within the
capacities (DESIGN.md, decision 4). Sections, in order, each a fixed-capacity int32 array:

  header[HEADER_LEN]      num_work_items, num_merge_items, num_ctas, num_partial_slots
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

Tile rows: row r of a tile is (token t = r // group, query head kv_head*group + r % group),
i.e. token-major with the GQA group packed. A tile holds at most MAX_TILE_ROWS rows.
Partial slots: partial_o float32 `[num_partial_slots, MAX_TILE_ROWS, head_dim]` and
partial_lse float32 `[num_partial_slots, MAX_TILE_ROWS]` (natural-log LSE, no sink).
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER_LEN = 4
MAX_TILE_ROWS = 64
"""Rows (query tokens x GQA group) of one work item; the kernels' largest query tile."""

WORK_FIELDS = ("work_request", "work_kv_head", "work_q_start", "work_q_len",
               "work_kv_start", "work_kv_end", "work_partial_slot")
MERGE_FIELDS = ("merge_request", "merge_kv_head", "merge_q_start", "merge_q_len",
                "merge_slot_start", "merge_num_slots")


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
