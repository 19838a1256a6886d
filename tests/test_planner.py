"""Planner tests: plans executed by the CPU executor equal the float32 oracle; balance on the
issue's batches; capacities, errors and CUDA-graph safety (fixed buffers, no allocation)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fi_backend import reference
from fi_backend.metadata.block_sparse import BlockSparseKV
from fi_backend.metadata.executor import execute_plan_reference
from fi_backend.metadata.plan_layout import (DECODE_TILE_ROWS, MAX_TILE_ROWS, PlanCapacity,
                                             PlanLayout, tile_tokens)
from fi_backend.metadata.planner import CostModel, Planner, SplitPolicy, cta_costs
from fi_backend.variants import AttentionVariant

HEAD_DIM = 16
H100_CTAS = 132


def make_planner(num_qo_heads=32, num_kv_heads=8, num_ctas=H100_CTAS, page_size=16,
                 max_requests=256, max_batched_tokens=16384, max_model_len=65536, **kwargs):
    return Planner(max_requests=max_requests, max_batched_tokens=max_batched_tokens,
                   max_model_len=max_model_len, num_qo_heads=num_qo_heads,
                   num_kv_heads=num_kv_heads, head_dim=HEAD_DIM, page_size=page_size,
                   num_ctas=num_ctas, **kwargs)


def indptr_of(q_lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)


def make_paged_kv(kv_lens, num_kv_heads, page_size, generator) -> BlockSparseKV:
    """Random K/V in shuffled pages: request b owns ceil(kv_len_b / page_size) pages."""
    pages_per_request = [-(-n // page_size) for n in kv_lens]
    num_pages = sum(pages_per_request) + 1
    k_cache = torch.randn(num_pages, page_size, num_kv_heads, HEAD_DIM, generator=generator)
    v_cache = torch.randn(num_pages, page_size, num_kv_heads, HEAD_DIM, generator=generator)
    indices = torch.randperm(num_pages, generator=generator)[:sum(pages_per_request)]
    indptr = torch.tensor(indptr_of(pages_per_request), dtype=torch.int32)
    last_page_len = torch.tensor(
        [n - (p - 1) * page_size if p else 0 for n, p in zip(kv_lens, pages_per_request)],
        dtype=torch.int32)
    return BlockSparseKV(indptr, indices.to(torch.int32), last_page_len, page_size,
                         k_cache, v_cache)


def balance(plan, planner) -> float:
    """The busiest CTA's cost over the least the split policy allows it: the mean CTA cost, or,
    when that is below what one item over a minimum chunk costs, the largest piece the policy
    keeps whole (a tile shorter than two minimum chunks, else one minimum chunk plus less
    than one more)."""
    costs = cta_costs(plan, planner.cost_model)
    policy = planner.split_policy
    rows = plan.section("work_q_len") * plan.group_size
    longest_tile = int((plan.section("work_kv_end") - plan.section("work_kv_start")).max())
    whole_piece = min(longest_tile, 2 * policy.min_chunk_tokens - 1)
    floor = float(planner.cost_model.item_cost(rows.max(), whole_piece))
    return float(costs.max() / max(costs.mean(), floor))


# --- executor == oracle ------------------------------------------------------------------

@st.composite
def batches(draw):
    """(q_lens, exact kv_lens): random, skewed (one long request) or mixed (prefill + decode)."""
    kind = draw(st.sampled_from(["random", "skewed", "mixed"]))
    if kind == "random":
        size = draw(st.integers(1, 6))
        q_lens = draw(st.lists(st.integers(0, 90), min_size=size, max_size=size))
        extra = draw(st.lists(st.integers(0, 400), min_size=size, max_size=size))
    elif kind == "skewed":
        size = draw(st.integers(2, 8))
        q_lens = [1] * size
        extra = [draw(st.integers(600, 1500))] + [draw(st.integers(0, 60))] * (size - 1)
    else:
        prefills = draw(st.integers(1, 2))
        decodes = draw(st.integers(1, 6))
        q_lens = [draw(st.integers(20, 130)) for _ in range(prefills)] + [1] * decodes
        extra = ([draw(st.integers(0, 100)) for _ in range(prefills)]
                 + [draw(st.integers(50, 500)) for _ in range(decodes)])
    return q_lens, [q + e for q, e in zip(q_lens, extra)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), group=st.sampled_from([1, 4, 8]), num_kv_heads=st.sampled_from([1, 2]),
       page_size=st.sampled_from([1, 16, 64]), causal=st.booleans(),
       window_left=st.sampled_from([-1, 0, 7, 100]), slack=st.sampled_from([0, 3, 40]),
       num_ctas=st.integers(1, 24), min_chunk=st.sampled_from([1, 16, 512]),
       sinks=st.booleans(), seed=st.integers(0, 2**16))
def test_executed_plan_equals_oracle(batch, group, num_kv_heads, page_size, causal,
                                     window_left, slack, num_ctas, min_chunk, sinks, seed):
    q_lens, kv_lens = batch
    num_qo_heads = group * num_kv_heads
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    # The planner sees upper bounds: exact + up to `slack` (a later, shorter exact length).
    kv_upper = np.asarray(kv_lens) + rng.integers(0, slack + 1, len(kv_lens))
    planner = make_planner(num_qo_heads, num_kv_heads, num_ctas, page_size, max_requests=8,
                           max_batched_tokens=512, max_model_len=4096, kv_len_slack=slack,
                           split_policy=SplitPolicy(min_chunk_tokens=min_chunk,
                                                    chunk_align_tokens=min(min_chunk, 64)))
    variant = AttentionVariant(
        causal=causal, window_left=window_left,
        sinks=torch.randn(num_qo_heads, generator=generator) if sinks else None)
    qo_indptr = indptr_of(q_lens)
    plan = planner.plan(qo_indptr, kv_upper.astype(np.int32), variant)

    kv = make_paged_kv(kv_lens, num_kv_heads, page_size, generator)
    q = torch.randn(int(qo_indptr[-1]), num_qo_heads, HEAD_DIM, generator=generator)
    qo_indptr_t = torch.from_numpy(qo_indptr)
    o, lse = execute_plan_reference(plan, q, qo_indptr_t, kv, variant,
                                    torch.tensor(kv_lens, dtype=torch.int32))
    o_ref, lse_ref = reference.batch_attention(q, qo_indptr_t, kv, variant)
    torch.testing.assert_close(o, o_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse, lse_ref, atol=2e-5, rtol=1e-4)


def test_split_tiles_are_merged_from_consecutive_slots():
    planner = make_planner(num_qo_heads=4, num_kv_heads=1, num_ctas=7)
    plan = planner.plan(indptr_of([1, 40]), np.array([3000, 2000], np.int32),
                        AttentionVariant())
    assert plan.num_merge_items > 0
    slots = plan.section("work_partial_slot")
    starts = plan.section("merge_slot_start")
    counts = plan.section("merge_num_slots")
    assert plan.num_partial_slots == counts.sum()
    covered = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, counts)])
    np.testing.assert_array_equal(np.sort(covered), np.arange(plan.num_partial_slots))
    np.testing.assert_array_equal(np.sort(slots[slots >= 0]), np.arange(plan.num_partial_slots))
    for m, (start, count) in enumerate(zip(starts, counts)):
        items = np.flatnonzero((slots >= start) & (slots < start + count))
        assert list(slots[items]) == list(range(start, start + count))
        # The pieces of one tile cover its KV range without gaps, in order.
        assert (plan.section("work_kv_start")[items[1:]]
                == plan.section("work_kv_end")[items[:-1]]).all()
        assert plan.section("merge_request")[m] == plan.section("work_request")[items[0]]


def test_decode_requests_are_one_small_tile_and_prefill_tiles_are_full():
    planner = make_planner(num_qo_heads=32, num_kv_heads=8)   # group 4: 32 tokens a tile
    q_lens = [1, 4, 300, 1]
    plan = planner.plan(indptr_of(q_lens), np.array([900, 900, 900, 50], np.int32),
                        AttentionVariant())
    request = plan.section("work_request")
    q_len = plan.section("work_q_len")
    q_start = plan.section("work_q_start")
    unsplit = plan.section("work_partial_slot") < 0
    for b in (0, 1, 3):
        assert set(q_len[request == b]) == {q_lens[b]}
        assert q_lens[b] * 4 <= DECODE_TILE_ROWS
        assert len(set(zip(plan.section("work_kv_head")[request == b],
                           q_start[request == b]))) == 8
    prefill_tiles = sorted(set(q_start[request == 2]))
    assert prefill_tiles == list(range(0, 300, tile_tokens(4)))
    assert (q_len[request == 2] * 4 <= MAX_TILE_ROWS).all()
    assert unsplit.any()


def test_causal_and_window_shorten_each_tiles_kv_range():
    planner = make_planner(num_qo_heads=8, num_kv_heads=8, num_ctas=1, kv_len_slack=5)
    q_lens, kv_upper = [256], np.array([1000], np.int32)
    plan = planner.plan(indptr_of(q_lens), kv_upper, AttentionVariant(causal=True,
                                                                       window_left=100))
    # group 1: 128-token tiles; queries at 744..999 (upper bound), 739.. (exact >= 995).
    head0 = np.flatnonzero(plan.section("work_kv_head") == 0)
    by_tile = head0[np.argsort(plan.section("work_q_start")[head0])]
    np.testing.assert_array_equal(plan.section("work_q_start")[by_tile], [0, 128])
    np.testing.assert_array_equal(plan.section("work_kv_end")[by_tile], [872, 1000])
    np.testing.assert_array_equal(plan.section("work_kv_start")[by_tile], [639, 767])


# --- balance -----------------------------------------------------------------------------

def issue_batches():
    rng = np.random.default_rng(0)
    cases = {f"decode {b}x{k}": ([1] * b, [k] * b)
             for b in (1, 16, 64, 256) for k in (512, 2048, 8192, 32768)}
    cases["skewed 1x32768 + 63x512"] = ([1] * 64, [32768] + [512] * 63)
    cases["mixed 4x2048 prefill + 200 decodes"] = (
        [2048] * 4 + [1] * 200, [2048] * 4 + list(rng.integers(1000, 8001, 200)))
    return cases


def expected_chunk_floor(plan, planner) -> int:
    """The plan's minimum chunk as planner.py's "Split policy" states it: min_chunk_tokens, or
    KV tokens per CTA (all heads) x small_work_chunk_factor rounded up to a power of two, at
    least two alignment units, where that is smaller."""
    policy = planner.split_policy
    kv_tokens = int((plan.section("work_kv_end") - plan.section("work_kv_start")).sum())
    if policy.small_work_chunk_factor == 0:
        return policy.min_chunk_tokens
    share = kv_tokens * policy.small_work_chunk_factor // plan.num_ctas
    floor = 2 * policy.chunk_align_tokens
    while floor < share and floor < policy.min_chunk_tokens:
        floor *= 2
    return min(floor, policy.min_chunk_tokens)


@pytest.mark.parametrize("name", list(issue_batches()))
def test_balance_on_h100_grid(name):
    q_lens, kv_lens = issue_batches()[name]
    planner = make_planner()
    plan = planner.plan(indptr_of(q_lens), np.asarray(kv_lens, np.int32), AttentionVariant())
    assert balance(plan, planner) <= 1.10
    # No piece of a split tile is shorter than the minimum chunk, and cuts fall on whole KV
    # tiles.
    policy = planner.split_policy
    start, end = plan.section("work_kv_start"), plan.section("work_kv_end")
    split = plan.section("work_partial_slot") >= 0
    assert (end[split] - start[split] >= expected_chunk_floor(plan, planner)).all()
    assert (start[split] % policy.chunk_align_tokens == 0).all()


@pytest.mark.parametrize("row_overhead_tokens", [0.0, 512.0, 1024.0])
@pytest.mark.parametrize("batch, q_len", [(1, 4096), (1, 16384), (8, 2048), (32, 512)])
def test_causal_prefill_balance_follows_the_cost_model(batch, q_len, row_overhead_tokens):
    # The issue's prefill cells: many items of one size per request and KV head, growing in
    # KV length. The C++ scheduler must charge the per-row overhead exactly as
    # CostModel.item_cost does (which this measures with), or the cut CTAs are off by the
    # overhead of every item they hold.
    planner = make_planner(cost_model=CostModel(row_overhead_tokens=row_overhead_tokens))
    plan = planner.plan(indptr_of([q_len] * batch), np.full(batch, q_len, np.int32),
                        AttentionVariant(causal=True))
    assert balance(plan, planner) <= 1.10


def running_kv_groups(plan, cost_model, at_fraction: float) -> set:
    """(request, KV head) pairs of the items the CTAs run at `at_fraction` of the busiest
    CTA's estimated time, each CTA running its items back to back at the model's costs."""
    indptr = plan.section("cta_work_indptr")
    rows = plan.section("work_q_len") * plan.group_size
    kv = plan.section("work_kv_end") - plan.section("work_kv_start")
    cost = cost_model.item_cost(rows, kv)
    ends = [np.cumsum(cost[a:b]) for a, b in zip(indptr[:-1], indptr[1:])]
    moment = at_fraction * max(e[-1] for e in ends if len(e))
    groups = set()
    for first, cta_ends in zip(indptr[:-1], ends):
        running = np.searchsorted(cta_ends, moment, side="right")
        if running < len(cta_ends):
            i = first + running
            groups.add((int(plan.section("work_request")[i]), int(plan.section("work_kv_head")[i])))
    return groups


@pytest.mark.parametrize("num_ctas, batch, q_len", [
    (H100_CTAS, 1, 4096), (H100_CTAS, 1, 16384), (H100_CTAS, 8, 2048), (H100_CTAS, 32, 512),
    # The portable kernels' grid (2 CTAs per SM). 1 x 4096 has fewer tiles (256) than CTAs,
    # so it is split by the stream cut there.
    (2 * H100_CTAS, 1, 16384), (2 * H100_CTAS, 8, 2048), (2 * H100_CTAS, 16, 1024),
    (2 * H100_CTAS, 32, 512)])
def test_prefill_plans_deal_whole_tiles_that_share_kv_at_any_moment(num_ctas, batch, q_len):
    # Many tiles: the list schedule keeps them whole (no merges) and, because each goes to the
    # CTA that frees first in KV-locality order, the CTAs at any moment work on at most a few
    # (request, KV head) pairs, whose KV fits the L2 (the stream cut spreads them over one
    # stretch per CTA: all 8 heads at 1 x 16384, ~130 pairs at 32 x 512, all 64 pairs (67 MB)
    # at 8 x 2048 on 264 CTAs). Tiles of unequal cost widen the window of tiles in flight
    # beyond one per CTA, hence the factor 2; the longest-first tail adds a few pairs at the end.
    planner = make_planner(num_ctas=num_ctas)
    plan = planner.plan(indptr_of([q_len] * batch), np.full(batch, q_len, np.int32),
                        AttentionVariant(causal=True))
    assert plan.num_merge_items == 0 and (plan.section("work_partial_slot") == -1).all()
    assert balance(plan, planner) <= 1 + planner.split_policy.overfill_fraction
    tiles_per_group = -(-q_len * plan.group_size // MAX_TILE_ROWS)
    for at in (0.1, 0.3, 0.5, 0.7, 0.9):
        groups = running_kv_groups(plan, planner.cost_model, at)
        assert len(groups) <= 2 + 2 * num_ctas // tiles_per_group, (at, sorted(groups))


@pytest.mark.parametrize("num_ctas", [H100_CTAS, 2 * H100_CTAS])
def test_sorted_tail_balances_the_list_schedule(num_ctas):
    # Causal 8 x 2048: dealt in plain locality order the last pair's long tiles overfill the
    # CTAs that take them (264 CTAs: 5.8 % above the mean, beyond overfill_fraction, so the
    # stream cut would run); with the longest-first tail the busiest CTA is within 2 %.
    batch, q_len = 8, 2048

    def list_schedule_balance(sorted_tail_per_cta):
        planner = make_planner(num_ctas=num_ctas, split_policy=SplitPolicy(
            overfill_fraction=0.10, sorted_tail_per_cta=sorted_tail_per_cta))
        plan = planner.plan(indptr_of([q_len] * batch), np.full(batch, q_len, np.int32),
                            AttentionVariant(causal=True))
        assert plan.num_merge_items == 0 and plan.num_work_items == 4096
        return balance(plan, planner)

    assert list_schedule_balance(2) <= 1.02 < list_schedule_balance(0)


def test_split_policy_rejects_a_negative_sorted_tail():
    with pytest.raises(ValueError, match="sorted_tail_per_cta must be an int >= 0"):
        SplitPolicy(sorted_tail_per_cta=-1)


def test_long_decode_falls_back_to_split_tiles():
    # One 32768-key decode per KV head: 8 whole tiles on 132 CTAs would leave the busiest at
    # 16x the mean, so the stream cut splits them (and merges the pieces).
    planner = make_planner()
    plan = planner.plan(indptr_of([1]), np.array([32768], np.int32), AttentionVariant())
    assert plan.num_merge_items == 8 and plan.num_work_items > 100
    assert balance(plan, planner) <= 1.10


def test_tiny_work_runs_on_few_ctas_in_short_chunks():
    # One decode over 512 keys per KV head: 31 KV tokens per CTA (all heads), far below
    # min_chunk_tokens, so the plan's minimum chunk drops to 128 (4 x 31 rounded up to a power
    # of two): each head's tile runs as 4 chunks of 128 keys on 32 CTAs, not as one 512-key
    # item per head (8 CTAs walking 8 KV tiles each) nor as 16-token pieces on all 132.
    planner = make_planner()
    plan = planner.plan(indptr_of([1]), np.array([512], np.int32), AttentionVariant())
    chunks = plan.section("work_kv_end") - plan.section("work_kv_start")
    assert expected_chunk_floor(plan, planner) == 128
    assert (chunks == 128).all() and plan.num_work_items == 32 and plan.num_merge_items == 8
    # Without the small-work rule: one whole tile per head.
    whole = make_planner(split_policy=SplitPolicy(small_work_chunk_factor=0))
    plan = whole.plan(indptr_of([1]), np.array([512], np.int32), AttentionVariant())
    assert plan.num_work_items == 8 and plan.num_merge_items == 0
    # 8192 keys: 496 tokens per CTA x 4 is past min_chunk_tokens, so pieces of one minimum
    # chunk on 128 CTAs, not 132 pieces of ~500 tokens.
    plan = planner.plan(indptr_of([1]), np.array([8192], np.int32), AttentionVariant())
    chunks = plan.section("work_kv_end") - plan.section("work_kv_start")
    assert (chunks == planner.split_policy.min_chunk_tokens).all()
    assert plan.num_merge_items == 8 and plan.num_work_items == 8 * 8192 // 512


def test_split_policy_rejects_a_negative_small_work_factor():
    with pytest.raises(ValueError, match="small_work_chunk_factor must be an int >= 0"):
        SplitPolicy(small_work_chunk_factor=-1)


# --- capacities and CUDA-graph safety ------------------------------------------------------

def test_capacity_for_engine_holds_the_worst_batches():
    capacity = PlanCapacity.for_engine(max_requests=8, max_batched_tokens=100,
                                       max_model_len=5000, num_qo_heads=8, num_kv_heads=2,
                                       num_ctas=5)
    planner = make_planner(8, 2, 5, max_requests=8, max_batched_tokens=100,
                           max_model_len=5000)
    assert planner.capacity == capacity
    # 7 single-token requests + one of 93 tokens: 7 + ceil(93 / 32) = 10 tiles per KV head,
    # as many as 8 single-token requests + 92 tokens in whole tiles (8 + 2).
    assert capacity.max_work_items == (7 + 3) * 2 + 4
    worst = [indptr_of([1] * 7 + [93]), indptr_of([100]), indptr_of([1] * 8)]
    for qo_indptr in worst:
        kv_lens = np.full(len(qo_indptr) - 1, 5000, np.int32)
        plan = planner.plan(qo_indptr, kv_lens, AttentionVariant())
        assert plan.num_work_items <= capacity.max_work_items


@pytest.mark.parametrize("q_lens, kv_lens, message", [
    ([1] * 9, [10] * 9, "max_requests"),
    ([60, 60], [100, 100], "max_batched_tokens"),
    ([1, 1], [10, 5001], "max_model_len"),
    ([5, 1], [4, 10], "q_len <= kv_len"),
])
def test_batches_beyond_the_limits_are_refused_before_writing(q_lens, kv_lens, message):
    planner = make_planner(8, 2, 5, max_requests=8, max_batched_tokens=100,
                           max_model_len=5000)
    planner.plan(indptr_of([3, 1]), np.array([300, 40], np.int32), AttentionVariant())
    staging_before = planner._staging.clone()
    buffer_before = planner.buffer.clone()
    with pytest.raises(ValueError, match=message):
        planner.plan(indptr_of(q_lens), np.asarray(kv_lens, np.int32), AttentionVariant())
    assert torch.equal(planner._staging, staging_before)
    assert torch.equal(planner.buffer, buffer_before)


def test_work_item_capacity_is_checked_before_writing():
    capacity = PlanCapacity(num_ctas=3, max_work_items=10, max_merge_items=2,
                            max_partial_slots=4)
    planner = make_planner(4, 1, 3, capacity=capacity)
    ok = planner.plan(indptr_of([16] * 8), np.full(8, 100, np.int32), AttentionVariant())
    assert ok.num_work_items <= 10
    staging_before = planner._staging.clone()
    with pytest.raises(ValueError, match="work items"):
        planner.plan(indptr_of([16] * 9), np.full(9, 100, np.int32), AttentionVariant())
    assert torch.equal(planner._staging, staging_before)


def test_capacity_too_small_for_splits_is_refused():
    capacity = PlanCapacity(num_ctas=8, max_work_items=100, max_merge_items=2,
                            max_partial_slots=4)
    with pytest.raises(ValueError, match="merge items"):
        make_planner(4, 1, 8, capacity=capacity)


def test_unsupported_configurations_are_refused():
    with pytest.raises(ValueError, match="group size 256"):
        make_planner(num_qo_heads=256, num_kv_heads=1)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        make_planner(num_qo_heads=12, num_kv_heads=8)
    planner = make_planner()
    with pytest.raises(ValueError, match="qo_indptr"):
        planner.plan(np.array([0, 3], np.int32), np.array([5, 5], np.int32), AttentionVariant())
    with pytest.raises(ValueError, match="non-decreasing"):
        planner.plan(np.array([0, 3, 2], np.int32), np.array([5, 5], np.int32),
                     AttentionVariant())


def test_buffers_keep_their_address_and_plan_allocates_nothing():
    planner = make_planner()
    addresses = (planner.buffer.data_ptr(), planner._staging.data_ptr())
    size = planner.buffer.numel()
    assert size == PlanLayout(planner.capacity).num_int32
    rng = np.random.default_rng(1)
    batches = [(indptr_of([1] * b), rng.integers(100, 30000, b).astype(np.int32))
               for b in (1, 16, 256)]
    batches.append((indptr_of([2048] * 4 + [1] * 200),
                    np.concatenate([[2048] * 4, rng.integers(1000, 8000, 200)]).astype(np.int32)))
    variant = AttentionVariant()
    for qo_indptr, kv_lens in batches:
        planner.plan(qo_indptr, kv_lens, variant)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(5):
            for qo_indptr, kv_lens in batches:
                plan = planner.plan(qo_indptr, kv_lens, variant)
        after = tracemalloc.take_snapshot()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 2048 and peak < 16384, (grown, peak)
    assert (plan.buffer.data_ptr(), planner._staging.data_ptr()) == addresses
    assert plan.buffer.numel() == size
    # The device copy holds what the host staging holds, section by section.
    for name in ("header", "cta_work_indptr", "work_request", "work_kv_end",
                 "work_partial_slot", "merge_slot_start"):
        start = plan.layout.offsets[name]
        used = plan.section(name)
        np.testing.assert_array_equal(plan.buffer[start:start + len(used)].numpy(), used)


@pytest.mark.gpu
def test_cuda_plans_are_published_to_a_fixed_device_buffer():
    planner = make_planner(device="cuda")
    address = planner.buffer.data_ptr()
    assert planner._staging.is_pinned()
    rng = np.random.default_rng(2)
    batches = [(indptr_of([1] * b), rng.integers(100, 30000, b).astype(np.int32))
               for b in (256, 1, 16, 64)]
    planner.plan(*batches[0], AttentionVariant())
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    for qo_indptr, kv_lens in batches * 3:
        plan = planner.plan(qo_indptr, kv_lens, AttentionVariant())
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated
    assert plan.buffer.data_ptr() == address
    device_copy = plan.buffer.cpu().numpy()
    for name in ("header", "cta_work_indptr", "work_request", "work_kv_head", "work_q_start",
                 "work_q_len", "work_kv_start", "work_kv_end", "work_partial_slot",
                 "merge_request", "merge_slot_start", "merge_num_slots"):
        start = plan.layout.offsets[name]
        used = plan.section(name)
        np.testing.assert_array_equal(device_copy[start:start + len(used)], used)


def test_max_item_rows_is_read_when_the_plan_is_made():
    planner = make_planner()  # GQA group 4, 128-row tiles: 32 query tokens per tile
    causal = AttentionVariant(causal=True)
    decode = planner.plan(indptr_of([1, 1, 1]), np.array([300, 40, 2000], np.int32), causal)
    assert decode.max_item_rows == 4
    mixed = planner.plan(indptr_of([1, 5, 700]), np.array([300, 40, 2000], np.int32), causal)
    assert mixed.max_item_rows == MAX_TILE_ROWS
    # The next plan rewrites the shared staging buffer; the earlier plan keeps its value.
    assert decode.max_item_rows == 4
    empty = planner.plan(indptr_of([]), np.array([], np.int32), causal)
    assert empty.max_item_rows == 0


def test_header_holds_the_largest_merge_items_rows():
    # The merge kernel spreads a merge item's rows over CTAs in blocks; it sizes its grid
    # stride from the header's largest merge item, so every split tile's rows get merged.
    planner = make_planner()
    for q_lens, kv_lens, expected in (([1], [32768], 4), ([1] * 3 + [40], [16384] * 4, 128),
                                      ([256] * 2, [32768] * 2, 0)):
        plan = planner.plan(indptr_of(q_lens), np.array(kv_lens, np.int32), AttentionVariant())
        merge_rows = plan.section("merge_q_len") * plan.group_size
        assert plan.section("header")[4] == (merge_rows.max() if merge_rows.size else 0)
        assert plan.section("header")[4] == expected
