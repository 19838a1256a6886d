"""One plan for a shared-prefix (cascade) step, over the batch's own page table.

A cascade step (requests sharing their first pages) could run as two levels, a prefix level
(all query tokens as one request over the shared pages, non-causal) and a suffix level (each
request over its own pages), merged by LSE: two attention launches and a merge per layer, and
a second set of buffers that CUDA graphs would have to capture. Here the two level plans, made
by the level planners as any plan, are composed into ONE plan that runs in one launch over the
batch's plain page table, through the live plan buffer (fi_backend/vllm/builder.py)
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

__all__ = ["ComposedPlan", "compose_cascade_plan"]


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
    """Partial slots of `plan`'s items and tiles: its split pieces keep their slots shifted by
    `slot_offset`, its whole tiles get one new slot each, numbered from `next_slot` in item
    order. Returns (slot of each work item, the tiles as a dict of int64 arrays `kv_head`,
    `request`, `q_start`, `q_len`, `slot_start`, `num_slots` (whole tiles, then split ones),
    next free slot)."""
    slot = plan.section("work_partial_slot").astype(np.int64)
    whole = slot < 0
    num_whole = int(whole.sum())
    item_slot = slot + slot_offset
    item_slot[whole] = next_slot + np.arange(num_whole)
    m = plan.num_merge_items

    def both(work_field: str, merge_field: str) -> np.ndarray:
        return np.concatenate([plan.section(work_field)[whole],
                               plan.section(merge_field)[:m]]).astype(np.int64)

    tiles = {"request": both("work_request", "merge_request"),
             "kv_head": both("work_kv_head", "merge_kv_head"),
             "q_start": both("work_q_start", "merge_q_start"),
             "q_len": both("work_q_len", "merge_q_len"),
             "slot_start": np.concatenate([item_slot[whole],
                                           plan.section("merge_slot_start")[:m] + slot_offset]),
             "num_slots": np.concatenate([np.ones(num_whole, dtype=np.int64),
                                          plan.section("merge_num_slots")[:m]])}
    return item_slot, tiles, next_slot + num_whole


def _cta_of_items(plan) -> np.ndarray:
    indptr = plan.section("cta_work_indptr").astype(np.int64)
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def compose_cascade_plan(prefix_plan, suffix_plan, qo_indptr_host: np.ndarray,
                         prefix_len: int, tile_tokens: int) -> ComposedPlan:
    """One plan equal to the two cascade levels merged (see the module docstring).

    prefix_plan: the prefix level's plan (one request: every query token over prefix_len keys,
        non-causal); suffix_plan: the suffix level's (the batch's requests over their keys
        after the prefix, as causal as the batch), both from planners with the same num_ctas
        and GQA group; qo_indptr_host: the batch's int32 [B + 1] query offsets (exact);
        tile_tokens: query tokens per tile (plan_layout.tile_tokens of the group), which
        aligns the prefix level's tiles at multiples of it.

    Array operations throughout (no loop over items): the builder composes a plan on the host
    every cascade step, for batches of hundreds of requests."""
    if prefix_plan.group_size != suffix_plan.group_size or \
            prefix_plan.num_ctas != suffix_plan.num_ctas:
        raise ValueError("the level plans must share the GQA group and the CTA count")
    group, num_ctas = suffix_plan.group_size, suffix_plan.num_ctas
    qo = np.asarray(qo_indptr_host, dtype=np.int64)

    # Slots: the prefix level's split pieces keep theirs, its whole tiles follow, then the
    # suffix level's split pieces (shifted) and whole tiles: one slot per work item.
    prefix_item_slot, prefix_tiles, next_slot = _tile_slots(
        prefix_plan, 0, prefix_plan.num_partial_slots)
    suffix_offset = next_slot
    suffix_item_slot, suffix_tiles, next_slot = _tile_slots(
        suffix_plan, suffix_offset, suffix_offset + suffix_plan.num_partial_slots)

    # Work items, CTA by CTA: the prefix level's, then the suffix level's (a stable sort by
    # CTA of both levels' items, prefix items first, keeps each level's order within a CTA).
    np_items, ns_items = prefix_plan.num_work_items, suffix_plan.num_work_items
    cta = np.concatenate([_cta_of_items(prefix_plan), _cta_of_items(suffix_plan)])
    order = np.argsort(cta, kind="stable")

    def work(name: str, prefix_values=None, suffix_shift: int = 0) -> np.ndarray:
        prefix = (prefix_plan.section(name)[:np_items] if prefix_values is None
                  else prefix_values)
        suffix = suffix_plan.section(name)[:ns_items].astype(np.int64) + suffix_shift
        return np.concatenate([prefix, suffix])[order].astype(np.int32)

    work_out = {
        "work_request": work("work_request", np.zeros(np_items, dtype=np.int64)),
        "work_kv_head": work("work_kv_head"), "work_q_start": work("work_q_start"),
        "work_q_len": work("work_q_len"),
        "work_kv_start": work("work_kv_start", suffix_shift=prefix_len),
        "work_kv_end": work("work_kv_end", suffix_shift=prefix_len),
        "work_partial_slot": np.concatenate([prefix_item_slot,
                                             suffix_item_slot])[order].astype(np.int32)}
    cta_counts = np.bincount(cta, minlength=num_ctas)

    # Prefix tiles by (KV head, q_start // tile_tokens): they start at multiples of it.
    num_prefix_tiles = -(-int(qo[-1]) // tile_tokens)
    prefix_index = prefix_tiles["kv_head"] * num_prefix_tiles + \
        prefix_tiles["q_start"] // tile_tokens
    extra_start = np.zeros(max(1, int(prefix_index.max(initial=0)) + 1), dtype=np.int64)
    extra_num = np.zeros_like(extra_start)
    extra_start[prefix_index] = prefix_tiles["slot_start"]
    extra_num[prefix_index] = prefix_tiles["num_slots"]

    # Merge items: each suffix tile's tokens (in (request, KV head, q_start) order), cut where
    # a prefix tile ends: a tile holds at most tile_tokens tokens, so it has one or two parts.
    tile_order = np.lexsort((suffix_tiles["q_start"], suffix_tiles["kv_head"],
                             suffix_tiles["request"]))
    tiles = {name: values[tile_order] for name, values in suffix_tiles.items()}
    first_token = qo[tiles["request"]] + tiles["q_start"]
    end_token = first_token + tiles["q_len"]
    first_prefix_tile = first_token // tile_tokens
    num_parts = (end_token - 1) // tile_tokens - first_prefix_tile + 1
    tile_of_part = np.repeat(np.arange(len(first_token)), num_parts)
    part = np.arange(len(tile_of_part)) - np.repeat(np.cumsum(num_parts) - num_parts, num_parts)
    prefix_q_start = (first_prefix_tile[tile_of_part] + part) * tile_tokens
    token = np.maximum(first_token[tile_of_part], prefix_q_start)
    end = np.minimum(end_token[tile_of_part], prefix_q_start + tile_tokens)
    offset_in_tile = token - first_token[tile_of_part]
    kv_head = tiles["kv_head"][tile_of_part]
    extra = kv_head * num_prefix_tiles + prefix_q_start // tile_tokens
    merge_out = {
        "merge_request": tiles["request"][tile_of_part],
        "merge_kv_head": kv_head,
        "merge_q_start": tiles["q_start"][tile_of_part] + offset_in_tile,
        "merge_q_len": end - token,
        "merge_slot_start": tiles["slot_start"][tile_of_part],
        "merge_num_slots": tiles["num_slots"][tile_of_part],
        "merge_slot_row": offset_in_tile * group,
        "merge_extra_slot_start": extra_start[extra],
        "merge_extra_num_slots": extra_num[extra],
        "merge_extra_slot_row": (token - prefix_q_start) * group}

    num_work_items = np_items + ns_items
    num_merge_items = len(tile_of_part)
    max_merge_rows = int(merge_out["merge_q_len"].max(initial=0)) * group
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
