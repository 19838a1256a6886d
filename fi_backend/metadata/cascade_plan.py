"""One plan for a shared-prefix (cascade) step, over the batch's own page table.

WORK IN PROGRESS (branch wip/one-plan-cascade): validated on the CPU executor; the kernels'
merge reads the cascade merge fields (compiled, not yet run on a GPU); the builder does not
use composed plans yet.

A cascade step today runs two levels (a prefix level: all query tokens as one request over
the shared pages, non-causal; a suffix level: each request over its own pages) and merges
them: two attention launches, two plan merges and a merge_states per layer, all eager and
CPU-bound (benchmarks/NOTES.md). Here the two level plans, made by the level planners as
today, are composed into ONE plan that runs in one launch over the batch's plain page table
(the FlashInfer paper's composable formats, section 3.1):

- A prefix item is an ordinary item of request 0 whose query range [q_start, q_start + q_len)
  spans consecutive requests' tokens (request 0's queries start at token 0, so the pseudo
  request's token offsets are global token indices) over KV [kv_start, kv_end) within the
  shared prefix, which request 0's pages hold. Every query sits after the prefix, so the
  causal clamp and masks leave the whole range visible.
- A suffix item is request b's query tile over its own keys: the suffix level's KV range
  shifted by the prefix length (chunks may start anywhere).
- Every item writes a partial state. Each suffix tile gets merge items that fold its own
  slots (at row offset merge_slot_row) with those of the prefix tile holding its tokens (at
  row offset merge_extra_slot_row: the tokens' rows within that prefix tile); a suffix tile
  whose tokens straddle two prefix tiles gets one merge item per part.

CTA c runs the prefix level's items of CTA c, then the suffix level's: both levels were
balanced over all CTAs, so their sum is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fi_backend.metadata.plan_layout import MERGE_FIELDS, WORK_FIELDS, PlanCapacity

__all__ = ["ComposedPlan", "cascade_capacity", "compose_cascade_plan"]

def cascade_capacity(prefix: PlanCapacity, suffix: PlanCapacity) -> PlanCapacity:
    """Capacities that hold any plan composed from level plans within `prefix` and `suffix`:
    both levels' items, one partial slot per item, and at most two merge items per suffix
    item (a suffix tile's tokens lie in at most two prefix tiles: both hold tile_tokens)."""
    if prefix.num_ctas != suffix.num_ctas:
        raise ValueError("the level capacities must share num_ctas")
    items = prefix.max_work_items + suffix.max_work_items
    return PlanCapacity(num_ctas=suffix.num_ctas, max_work_items=items,
                        max_merge_items=2 * suffix.max_work_items, max_partial_slots=items)


@dataclass
class ComposedPlan:
    """A plan's host sections (plan_layout.py names), with the interface
    fi_backend.metadata.executor reads."""

    group_size: int
    num_ctas: int
    num_work_items: int
    num_merge_items: int
    num_partial_slots: int
    sections: dict[str, np.ndarray]

    def section(self, name: str) -> np.ndarray:
        if name not in self.sections:
            raise ValueError(f"plan section {name!r} does not exist; sections: "
                             f"{', '.join(self.sections)}")
        return self.sections[name]


def _tile_slots(plan, slot_offset: int, next_slot: int):
    """(request, kv_head, q_start) -> (first slot, number of slots, q_len) of every query tile
    of `plan`, numbered from slot_offset for its split tiles; whole tiles get one new slot
    each, numbered from next_slot. Returns (tiles, slot of each work item, next free slot)."""
    work = {name: plan.section(name) for name in WORK_FIELDS}
    item_slot = np.empty(plan.num_work_items, dtype=np.int64)
    tiles: dict[tuple[int, int, int], tuple[int, int, int]] = {}
    for i in range(plan.num_work_items):
        key = (int(work["work_request"][i]), int(work["work_kv_head"][i]),
               int(work["work_q_start"][i]))
        slot = int(work["work_partial_slot"][i])
        if slot < 0:
            item_slot[i] = next_slot
            tiles[key] = (next_slot, 1, int(work["work_q_len"][i]))
            next_slot += 1
        else:
            item_slot[i] = slot + slot_offset
    merge = {name: plan.section(name) for name in MERGE_FIELDS}
    for m in range(plan.num_merge_items):
        key = (int(merge["merge_request"][m]), int(merge["merge_kv_head"][m]),
               int(merge["merge_q_start"][m]))
        tiles[key] = (int(merge["merge_slot_start"][m]) + slot_offset,
                      int(merge["merge_num_slots"][m]), int(merge["merge_q_len"][m]))
    return tiles, item_slot, next_slot


def compose_cascade_plan(prefix_plan, suffix_plan, qo_indptr_host: np.ndarray,
                         prefix_len: int, tile_tokens: int) -> ComposedPlan:
    """One plan equal to the two cascade levels merged (see the module docstring).

    prefix_plan: the prefix level's plan (one request: every query token over prefix_len keys,
        non-causal); suffix_plan: the suffix level's (the batch's requests over their keys
        after the prefix, as causal as the batch), both from planners with the same num_ctas
        and GQA group; qo_indptr_host: the batch's int32 [B + 1] query offsets (exact);
        tile_tokens: query tokens per tile (plan_layout.tile_tokens of the group), which
        aligns the prefix level's tiles at multiples of it."""
    if prefix_plan.group_size != suffix_plan.group_size or \
            prefix_plan.num_ctas != suffix_plan.num_ctas:
        raise ValueError("the level plans must share the GQA group and the CTA count")
    group, num_ctas = suffix_plan.group_size, suffix_plan.num_ctas
    qo = np.asarray(qo_indptr_host, dtype=np.int64)

    # Slots: the prefix level's split pieces keep theirs, its whole tiles follow, then the
    # suffix level's split pieces (shifted) and whole tiles: one slot per work item.
    prefix_tiles, prefix_item_slot, next_slot = _tile_slots(
        prefix_plan, 0, prefix_plan.num_partial_slots)
    suffix_offset = next_slot
    suffix_tiles, suffix_item_slot, next_slot = _tile_slots(
        suffix_plan, suffix_offset, suffix_offset + suffix_plan.num_partial_slots)

    # Work items, CTA by CTA: the prefix level's, then the suffix level's.
    work_out = {name: [] for name in WORK_FIELDS}
    cta_counts = np.zeros(num_ctas, dtype=np.int64)
    prefix_indptr = prefix_plan.section("cta_work_indptr")
    suffix_indptr = suffix_plan.section("cta_work_indptr")
    prefix_work = {name: prefix_plan.section(name) for name in WORK_FIELDS}
    suffix_work = {name: suffix_plan.section(name) for name in WORK_FIELDS}
    for c in range(num_ctas):
        for i in range(int(prefix_indptr[c]), int(prefix_indptr[c + 1])):
            work_out["work_request"].append(0)
            work_out["work_kv_head"].append(int(prefix_work["work_kv_head"][i]))
            work_out["work_q_start"].append(int(prefix_work["work_q_start"][i]))
            work_out["work_q_len"].append(int(prefix_work["work_q_len"][i]))
            work_out["work_kv_start"].append(int(prefix_work["work_kv_start"][i]))
            work_out["work_kv_end"].append(int(prefix_work["work_kv_end"][i]))
            work_out["work_partial_slot"].append(int(prefix_item_slot[i]))
        for i in range(int(suffix_indptr[c]), int(suffix_indptr[c + 1])):
            for name in ("work_request", "work_kv_head", "work_q_start", "work_q_len"):
                work_out[name].append(int(suffix_work[name][i]))
            work_out["work_kv_start"].append(int(suffix_work["work_kv_start"][i]) + prefix_len)
            work_out["work_kv_end"].append(int(suffix_work["work_kv_end"][i]) + prefix_len)
            work_out["work_partial_slot"].append(int(suffix_item_slot[i]))
        cta_counts[c] = (prefix_indptr[c + 1] - prefix_indptr[c]
                         + suffix_indptr[c + 1] - suffix_indptr[c])

    # Merge items: each suffix tile's tokens, cut where a prefix tile ends.
    merge_out = {name: [] for name in MERGE_FIELDS}
    for (request, kv_head, q_start), (slot_start, num_slots, q_len) in sorted(
            suffix_tiles.items()):
        first_token = int(qo[request]) + q_start
        token = first_token
        while token < first_token + q_len:
            prefix_q_start = token // tile_tokens * tile_tokens
            end = min(first_token + q_len, prefix_q_start + tile_tokens)
            extra_start, extra_num, _ = prefix_tiles[(0, kv_head, prefix_q_start)]
            values = {"merge_request": request, "merge_kv_head": kv_head,
                      "merge_q_start": q_start + token - first_token,
                      "merge_q_len": end - token, "merge_slot_start": slot_start,
                      "merge_num_slots": num_slots,
                      "merge_slot_row": (token - first_token) * group,
                      "merge_extra_slot_start": extra_start,
                      "merge_extra_num_slots": extra_num,
                      "merge_extra_slot_row": (token - prefix_q_start) * group}
            for name, value in values.items():
                merge_out[name].append(value)
            token = end

    num_work_items = len(work_out["work_request"])
    num_merge_items = len(merge_out["merge_request"])
    max_merge_rows = max((q * group for q in merge_out["merge_q_len"]), default=0)
    sections = {
        "header": np.array([num_work_items, num_merge_items, num_ctas, next_slot,
                            max_merge_rows], dtype=np.int32),
        "cta_work_indptr": np.concatenate([[0], np.cumsum(cta_counts)]).astype(np.int32),
    }
    for name, values in {**work_out, **merge_out}.items():
        sections[name] = np.asarray(values, dtype=np.int32)
    return ComposedPlan(group_size=group, num_ctas=num_ctas, num_work_items=num_work_items,
                        num_merge_items=num_merge_items, num_partial_slots=next_slot,
                        sections=sections)
