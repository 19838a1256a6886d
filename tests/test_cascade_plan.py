"""The one-plan cascade (fi_backend.metadata.cascade_plan) against the float32 oracle, run by
the CPU plan executor: the two cascade levels' plans composed into one plan over the batch's
own page table must give attention over every request's whole sequence."""

import numpy as np
import pytest
import torch

from fi_backend import reference
from fi_backend.metadata import block_table_to_bsr, split_kv_cache
from fi_backend.metadata.cascade_plan import compose_cascade_plan
from fi_backend.metadata.executor import execute_plan_reference
from fi_backend.metadata.plan_layout import PlanCapacity, tile_tokens
from fi_backend.metadata.planner import Planner
from fi_backend.variants import AttentionVariant

HEAD_DIM, PAGE_SIZE = 16, 4
# (query heads, KV heads): GQA group 4 (a tile holds 32 tokens), 7 (Qwen2.5-7B's 28 / 4: 18
# tokens, so tiles and requests never align), 1 (MHA: 128 tokens) and 16 (8 tokens).
HEADS = [(8, 2), (28, 4), (4, 4), (16, 1)]


def cascade_capacity(prefix: PlanCapacity, suffix: PlanCapacity) -> PlanCapacity:
    """Capacities that hold any plan composed from level plans within `prefix` and `suffix`
    (the builder bounds its live buffer by bytes instead, vllm/builder.py):
    both levels' items, one partial slot per item, and at most two merge items per suffix
    item (a suffix tile's tokens lie in at most two prefix tiles: both hold tile_tokens)."""
    if prefix.num_ctas != suffix.num_ctas:
        raise ValueError("the level capacities must share num_ctas")
    items = prefix.max_work_items + suffix.max_work_items
    return PlanCapacity(num_ctas=suffix.num_ctas, max_work_items=items,
                        max_merge_items=2 * suffix.max_work_items, max_partial_slots=items)


CASES = [
    ([1] * 24, [5 + 3 * b for b in range(24)], 20, 7),  # decodes: many per prefix tile
    # (the prefix level holds every query token as one request, so prefix >= tokens)
    ([4] * 10, [9] * 10, 12, 5),  # speculative rows, aligned with prefix tiles
    ([3, 1, 30, 2, 1, 45], [3, 40, 30, 9, 1, 60], 25, 6),  # tiles straddling prefix tiles
    ([1] * 5, [200] * 5, 50, 13),  # long suffixes: the suffix level splits them
    ([2] * 8, [2] * 8, 100, 32),  # long prefix: the prefix level splits it
    ([32] * 3, [40] * 3, 100, 5),  # request tiles exactly as wide as the prefix tiles
]


def shared_prefix_batch(q_lens, suffix_lens, prefix_pages, page_size, num_kv_heads, head_dim,
                        num_qo_heads, dtype=torch.float32, device="cpu"):
    """A batch whose requests share their first `prefix_pages` pages (the same page ids in
    every block-table row) and then own `suffix_lens[b]` tokens on pages of their own, in
    shuffled page order. Returns (q, qo_indptr host int32 [B + 1], kv with the cache attached,
    seq_lens int32 [B] on `device`, prefix_len)."""
    gen = torch.Generator().manual_seed(sum(q_lens) + prefix_pages)
    batch = len(q_lens)
    prefix_len = prefix_pages * page_size
    kv_lens = [prefix_len + n for n in suffix_lens]
    pages = [-(-n // page_size) for n in kv_lens]
    num_pages = prefix_pages + sum(p - prefix_pages for p in pages) + 1
    ids = (torch.randperm(num_pages - 1, generator=gen) + 1).tolist()
    shared, own = ids[:prefix_pages], ids[prefix_pages:]
    block_table = torch.zeros(batch, max(pages), dtype=torch.int32)
    for b, n in enumerate(pages):
        block_table[b, :n] = torch.tensor(shared + own[:n - prefix_pages], dtype=torch.int32)
        own = own[n - prefix_pages:]
    seq_lens = torch.tensor(kv_lens, dtype=torch.int32, device=device)
    cache = torch.randn(num_pages, 2, page_size, num_kv_heads, head_dim, generator=gen)
    k_cache, v_cache = split_kv_cache(cache.to(device=device, dtype=dtype), "paged_5d")
    kv = block_table_to_bsr(block_table.to(device), seq_lens, page_size).with_cache(
        k_cache, v_cache)
    qo_indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = torch.randn(int(qo_indptr[-1]), num_qo_heads, head_dim, generator=gen)
    return q.to(device=device, dtype=dtype), qo_indptr, kv, seq_lens, prefix_len


def composed_plan(q_lens, suffix_lens, qo_indptr, prefix_len, num_ctas, variant,
                  planner_args, device="cpu"):
    """The composed plan of a cascade step, published through a Planner with the composed
    capacities on `device` (as the builder does). Returns (host plan, published plan,
    the publishing Planner, the level plans)."""
    def level(max_requests, plan_device="cpu"):
        return Planner(max_requests=max_requests, num_ctas=num_ctas, device=plan_device,
                       **planner_args)

    num_tokens = int(qo_indptr[-1])
    prefix_planner, suffix_planner = level(1), level(len(q_lens))
    prefix_plan = prefix_planner.plan(np.array([0, num_tokens], np.int32),
                                      np.array([prefix_len], np.int32),
                                      AttentionVariant(causal=False))
    suffix_plan = suffix_planner.plan(qo_indptr, np.array(suffix_lens, np.int32), variant)
    group = planner_args["num_qo_heads"] // planner_args["num_kv_heads"]
    plan = compose_cascade_plan(prefix_plan, suffix_plan, qo_indptr, prefix_len,
                                tile_tokens(group))
    publisher = Planner(max_requests=len(q_lens), num_ctas=num_ctas, device=device,
                        capacity=cascade_capacity(prefix_planner.capacity,
                                                  suffix_planner.capacity), **planner_args)
    return plan, publisher.publish(plan), publisher, (prefix_plan, suffix_plan)


@pytest.mark.parametrize("q_lens, suffix_lens, prefix_pages, num_ctas", CASES)
@pytest.mark.parametrize("soft_cap", [0.0, 20.0])
@pytest.mark.parametrize("heads", HEADS)
def test_composed_plan_equals_attention_over_whole_sequences(q_lens, suffix_lens,
                                                             prefix_pages, num_ctas, soft_cap,
                                                             heads):
    num_qo_heads, num_kv_heads = heads
    q, qo_indptr, kv, seq_lens, prefix_len = shared_prefix_batch(
        q_lens, suffix_lens, prefix_pages, PAGE_SIZE, num_kv_heads, HEAD_DIM, num_qo_heads)
    variant = AttentionVariant(causal=True, logits_soft_cap=soft_cap)
    planner_args = dict(max_batched_tokens=512, max_model_len=1024, num_qo_heads=num_qo_heads,
                        num_kv_heads=num_kv_heads, head_dim=HEAD_DIM, page_size=PAGE_SIZE)
    plan, published, _, (prefix_plan, suffix_plan) = composed_plan(
        q_lens, suffix_lens, qo_indptr, prefix_len, num_ctas, variant, planner_args)
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
                                         * (num_qo_heads // num_kv_heads))


def _relative_error(o, o_ref):
    return float(torch.linalg.norm(o.float() - o_ref) / torch.linalg.norm(o_ref))


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["sm80", "sm90"])
@pytest.mark.parametrize("heads, dtype", [((32, 8), torch.bfloat16), ((28, 4), torch.float16)])
@pytest.mark.parametrize("q_lens, suffix_lens, prefix_pages, num_ctas, head_dim", [
    ([1] * 64, [1 + 7 * b for b in range(64)], 128, 132, 128),  # decodes over a long prefix
    ([4] * 16, [30 + b for b in range(16)], 40, 132, 128),  # speculative rows
    ([3, 1, 30, 2, 1, 45], [3, 40, 30, 9, 1, 60], 25, 66, 64),  # straddling tiles
    ([1] * 12, [300] * 12, 64, 132, 256),  # long suffixes split
])
def test_composed_plan_on_the_kernels_matches_the_oracle(family, heads, dtype, q_lens,
                                                         suffix_lens, prefix_pages, num_ctas,
                                                         head_dim):
    """The kernels (both families) run a composed plan as any plan: one launch and the plan
    merge, which folds each suffix tile's slots with its prefix tile's rows."""
    from fi_backend.attention import BatchAttention

    if family == "sm90" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm90 family needs an sm90 device")
    page_size, (num_qo_heads, num_kv_heads) = 16, heads
    q, qo_indptr, kv, seq_lens, prefix_len = shared_prefix_batch(
        q_lens, suffix_lens, prefix_pages, page_size, num_kv_heads, head_dim, num_qo_heads,
        dtype=dtype, device="cuda")
    variant = AttentionVariant(causal=True)
    args = dict(max_batched_tokens=2048, max_model_len=8192, num_qo_heads=num_qo_heads,
                num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size)
    _, published, publisher, _ = composed_plan(q_lens, suffix_lens, qo_indptr, prefix_len,
                                               num_ctas, variant, args, device="cuda")
    attention = BatchAttention(publisher, family=family)
    out = torch.full_like(q, float("nan"))
    o, lse = attention.run(q, kv.k_cache, kv.v_cache, kv, seq_lens,
                           torch.from_numpy(qo_indptr).cuda(), variant, out=out,
                           return_lse=True, plan=published)
    o_ref, lse_ref = reference.batch_attention(q.float(), torch.from_numpy(qo_indptr).cuda(),
                                               kv.with_cache(kv.k_cache.float(),
                                                             kv.v_cache.float()), variant)
    assert _relative_error(o, o_ref) <= {torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(lse, lse_ref, atol=2e-3, rtol=2e-3)
