"""BatchAttention's portable family (persistent paged kernel + split-KV merge) against the
float32 oracle (fi_backend.reference.batch_attention) on fresh random inputs. The family is
pinned to "sm80" (on an H100 "auto" picks the Hopper one, which
tests/test_attention_sm90_gpu.py covers by rerunning these cases), and every test checks that
the portable launcher ran.

Outputs are poisoned with NaN before each run, so a row the kernels forget fails; pages no
request owns and the tail of each last page hold NaN too, so a read outside a request's
keys fails. Plans come from the real planner (fi_backend.metadata.planner) and from
`hand_plan`, which splits every tile into a chosen number of KV chunks with merge items, so
both split and unsplit paths run whatever the planner decides.

Error bound: relative Frobenius error ||o - ref|| / ||ref|| <= 1e-2 for bfloat16 and
<= 2e-3 for float16 (both rounding the inputs and P to 16 bits, accumulating in float32);
the LSE within 2e-3 absolute + relative (it is accumulated in float32 throughout).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fi_backend import _C, reference
from fi_backend.attention import (KERNEL_FAMILY_ENV, MAX_SMEM_PER_BLOCK_ENV, BatchAttention,
                                  ctas_per_sm)
from fi_backend.metadata.block_sparse import BlockSparseKV, split_kv_cache
from fi_backend.metadata.plan_layout import HEADER_LEN, MAX_TILE_ROWS, PlanCapacity, PlanLayout
from fi_backend.metadata.planner import Planner
from fi_backend.variants import AttentionVariant

pytestmark = pytest.mark.gpu

RELATIVE_ERROR_BOUND = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
LSE_TOLERANCE = 2e-3
# The per-block shared memory of sm_86 / sm_89 GPUs (A10, L4, L40, RTX 30xx/40xx).
SM89_SMEM_PER_BLOCK = 99 * 1024


@pytest.fixture(autouse=True)
def portable_launches(monkeypatch):
    """Pins the portable family and records each launch's (head_dim, prefill_tiles,
    compact_smem); fails the test if the portable launcher never ran."""
    monkeypatch.setenv(KERNEL_FAMILY_ENV, "sm80")
    launches = []
    launcher = _C.batch_attention

    def recording_launcher(**kwargs):
        launches.append((kwargs["head_dim"], kwargs["prefill_tiles"], kwargs["compact_smem"]))
        return launcher(**kwargs)

    monkeypatch.setattr(_C, "batch_attention", recording_launcher)
    yield launches
    assert launches, "the portable launcher did not run"


# ---------------------------------------------------------------------------------------
# Inputs


def make_batch(q_lens, kv_lens, num_qo_heads, num_kv_heads, head_dim, page_size, dtype,
               layout, seed, num_padded_tokens=0, spare_pages=3):
    """A ragged batch over a paged cache with shuffled pages.

    Returns a namespace with q `(T + padding, Hq, D)`, the K/V views, a BlockSparseKV with
    the views attached, seq_lens / qo_indptr on the device and their host copies."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q_lens = np.asarray(q_lens, dtype=np.int32)
    kv_lens = np.asarray(kv_lens, dtype=np.int32)
    pages_per_req = -(-kv_lens // page_size)
    num_pages = int(pages_per_req.sum()) + spare_pages
    if layout == "vllm_packed":  # logical (pages, Hkv, page, 2D), physically NHD
        physical = torch.full((num_pages, page_size, num_kv_heads, 2 * head_dim), math.nan,
                              dtype=dtype, device="cuda")
        k_cache, v_cache = split_kv_cache(physical.permute(0, 2, 1, 3), layout)
    else:
        physical = torch.full((num_pages, 2, page_size, num_kv_heads, head_dim), math.nan,
                              dtype=dtype, device="cuda")
        k_cache, v_cache = split_kv_cache(physical, layout)
    page_order = torch.randperm(num_pages, generator=gen, device="cuda").to(torch.int32)
    indptr = np.concatenate([[0], np.cumsum(pages_per_req)]).astype(np.int32)
    for b, kv_len in enumerate(kv_lens):  # fill only each request's keys; the rest stays NaN
        for i, page in enumerate(page_order[indptr[b]:indptr[b + 1]].tolist()):
            used = min(page_size, int(kv_len) - i * page_size)
            shape = (used, num_kv_heads, head_dim)
            k_cache[page, :used] = torch.randn(shape, generator=gen, device="cuda").to(dtype)
            v_cache[page, :used] = torch.randn(shape, generator=gen, device="cuda").to(dtype)
    last_page_len = np.where(pages_per_req > 0, kv_lens - (pages_per_req - 1) * page_size, 0)
    kv = BlockSparseKV(
        indptr=torch.from_numpy(indptr).cuda(),
        indices=page_order[:max(int(indptr[-1]), 1)].contiguous(),
        last_page_len=torch.from_numpy(last_page_len.astype(np.int32)).cuda(),
        page_size=page_size).with_cache(k_cache, v_cache)
    qo_indptr_host = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    num_tokens = int(qo_indptr_host[-1])
    q = torch.randn((num_tokens + num_padded_tokens, num_qo_heads, head_dim), generator=gen,
                    device="cuda").to(dtype)
    return SimpleNamespace(
        q=q, num_tokens=num_tokens, k_cache=k_cache, v_cache=v_cache, kv=kv,
        seq_lens=torch.from_numpy(kv_lens).cuda(), qo_indptr=torch.from_numpy(qo_indptr_host).cuda(),
        qo_indptr_host=qo_indptr_host, kv_lens_host=kv_lens)


def make_variant(name, num_qo_heads, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    per_head = lambda scale: (torch.rand(num_qo_heads, generator=gen, device="cuda") * scale)
    if name == "causal":
        return AttentionVariant(causal=True)
    if name == "noncausal":
        return AttentionVariant(causal=False)
    if name == "window":
        return AttentionVariant(causal=True, window_left=37)
    if name == "softcap":
        return AttentionVariant(causal=True, logits_soft_cap=5.0, sm_scale=0.3)
    if name == "alibi":
        return AttentionVariant(causal=True, alibi_slopes=per_head(0.5))
    if name == "sinks":
        return AttentionVariant(causal=True, sinks=per_head(4.0) - 1.0)
    if name == "all":
        return AttentionVariant(causal=True, window_left=100, logits_soft_cap=20.0,
                                alibi_slopes=per_head(0.1), sinks=per_head(2.0))
    if name == "noncausal_sinks_window":
        return AttentionVariant(causal=False, window_left=50, sinks=per_head(2.0))
    raise ValueError(name)


# ---------------------------------------------------------------------------------------
# Plans


def hand_plan(layout: PlanLayout, qo_indptr_host, kv_len_host, num_kv_heads, group,
              chunks_per_tile):
    """A plan written without the planner: one item per (request, KV head, query tile), the
    KV range of tile i cut into chunks_per_tile(i) equal chunks (> 1: partial slots + one
    merge item), items dealt to the CTAs in contiguous runs."""
    tile_tokens = MAX_TILE_ROWS // group
    items, merges, slot = [], [], 0
    tile_index = 0
    for b in range(len(kv_len_host)):
        q_len = int(qo_indptr_host[b + 1] - qo_indptr_host[b])
        kv_len = int(kv_len_host[b])
        for kv_head in range(num_kv_heads):
            for q_start in range(0, q_len, tile_tokens):
                tq = min(tile_tokens, q_len - q_start)
                n = chunks_per_tile(tile_index)
                tile_index += 1
                bounds = np.linspace(0, kv_len, n + 1).astype(int)
                for c in range(n):
                    items.append((b, kv_head, q_start, tq, int(bounds[c]), int(bounds[c + 1]),
                                  -1 if n == 1 else slot + c))
                if n > 1:
                    merges.append((b, kv_head, q_start, tq, slot, n))
                    slot += n
    cap = layout.capacity
    assert len(items) <= cap.max_work_items and len(merges) <= cap.max_merge_items
    assert slot <= cap.max_partial_slots
    buffer = np.zeros(layout.num_int32, dtype=np.int32)
    offsets = layout.offsets
    max_merge_rows = max((m[3] * group for m in merges), default=0)
    buffer[offsets["header"]:offsets["header"] + HEADER_LEN] = [
        len(items), len(merges), cap.num_ctas, slot, max_merge_rows]
    per_cta = np.linspace(0, len(items), cap.num_ctas + 1).astype(np.int32)
    buffer[offsets["cta_work_indptr"]:offsets["cta_work_indptr"] + cap.num_ctas + 1] = per_cta
    names = ("work_request", "work_kv_head", "work_q_start", "work_q_len", "work_kv_start",
             "work_kv_end", "work_partial_slot")
    for field, name in enumerate(names):
        buffer[offsets[name]:offsets[name] + len(items)] = [item[field] for item in items]
    names = ("merge_request", "merge_kv_head", "merge_q_start", "merge_q_len",
             "merge_slot_start", "merge_num_slots")
    for field, name in enumerate(names):
        buffer[offsets[name]:offsets[name] + len(merges)] = [m[field] for m in merges]
    return SimpleNamespace(buffer=torch.from_numpy(buffer).cuda(), layout=layout,
                           num_work_items=len(items), num_merge_items=len(merges),
                           max_item_rows=max((item[3] for item in items), default=0) * group)


def make_planner(num_qo_heads, num_kv_heads, head_dim, page_size, dtype, q_lens, kv_lens,
                 kv_len_slack=0, num_ctas=None):
    if num_ctas is None:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        num_ctas = sms * ctas_per_sm(dtype, head_dim)
    return Planner(max_requests=max(len(q_lens), 1),
                   max_batched_tokens=max(int(np.sum(q_lens)), 1),
                   max_model_len=max(int(np.max(kv_lens, initial=1)) + kv_len_slack, 1),
                   num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                   page_size=page_size, num_ctas=num_ctas, device="cuda",
                   kv_len_slack=kv_len_slack)


# ---------------------------------------------------------------------------------------
# Checks


def relative_error(actual, expected):
    return (torch.linalg.norm((actual.float() - expected).flatten())
            / torch.linalg.norm(expected.flatten()).clamp_min(1e-30)).item()


def run_and_check(batch, variant, attention, plan, dtype, kv_len_host=None):
    num_tokens = batch.num_tokens
    out = torch.full_like(batch.q, math.nan)
    o, lse = attention.run(batch.q, batch.k_cache, batch.v_cache, batch.kv, batch.seq_lens,
                           batch.qo_indptr, variant, out=out, return_lse=True, plan=plan)
    torch.cuda.synchronize()
    expected_o, expected_lse = reference.batch_attention(
        batch.q[:num_tokens], batch.qo_indptr, batch.kv, variant)
    valid_o = o[:num_tokens]
    assert not valid_o.isnan().any(), "an output row was not written (or read NaN keys)"
    error = relative_error(valid_o, expected_o)
    assert error <= RELATIVE_ERROR_BOUND[dtype], f"relative Frobenius error {error:.2e}"
    torch.testing.assert_close(lse[:num_tokens], expected_lse, atol=LSE_TOLERANCE,
                               rtol=LSE_TOLERANCE)
    # Padding tokens past qo_indptr[-1] are neither read nor written.
    assert o[num_tokens:].isnan().all()
    return error


def check_batch(q_lens, kv_lens, *, num_qo_heads=32, num_kv_heads=8, head_dim=128,
                page_size=16, dtype=torch.bfloat16, layout="vllm_packed", variant="causal",
                plan_kind="planner", seed=0, num_padded_tokens=0, kv_len_slack=0,
                chunks=lambda i: 1 + i % 3, decode_kernel_only=False):
    batch = make_batch(q_lens, kv_lens, num_qo_heads, num_kv_heads, head_dim, page_size, dtype,
                       layout, seed, num_padded_tokens)
    var = make_variant(variant, num_qo_heads, seed + 1)
    planner = make_planner(num_qo_heads, num_kv_heads, head_dim, page_size, dtype, q_lens,
                           kv_lens, kv_len_slack)
    attention = BatchAttention(planner)
    kv_len_plan = (batch.kv_lens_host + kv_len_slack).astype(np.int32)
    if plan_kind == "planner":
        plan = attention.plan(batch.qo_indptr_host, kv_len_plan, var)
    else:
        group = num_qo_heads // num_kv_heads
        layout = hand_layout(planner.layout, q_lens, num_kv_heads, group)
        plan = hand_plan(layout, batch.qo_indptr_host, kv_len_plan, num_kv_heads, group, chunks)
        attention = BatchAttention(_with_layout(planner, layout))
    if decode_kernel_only:
        # The plan as a decode batch's plan looks: the portable family then runs the kernel
        # built without prefill tiles, as a CUDA graph captured on a decode batch does when
        # it is replayed on a mixed one.
        plan = SimpleNamespace(buffer=plan.buffer, layout=plan.layout,
                               num_work_items=plan.num_work_items,
                               num_merge_items=plan.num_merge_items, max_item_rows=0)
    return run_and_check(batch, var, attention, plan, dtype)


def hand_layout(planner_layout, q_lens, num_kv_heads, group):
    """A layout with room for hand_plan's items: every tile split in up to 3 chunks."""
    tiles = sum(-(-int(q) // (MAX_TILE_ROWS // group)) for q in q_lens) * num_kv_heads
    return PlanLayout(PlanCapacity(num_ctas=planner_layout.capacity.num_ctas,
                                   max_work_items=max(3 * tiles, 1),
                                   max_merge_items=max(tiles, 1),
                                   max_partial_slots=max(3 * tiles, 1)))


def _with_layout(planner, layout):
    """The planner's parameters with another plan layout (hand plans need their own
    capacities)."""
    return SimpleNamespace(
        head_dim=planner.head_dim, device=planner.device, num_qo_heads=planner.num_qo_heads,
        num_kv_heads=planner.num_kv_heads, page_size=planner.page_size, layout=layout,
        capacity=layout.capacity,
        partial_o_shape=(layout.capacity.max_partial_slots, MAX_TILE_ROWS, planner.head_dim),
        partial_lse_shape=(layout.capacity.max_partial_slots, MAX_TILE_ROWS))


# ---------------------------------------------------------------------------------------
# Tests

VARIANTS = ("causal", "noncausal", "window", "softcap", "alibi", "sinks", "all",
            "noncausal_sinks_window")


@pytest.mark.parametrize("plan_kind", ["planner", "hand"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_mixed_batch(variant, plan_kind):
    # decode rows, a chunked prefill, a fresh prefill, an empty query, one long decode
    q_lens = [1, 1, 70, 129, 0, 1, 3]
    kv_lens = [5, 300, 500, 129, 40, 2100, 77]
    check_batch(q_lens, kv_lens, variant=variant, plan_kind=plan_kind, seed=11)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("plan_kind", ["planner", "hand"])
def test_dtypes_and_head_dims(dtype, head_dim, plan_kind):
    q_lens = [1, 17, 1, 100]
    kv_lens = [1000, 17, 33, 350]
    check_batch(q_lens, kv_lens, head_dim=head_dim, dtype=dtype, plan_kind=plan_kind,
                variant="all", seed=head_dim)


@pytest.mark.parametrize("heads", [(8, 8), (32, 8), (64, 8), (16, 1), (32, 1), (64, 1)],
                         ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("variant", ["causal", "noncausal_sinks_window"])
def test_gqa_ratios_and_mqa(heads, variant):
    num_qo_heads, num_kv_heads = heads
    q_lens = [1, 2, 5, 40, 1]
    kv_lens = [700, 64, 90, 40, 1]
    for plan_kind in ("planner", "hand"):
        check_batch(q_lens, kv_lens, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads,
                    variant=variant, plan_kind=plan_kind, seed=num_qo_heads + num_kv_heads)


@pytest.mark.parametrize("page_size", [1, 16, 32, 64, 5])
@pytest.mark.parametrize("layout", ["vllm_packed", "paged_5d"])
def test_page_sizes_and_cache_layouts(page_size, layout):
    q_lens = [1, 33, 1, 7]
    kv_lens = [257, 100, 1, 64]
    for plan_kind in ("planner", "hand"):
        check_batch(q_lens, kv_lens, page_size=page_size, layout=layout, plan_kind=plan_kind,
                    variant="all", seed=page_size)


def test_skewed_decode_batch_splits():
    q_lens = [1] * 24
    kv_lens = [8192] + [100 + 37 * i for i in range(23)]
    check_batch(q_lens, kv_lens, variant="sinks", seed=5)
    check_batch(q_lens, kv_lens, variant="causal", plan_kind="hand", chunks=lambda i: 3, seed=6)


@pytest.mark.parametrize("head_dim", (64, 128, 256))
def test_decode_kernel_runs_prefill_items(head_dim):
    check_batch([1, 40, 200, 1], [300, 40, 700, 2000], head_dim=head_dim, variant="all",
                decode_kernel_only=True, seed=21)


@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("decode_kernel_only", (False, True), ids=("mixed", "decode_kernel"))
def test_compact_footprint_as_on_a_99_kb_gpu(head_dim, decode_kernel_only, monkeypatch,
                                             portable_launches):
    # The kernels an sm_86/sm_89 GPU runs: compact pipelines at head_dim 128 and 256 (the
    # full ones need 100 KB and 200 KB), the full ones at 64 (64 KB fits).
    monkeypatch.setenv(MAX_SMEM_PER_BLOCK_ENV, str(SM89_SMEM_PER_BLOCK))
    check_batch([1, 40, 200, 1, 3], [300, 40, 700, 2000, 9], head_dim=head_dim, variant="all",
                decode_kernel_only=decode_kernel_only, seed=23)
    check_batch([1, 40, 200, 1, 3], [300, 40, 700, 2000, 9], head_dim=head_dim,
                variant="causal", plan_kind="hand", chunks=lambda i: 1 + i % 3,
                decode_kernel_only=decode_kernel_only, seed=24)
    assert {compact for _, _, compact in portable_launches} == {head_dim > 64}


def test_long_single_decode_and_prefill():
    check_batch([1], [32768], seed=7)
    check_batch([1000], [1500], variant="window", seed=8)


def test_padded_tokens_and_upper_bound_kv_lengths():
    # CUDA-graph style: extra query rows past qo_indptr[-1], plan made from KV upper bounds.
    q_lens = [1, 1, 12, 1]
    kv_lens = [10, 200, 300, 1]
    check_batch(q_lens, kv_lens, num_padded_tokens=5, kv_len_slack=24, variant="all", seed=9)
    check_batch(q_lens, kv_lens, num_padded_tokens=5, kv_len_slack=24, variant="causal",
                plan_kind="hand", seed=10)


def test_empty_kv_chunks_write_empty_partials():
    # Chunks beyond the exact length (upper-bound plan) are empty: their partial states must
    # be written as empty (LSE -inf) and ignored by the merge.
    q_lens = [1, 1]
    kv_lens = [3, 20]
    check_batch(q_lens, kv_lens, kv_len_slack=200, plan_kind="hand", chunks=lambda i: 3,
                variant="sinks", seed=12)


def test_rerun_with_new_plan_reuses_buffers():
    """One BatchAttention, two different batches: buffers and grid are fixed, the results
    follow the plan (what CUDA-graph replay relies on)."""
    num_qo_heads, num_kv_heads, head_dim, dtype = 32, 8, 128, torch.bfloat16
    planner = make_planner(num_qo_heads, num_kv_heads, head_dim, 16, dtype, [64] * 4,
                           [4096] * 4)
    attention = BatchAttention(planner)
    variant = AttentionVariant(causal=True)
    for seed, (q_lens, kv_lens) in enumerate((([1, 1, 1], [4000, 20, 700]),
                                              ([64, 1, 3, 1], [64, 4096, 9, 1]))):
        batch = make_batch(q_lens, kv_lens, num_qo_heads, num_kv_heads, head_dim, 16, dtype,
                           "vllm_packed", seed=100 + seed)
        plan = attention.plan(batch.qo_indptr_host, batch.kv_lens_host, variant)
        run_and_check(batch, variant, attention, plan, dtype)


def test_lse_out_receives_the_lse_in_a_strided_view():
    # The cascade step of the vLLM impl has each level write its LSE straight into a
    # (tokens, level, heads) buffer; the second run also reuses the step inputs the first one
    # checked (run() checks them once per step).
    q_lens, kv_lens = [1, 7, 40], [300, 77, 1000]
    batch = make_batch(q_lens, kv_lens, 32, 8, 128, 16, torch.bfloat16, "vllm_packed", 3, 0)
    variant = make_variant("causal", 32, 4)
    attention = BatchAttention(make_planner(32, 8, 128, 16, torch.bfloat16, q_lens, kv_lens, 0))
    plan = attention.plan(batch.qo_indptr_host, np.asarray(batch.kv_lens_host, np.int32),
                          variant)
    o, lse = attention.run(batch.q, batch.k_cache, batch.v_cache, batch.kv, batch.seq_lens,
                           batch.qo_indptr, variant, return_lse=True, plan=plan)
    levels = torch.full((batch.q.shape[0], 2, 32), math.nan, device="cuda")
    o_again, lse_view = attention.run(batch.q, batch.k_cache, batch.v_cache, batch.kv,
                                      batch.seq_lens, batch.qo_indptr, variant,
                                      lse_out=levels[:, 1], plan=plan)
    torch.cuda.synchronize()
    tokens = batch.num_tokens
    assert lse_view.data_ptr() == levels[:, 1].data_ptr()
    torch.testing.assert_close(levels[:tokens, 1], lse[:tokens], atol=0, rtol=0)
    assert levels[:, 0].isnan().all()  # the other level's column is untouched
    torch.testing.assert_close(o_again[:tokens], o[:tokens], atol=0, rtol=0)
    expected_o, expected_lse = reference.batch_attention(batch.q[:tokens], batch.qo_indptr,
                                                         batch.kv, variant)
    torch.testing.assert_close(lse[:tokens], expected_lse, atol=LSE_TOLERANCE, rtol=LSE_TOLERANCE)


def test_inputs_are_checked_again_when_their_layout_changes():
    # run() skips the checks of step and layer inputs it already passed (eager engine steps
    # call it once per layer); anything laid out differently is checked again.
    q_lens, kv_lens = [1, 5], [100, 60]
    batch = make_batch(q_lens, kv_lens, 32, 8, 128, 16, torch.bfloat16, "vllm_packed", 5, 0)
    variant = make_variant("causal", 32, 6)
    attention = BatchAttention(make_planner(32, 8, 128, 16, torch.bfloat16, q_lens, kv_lens, 0))
    plan = attention.plan(batch.qo_indptr_host, np.asarray(batch.kv_lens_host, np.int32),
                          variant)
    args = (batch.k_cache, batch.v_cache, batch.kv, batch.seq_lens, batch.qo_indptr, variant)
    attention.run(batch.q, *args, plan=plan)
    with pytest.raises(ValueError, match="out"):
        attention.run(batch.q, *args, out=torch.empty_like(batch.q, dtype=torch.float16),
                      plan=plan)
    with pytest.raises(ValueError, match="q"):
        attention.run(batch.q[:, :16], *args, plan=plan)
    with pytest.raises(ValueError, match="seq_lens"):
        attention.run(batch.q, batch.k_cache, batch.v_cache, batch.kv,
                      batch.seq_lens.to(torch.int64), batch.qo_indptr, variant, plan=plan)
    o = attention.run(batch.q, *args, plan=plan)  # still runs after the refusals
    torch.cuda.synchronize()
    expected_o, _ = reference.batch_attention(batch.q[:batch.num_tokens], batch.qo_indptr,
                                              batch.kv, variant)
    assert relative_error(o[:batch.num_tokens], expected_o) <= RELATIVE_ERROR_BOUND[torch.bfloat16]


def test_kv_page_strides_past_the_loaders_32_bit_range_are_refused():
    # The paged loader builds row addresses from 32-bit byte strides: a cache view whose page
    # stride reaches 2^30 elements (2 GiB of bf16) is refused at launch, and the next step runs.
    q_lens, kv_lens = [1], [20]
    batch = make_batch(q_lens, kv_lens, 32, 8, 128, 16, torch.bfloat16, "vllm_packed", 5,
                       spare_pages=0)
    num_pages, page_size, num_kv_heads, head_dim = batch.k_cache.shape
    page_stride = 1 << 30
    storage = torch.zeros((num_pages - 1) * page_stride + page_size * num_kv_heads * head_dim,
                          dtype=torch.bfloat16, device="cuda")
    wide = storage.as_strided(batch.k_cache.shape,
                              (page_stride, num_kv_heads * head_dim, head_dim, 1))
    wide.copy_(batch.k_cache)
    variant = make_variant("causal", 32, 6)
    attention = BatchAttention(make_planner(32, 8, 128, 16, torch.bfloat16, q_lens, kv_lens, 0))
    plan = attention.plan(batch.qo_indptr_host, np.asarray(batch.kv_lens_host, np.int32),
                          variant)
    with pytest.raises(ValueError, match=r"strides must be in \[0, 2\^30\) elements"):
        attention.run(batch.q, wide, wide, batch.kv.with_cache(wide, wide), batch.seq_lens,
                      batch.qo_indptr, variant, plan=plan)
    del storage, wide
    run_and_check(batch, variant, attention, plan, torch.bfloat16)


def test_k_and_v_views_with_different_strides():
    # vLLM's K and V views share page and token strides, and the loader then derives V's
    # addresses from K's; a K/V pair laid out differently takes the general path.
    q_lens, kv_lens = [3, 1, 40], [70, 33, 100]
    batch = make_batch(q_lens, kv_lens, 32, 8, 128, 16, torch.bfloat16, "vllm_packed", 9)
    num_pages, page_size, num_kv_heads, head_dim = batch.v_cache.shape
    padded = torch.full((num_pages, page_size, num_kv_heads, head_dim + 8), math.nan,
                        dtype=torch.bfloat16, device="cuda")
    v_cache = padded[..., :head_dim]
    v_cache.copy_(batch.v_cache)
    assert v_cache.stride()[:2] != batch.k_cache.stride()[:2]
    batch.v_cache = v_cache
    batch.kv = batch.kv.with_cache(batch.k_cache, v_cache)
    variant = make_variant("causal", 32, 3)
    attention = BatchAttention(make_planner(32, 8, 128, 16, torch.bfloat16, q_lens, kv_lens, 0))
    plan = attention.plan(batch.qo_indptr_host, np.asarray(batch.kv_lens_host, np.int32),
                          variant)
    run_and_check(batch, variant, attention, plan, torch.bfloat16)
