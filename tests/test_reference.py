"""The float32 oracle against an independent float64 softmax written with explicit loops."""

import itertools
import math

import pytest
import torch

from fi_backend import reference
from fi_backend.metadata import BlockSparseKV, split_kv_cache
from fi_backend.variants import AttentionVariant

HEAD_DIM = 8
PAGE_SIZE = 4
NUM_QO_HEADS = 4
# (q_len, kv_len): decode, prefill, chunked prefill, empty query rows, empty request,
# a single token, KV a multiple of the page size, KV shorter than a page.
REQUESTS = [(1, 13), (7, 7), (5, 19), (0, 6), (0, 0), (1, 1), (3, 8), (2, 3)]


def naive_request_attention(q, k, v, variant, mask):
    """float64 loops over (query, head, key): output [q_len, H, D] and natural-log LSE [q_len, H]."""
    q_len, num_qo_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[0], k.shape[1]
    group = num_qo_heads // num_kv_heads
    scale = variant.sm_scale if variant.sm_scale is not None else 1 / math.sqrt(head_dim)
    out = torch.zeros(q_len, num_qo_heads, head_dim, dtype=torch.float64)
    lse = torch.full((q_len, num_qo_heads), -math.inf, dtype=torch.float64)
    for i in range(q_len):
        q_pos = kv_len - q_len + i
        for h in range(num_qo_heads):
            logits, values = [], []
            for j in range(kv_len):
                if variant.causal and j > q_pos:
                    continue
                if variant.window_left >= 0 and j < q_pos - variant.window_left:
                    continue
                if mask is not None and not mask[i][j]:
                    continue
                s = scale * float(q[i, h].double() @ k[j, h // group].double())
                if variant.logits_soft_cap > 0:
                    s = variant.logits_soft_cap * math.tanh(s / variant.logits_soft_cap)
                if variant.alibi_slopes is not None:
                    s += float(variant.alibi_slopes[h]) * (j - q_pos)
                logits.append(s)
                values.append(v[j, h // group].double())
            denominator_logits = list(logits)
            if variant.sinks is not None:
                denominator_logits.append(float(variant.sinks[h]))
            if not denominator_logits:
                continue
            m = max(denominator_logits)
            row_lse = m + math.log(sum(math.exp(x - m) for x in denominator_logits))
            lse[i, h] = row_lse
            for s, value in zip(logits, values):
                out[i, h] += math.exp(s - row_lse) * value
    return out, lse


def make_paged_batch(requests, num_kv_heads, page_size=PAGE_SIZE, seed=0):
    """Random queries and per-request K/V, scattered over shuffled pages of a vLLM packed cache.
    Returns (q, qo_indptr, kv, per-request contiguous (k, v))."""
    gen = torch.Generator().manual_seed(seed)
    pages_per_req = [-(-kv_len // page_size) for _, kv_len in requests]
    num_pages = sum(pages_per_req) + 3
    physical = torch.randn(num_pages, page_size, num_kv_heads, 2 * HEAD_DIM, generator=gen)
    k_cache, v_cache = split_kv_cache(physical.permute(0, 2, 1, 3), "vllm_packed")
    page_order = torch.randperm(num_pages, generator=gen).tolist()
    indptr, indices, last_page_len, contiguous_kv = [0], [], [], []
    for (_, kv_len), n_pages in zip(requests, pages_per_req):
        pages = [page_order.pop() for _ in range(n_pages)]
        indices += pages
        indptr.append(len(indices))
        last_page_len.append(kv_len - (n_pages - 1) * page_size if n_pages else 0)
        k = torch.cat([k_cache[p] for p in pages])[:kv_len] if pages else k_cache[:0, 0]
        v = torch.cat([v_cache[p] for p in pages])[:kv_len] if pages else v_cache[:0, 0]
        contiguous_kv.append((k, v))
    as_int32 = lambda xs: torch.tensor(xs, dtype=torch.int32)
    kv = BlockSparseKV(as_int32(indptr), as_int32(indices), as_int32(last_page_len),
                       page_size).with_cache(k_cache, v_cache)
    qo_indptr = as_int32([0] + list(itertools.accumulate(q for q, _ in requests)))
    q = torch.randn(int(qo_indptr[-1]), NUM_QO_HEADS, HEAD_DIM, generator=gen)
    return q, qo_indptr, kv, contiguous_kv


def random_masks(requests, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(q_len, kv_len, generator=gen) < 0.6 for q_len, kv_len in requests]


def assert_matches_naive(o, lse, requests, qo_indptr, q, contiguous_kv, variant, masks):
    for b, (k, v) in enumerate(contiguous_kv):
        rows = slice(int(qo_indptr[b]), int(qo_indptr[b + 1]))
        mask = None if masks is None else masks[b].tolist()
        o_ref, lse_ref = naive_request_attention(q[rows], k, v, variant, mask)
        assert o.dtype == torch.float32 and lse.dtype == torch.float32
        torch.testing.assert_close(o[rows].double(), o_ref, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(lse[rows].double(), lse_ref, atol=2e-5, rtol=2e-5)


ALIBI = torch.tensor([0.5, 0.25, 0.125, 0.0625])
SINKS = torch.tensor([0.3, -1.0, 2.0, 0.0])
VARIANT_GRID = list(itertools.product(
    [True, False],        # causal
    [-1, 0, 3],           # window_left
    [0.0, 2.5],           # logits_soft_cap
    [None, ALIBI],        # alibi_slopes
    [None, SINKS],        # sinks
    [False, True],        # custom mask
))


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal,window_left,soft_cap,alibi,sinks,use_mask", VARIANT_GRID)
def test_batch_attention_matches_naive_softmax(num_kv_heads, causal, window_left, soft_cap,
                                               alibi, sinks, use_mask):
    variant = AttentionVariant(causal=causal, window_left=window_left, logits_soft_cap=soft_cap,
                               alibi_slopes=alibi, sinks=sinks,
                               sm_scale=0.7 if soft_cap else None)
    q, qo_indptr, kv, contiguous_kv = make_paged_batch(REQUESTS, num_kv_heads)
    masks = random_masks(REQUESTS, seed=1) if use_mask else None
    o, lse = reference.batch_attention(q, qo_indptr, kv, variant, custom_masks=masks)
    assert_matches_naive(o, lse, REQUESTS, qo_indptr, q, contiguous_kv, variant, masks)


def test_fully_masked_rows_have_zero_output_and_minus_inf_lse():
    q, qo_indptr, kv, _ = make_paged_batch([(3, 5)], num_kv_heads=2)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[1, 2] = True
    o, lse = reference.batch_attention(q, qo_indptr, kv, AttentionVariant(), custom_masks=[mask])
    assert torch.equal(o[0], torch.zeros_like(o[0])) and torch.equal(o[2], torch.zeros_like(o[2]))
    assert torch.isneginf(lse[[0, 2]]).all() and torch.isfinite(lse[1]).all()
    with_sinks = AttentionVariant(sinks=SINKS)
    o, lse = reference.batch_attention(q, qo_indptr, kv, with_sinks, custom_masks=[mask])
    assert torch.equal(o[0], torch.zeros_like(o[0]))
    torch.testing.assert_close(lse[0], SINKS)


def test_attention_dense_honours_absolute_positions():
    """Keys given as a chunk at kv_pos_start see the same masks/biases as in the full sequence."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(4, 4, HEAD_DIM, generator=gen)
    k = torch.randn(10, 2, HEAD_DIM, generator=gen)
    v = torch.randn(10, 2, HEAD_DIM, generator=gen)
    variant = AttentionVariant(window_left=2, alibi_slopes=ALIBI)
    o_ref, lse_ref = naive_request_attention(q, k, v, variant, None)
    o, lse = reference.attention_dense(q, k, v, variant, q_pos_start=6)
    torch.testing.assert_close(o.double(), o_ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), lse_ref, atol=2e-5, rtol=2e-5)
    o_tail, lse_tail = reference.attention_dense(q, k[4:], v[4:], variant, q_pos_start=6,
                                                 kv_pos_start=4)
    # With window_left 2 the queries at 6..9 never see keys 0..3, so the tail chunk is the whole.
    torch.testing.assert_close(o_tail, o, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse_tail, lse, atol=1e-6, rtol=1e-6)


def test_apply_sinks_adds_the_sink_to_the_denominator():
    o = torch.randn(3, 4, HEAD_DIM)
    lse = torch.randn(3, 4)
    o_sunk, lse_sunk = reference.apply_sinks(o, lse, SINKS)
    expected_lse = torch.log(torch.exp(lse) + torch.exp(SINKS))
    torch.testing.assert_close(lse_sunk, expected_lse)
    torch.testing.assert_close(o_sunk, o * (torch.exp(lse) / torch.exp(expected_lse))[..., None])


def test_batch_attention_rejects_bad_inputs():
    q, qo_indptr, kv, _ = make_paged_batch([(2, 3)], num_kv_heads=2)
    with pytest.raises(ValueError, match="q_len 4 and kv_len 3"):
        reference.batch_attention(torch.randn(4, 4, HEAD_DIM), torch.tensor([0, 4]), kv,
                                  AttentionVariant())
    with pytest.raises(ValueError, match="custom_mask has shape"):
        reference.batch_attention(q, qo_indptr, kv, AttentionVariant(),
                                  custom_masks=[torch.ones(2, 2, dtype=torch.bool)])
    with pytest.raises(ValueError, match="one per query head"):
        reference.batch_attention(q, qo_indptr, kv, AttentionVariant(sinks=torch.zeros(3)))
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        reference.attention_dense(torch.randn(1, 3, HEAD_DIM), torch.randn(2, 2, HEAD_DIM),
                                  torch.randn(2, 2, HEAD_DIM), AttentionVariant(), 1)


@pytest.mark.gpu
def test_oracle_on_gpu_equals_cpu_and_upcasts_bf16():
    variant = AttentionVariant(window_left=3, logits_soft_cap=2.5, alibi_slopes=ALIBI,
                               sinks=SINKS)
    q, qo_indptr, kv, _ = make_paged_batch(REQUESTS, num_kv_heads=2)
    q_bf16 = q.bfloat16()
    o_cpu, lse_cpu = reference.batch_attention(q_bf16.float(), qo_indptr, kv, variant)
    kv_gpu = BlockSparseKV(kv.indptr.cuda(), kv.indices.cuda(), kv.last_page_len.cuda(),
                           kv.page_size).with_cache(kv.k_cache.cuda(), kv.v_cache.cuda())
    gpu_variant = AttentionVariant(window_left=3, logits_soft_cap=2.5, alibi_slopes=ALIBI.cuda(),
                                   sinks=SINKS.cuda())
    o, lse = reference.batch_attention(q_bf16.cuda(), qo_indptr.cuda(), kv_gpu, gpu_variant)
    assert o.dtype == lse.dtype == torch.float32 and o.is_cuda
    torch.testing.assert_close(o.cpu(), o_cpu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.cpu(), lse_cpu, atol=1e-5, rtol=1e-5)
