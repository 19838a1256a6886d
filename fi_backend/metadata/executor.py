"""CPU executor of a plan: runs every work item with the float32 oracle, the way the
persistent kernels do, so that tests can check a plan against `reference.batch_attention`.

Per work item (request b, KV head h, query tile, KV chunk [kv_start, kv_end)) it clamps the
chunk to the exact length `seq_lens_exact[b]` (the plan was made from upper bounds), runs
`attention_dense` on the tile's query heads `h*group .. h*group+group-1` against KV head h,
and writes either the final output (partial slot -1; sinks applied) or a partial state in
the tile-row layout of plan_layout.py (no sinks). Each merge item then merges its tile's
consecutive partial slots by LSE and applies sinks once. Every query row must be written
exactly once; a plan that misses or repeats a row raises RuntimeError.
"""

from __future__ import annotations

import dataclasses

import torch

from fi_backend import reference
from fi_backend.metadata.block_sparse import BlockSparseKV
from fi_backend.metadata.plan_layout import MAX_TILE_ROWS, MERGE_FIELDS
from fi_backend.metadata.planner import Plan
from fi_backend.variants import AttentionVariant

__all__ = ["execute_plan_reference"]


def _variant_for_kv_head(variant: AttentionVariant, kv_head: int, group: int
                         ) -> AttentionVariant:
    """The variant seen by the query heads of one KV head (per-head parameters sliced)."""
    heads = slice(kv_head * group, (kv_head + 1) * group)
    per_head = {name: torch.as_tensor(getattr(variant, name), dtype=torch.float32)[heads]
                for name in ("alibi_slopes", "sinks") if getattr(variant, name) is not None}
    return dataclasses.replace(variant, **per_head)


def execute_plan_reference(plan: Plan, q: torch.Tensor, qo_indptr: torch.Tensor,
                           kv: BlockSparseKV, variant: AttentionVariant,
                           seq_lens_exact: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `plan` on `q [T, Hq, D]` over the paged cache `kv` -> `(o float32 [T, Hq, D],
    lse float32 [T, Hq])`, to equal `reference.batch_attention(q, qo_indptr, kv, variant)`."""
    num_tokens, num_qo_heads, head_dim = q.shape
    group = plan.group_size
    qo = [int(x) for x in qo_indptr.tolist()]
    seq_lens = [int(x) for x in seq_lens_exact.tolist()]
    kv_per_request = [reference.gather_request_kv(kv, b) for b in range(len(seq_lens))]
    variants = [_variant_for_kv_head(variant, h, group) for h in range(num_qo_heads // group)]

    o = torch.zeros(num_tokens, num_qo_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((num_tokens, num_qo_heads), float("-inf"), dtype=torch.float32,
                     device=q.device)
    times_written = torch.zeros(num_tokens, num_qo_heads, dtype=torch.int32)
    partial_o = torch.zeros(plan.num_partial_slots, MAX_TILE_ROWS, head_dim,
                            dtype=torch.float32, device=q.device)
    partial_lse = torch.full((plan.num_partial_slots, MAX_TILE_ROWS), float("-inf"),
                             dtype=torch.float32, device=q.device)

    def tile_rows(request: int, kv_head: int, q_start: int, q_len: int):
        tokens = slice(qo[request] + q_start, qo[request] + q_start + q_len)
        return tokens, slice(kv_head * group, (kv_head + 1) * group)

    def write_final(tokens, heads, o_tile, lse_tile):
        o[tokens, heads], lse[tokens, heads] = o_tile, lse_tile
        times_written[tokens, heads] += 1

    work = {name: plan.section(name).tolist() for name in (
        "work_request", "work_kv_head", "work_q_start", "work_q_len", "work_kv_start",
        "work_kv_end", "work_partial_slot")}
    indptr = plan.section("cta_work_indptr").tolist()
    if indptr[0] != 0 or indptr[-1] != plan.num_work_items or any(
            a > b for a, b in zip(indptr, indptr[1:])):
        raise RuntimeError(f"cta_work_indptr {indptr} does not partition the "
                           f"{plan.num_work_items} work items")
    for i in range(plan.num_work_items):
        b, h = work["work_request"][i], work["work_kv_head"][i]
        q_start, q_len = work["work_q_start"][i], work["work_q_len"][i]
        slot = work["work_partial_slot"][i]
        if not 0 < q_len * group <= MAX_TILE_ROWS:
            raise RuntimeError(f"work item {i} has {q_len} tokens x group {group} rows; a "
                               f"tile holds 1..{MAX_TILE_ROWS}")
        # Kernels clamp the planned chunk (from KV-length upper bounds) to the exact length.
        kv_end = min(work["work_kv_end"][i], seq_lens[b])
        kv_start = min(work["work_kv_start"][i], kv_end)
        tokens, heads = tile_rows(b, h, q_start, q_len)
        k_b, v_b = kv_per_request[b]
        o_tile, lse_tile = reference.attention_dense(
            q[tokens, heads], k_b[kv_start:kv_end, h:h + 1].to(q.device),
            v_b[kv_start:kv_end, h:h + 1].to(q.device), variants[h],
            q_pos_start=seq_lens[b] - (qo[b + 1] - qo[b]) + q_start, kv_pos_start=kv_start,
            apply_sinks=slot < 0)
        if slot < 0:
            write_final(tokens, heads, o_tile, lse_tile)
        else:
            partial_o[slot, :q_len * group] = o_tile.reshape(q_len * group, head_dim)
            partial_lse[slot, :q_len * group] = lse_tile.reshape(q_len * group)

    merge = {name: plan.section(name).tolist() for name in MERGE_FIELDS}
    for m in range(plan.num_merge_items):
        b, h = merge["merge_request"][m], merge["merge_kv_head"][m]
        q_start, q_len = merge["merge_q_start"][m], merge["merge_q_len"][m]
        rows = q_len * group
        # The item's own slots at its row offset, then (cascade) the extra range at its own.
        ranges = [(merge["merge_slot_start"][m], merge["merge_num_slots"][m],
                   merge["merge_slot_row"][m]),
                  (merge["merge_extra_slot_start"][m], merge["merge_extra_num_slots"][m],
                   merge["merge_extra_slot_row"][m])]
        v_parts = [partial_o[start:start + count, row:row + rows]
                   for start, count, row in ranges if count > 0]
        s_parts = [partial_lse[start:start + count, row:row + rows]
                   for start, count, row in ranges if count > 0]
        # [slots, rows, D] -> [q_len, slots, group, D]: merge_states' (N, S, H, D).
        v_states = torch.cat(v_parts).reshape(-1, q_len, group, head_dim).transpose(0, 1)
        s_states = torch.cat(s_parts).reshape(-1, q_len, group).transpose(0, 1)
        o_tile, lse_tile = reference.merge_states(v_states, s_states)
        if variant.sinks is not None:
            o_tile, lse_tile = reference.apply_sinks(o_tile, lse_tile, variants[h].sinks)
        tokens, heads = tile_rows(b, h, q_start, q_len)
        write_final(tokens, heads, o_tile, lse_tile)

    planned_rows = torch.zeros(num_tokens, dtype=torch.bool)
    for b in range(len(seq_lens)):
        planned_rows[qo[b]:qo[b + 1]] = True
    wrong = (times_written != planned_rows.unsqueeze(1).int()).nonzero()
    if wrong.numel():
        token, head = (int(x) for x in wrong[0])
        raise RuntimeError(f"the plan writes query token {token}, head {head} "
                           f"{int(times_written[token, head])} times; every row exactly once")
    return o, lse
