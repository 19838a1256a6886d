"""The one-plan cascade (fi_backend.metadata.cascade_plan) against the float32 oracle, run by
the CPU plan executor: the two cascade levels' plans composed into one plan over the batch's
own page table must give attention over every request's whole sequence."""

import numpy as np
import pytest
import torch

from fi_backend import reference
from fi_backend.metadata import block_table_to_bsr, split_kv_cache
from fi_backend.metadata.cascade_plan import cascade_capacity, compose_cascade_plan
from fi_backend.metadata.executor import execute_plan_reference
from fi_backend.metadata.plan_layout import tile_tokens
from fi_backend.metadata.planner import Planner
from fi_backend.variants import AttentionVariant

NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE = 8, 2, 16, 4


def level_planner(num_ctas: int, max_requests: int) -> Planner:
    return Planner(max_requests=max_requests, max_batched_tokens=512, max_model_len=1024,
                   num_qo_heads=NUM_QO_HEADS, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM,
                   page_size=PAGE_SIZE, num_ctas=num_ctas, device="cpu")


@pytest.mark.parametrize("q_lens, suffix_lens, prefix_pages, num_ctas", [
    ([1] * 24, [5 + 3 * b for b in range(24)], 20, 7),  # decodes: many per prefix tile
    # (the prefix level holds every query token as one request, so prefix >= tokens)
    ([4] * 10, [9] * 10, 12, 5),  # speculative rows, aligned with prefix tiles
    ([3, 1, 30, 2, 1, 45], [3, 40, 30, 9, 1, 60], 25, 6),  # tiles straddling prefix tiles
    ([1] * 5, [200] * 5, 50, 13),  # long suffixes: the suffix level splits them
    ([2] * 8, [2] * 8, 100, 32),  # long prefix: the prefix level splits it
    ([32] * 3, [40] * 3, 100, 5),  # request tiles exactly as wide as the prefix tiles
])
@pytest.mark.parametrize("soft_cap", [0.0, 20.0])
def test_composed_plan_equals_attention_over_whole_sequences(q_lens, suffix_lens,
                                                             prefix_pages, num_ctas, soft_cap):
    gen = torch.Generator().manual_seed(sum(q_lens) + prefix_pages)
    batch = len(q_lens)
    prefix_len = prefix_pages * PAGE_SIZE
    kv_lens = [prefix_len + n for n in suffix_lens]
    pages = [-(-n // PAGE_SIZE) for n in kv_lens]
    num_pages = prefix_pages + sum(p - prefix_pages for p in pages) + 1
    ids = (torch.randperm(num_pages - 1, generator=gen) + 1).tolist()
    shared, own = ids[:prefix_pages], ids[prefix_pages:]
    block_table = torch.zeros(batch, max(pages), dtype=torch.int32)
    for b, n in enumerate(pages):
        block_table[b, :n] = torch.tensor(shared + own[:n - prefix_pages], dtype=torch.int32)
        own = own[n - prefix_pages:]
    seq_lens = torch.tensor(kv_lens, dtype=torch.int32)
    cache = torch.randn(num_pages, 2, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM, generator=gen)
    k_cache, v_cache = split_kv_cache(cache, "paged_5d")
    kv = block_table_to_bsr(block_table, seq_lens, PAGE_SIZE).with_cache(k_cache, v_cache)
    qo_indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = torch.randn(int(qo_indptr[-1]), NUM_QO_HEADS, HEAD_DIM, generator=gen)
    variant = AttentionVariant(causal=True, logits_soft_cap=soft_cap)

    num_tokens = int(qo_indptr[-1])
    prefix_plan = level_planner(num_ctas, 1).plan(
        np.array([0, num_tokens], np.int32), np.array([prefix_len], np.int32),
        AttentionVariant(causal=False))
    suffix_plan = level_planner(num_ctas, batch).plan(
        qo_indptr, np.array(suffix_lens, np.int32), variant)
    plan = compose_cascade_plan(prefix_plan, suffix_plan, qo_indptr, prefix_len,
                                tile_tokens(NUM_QO_HEADS // NUM_KV_HEADS))

    # Published through a Planner with the composed capacities, as the builder will.
    prefix_planner, suffix_planner = level_planner(num_ctas, 1), level_planner(num_ctas, batch)
    publisher = Planner(max_requests=batch, max_batched_tokens=512, max_model_len=1024,
                        num_qo_heads=NUM_QO_HEADS, num_kv_heads=NUM_KV_HEADS,
                        head_dim=HEAD_DIM, page_size=PAGE_SIZE, num_ctas=num_ctas,
                        capacity=cascade_capacity(prefix_planner.capacity,
                                                  suffix_planner.capacity))
    published = publisher.publish(plan)
    assert published.buffer.tolist() == published._staging.tolist()
    o, lse = execute_plan_reference(published, q, torch.from_numpy(qo_indptr), kv, variant,
                                    seq_lens)
    o_ref, lse_ref = reference.batch_attention(q, torch.from_numpy(qo_indptr), kv, variant)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=1e-5)
    # Every item writes a partial state of its own, and CTA c runs both levels' items of CTA c.
    slots = plan.section("work_partial_slot")
    assert (slots >= 0).all() and len(set(slots.tolist())) == plan.num_work_items
    assert plan.num_partial_slots == plan.num_work_items
    assert plan.num_work_items == prefix_plan.num_work_items + suffix_plan.num_work_items
    assert plan.section("header")[4] == (plan.section("merge_q_len").max()
                                         * (NUM_QO_HEADS // NUM_KV_HEADS))
