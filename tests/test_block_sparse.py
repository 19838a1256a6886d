"""Block-table -> BSR translation, KV cache views and the two-level (shared prefix) form."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fi_backend import reference
from fi_backend.metadata import (BlockSparseKV, BsrBuffers, block_table_to_bsr, split_kv_cache,
                                 split_shared_prefix)
from fi_backend.variants import AttentionVariant


def naive_bsr(block_table, seq_lens, page_size):
    """Per-request Python construction: (indptr, packed page ids, last_page_len) as lists."""
    indptr, indices, last_page_len = [0], [], []
    for row, seq_len in zip(block_table.tolist(), seq_lens.tolist()):
        num_pages = (seq_len + page_size - 1) // page_size
        indices += row[:num_pages]
        indptr.append(len(indices))
        last_page_len.append(seq_len - (num_pages - 1) * page_size if num_pages else 0)
    return indptr, indices, last_page_len


def assert_translation_is_naive(kv, block_table, seq_lens, page_size):
    indptr, indices, last_page_len = naive_bsr(block_table, seq_lens, page_size)
    assert kv.indptr.dtype == kv.indices.dtype == kv.last_page_len.dtype == torch.int32
    assert kv.indptr.tolist() == indptr
    assert kv.last_page_len.tolist() == last_page_len
    assert kv.indices.shape[0] == block_table.numel()
    assert kv.indices[:len(indices)].tolist() == indices
    assert (kv.indices[len(indices):] == 0).all()
    assert kv.kv_len_per_req.tolist() == seq_lens.tolist()
    assert kv.page_size == page_size


def random_batch(gen, batch_size, max_blocks, page_size, num_pages=64):
    block_table = torch.randint(0, num_pages, (batch_size, max_blocks), generator=gen,
                                dtype=torch.int32)
    seq_lens = torch.randint(0, max_blocks * page_size + 1, (batch_size,), generator=gen,
                             dtype=torch.int32)
    return block_table, seq_lens


@settings(max_examples=100, deadline=None)
@given(batch_size=st.integers(1, 9), max_blocks=st.integers(1, 7),
       page_size=st.sampled_from([1, 2, 5, 16]), seed=st.integers(0, 2**31 - 1))
def test_translation_matches_naive_on_random_batches(batch_size, max_blocks, page_size, seed):
    gen = torch.Generator().manual_seed(seed)
    block_table, seq_lens = random_batch(gen, batch_size, max_blocks, page_size)
    kv = block_table_to_bsr(block_table, seq_lens, page_size)
    assert_translation_is_naive(kv, block_table, seq_lens, page_size)


@pytest.mark.parametrize("page_size,seq_lens", [
    (4, [8, 4, 12]),      # multiples of the page size
    (4, [1, 3, 2]),       # shorter than a page
    (4, [0, 5, 0]),       # zero-length requests
    (4, [12, 12, 12]),    # full block tables
    (1, [3, 0, 1]),       # page size 1
    (16, [0, 0, 0]),      # nothing at all
])
def test_translation_edge_cases(page_size, seq_lens):
    block_table = torch.tensor([[7, 3, 9], [1, 2, 4], [5, 6, 8]], dtype=torch.int32)
    seq_lens = torch.tensor(seq_lens, dtype=torch.int32)
    kv = block_table_to_bsr(block_table, seq_lens, page_size)
    assert_translation_is_naive(kv, block_table, seq_lens, page_size)


def test_translation_reads_a_column_slice_of_a_wider_block_table():
    wide = torch.arange(40, dtype=torch.int32).view(4, 10)
    seq_lens = torch.tensor([5, 0, 9, 2], dtype=torch.int32)
    kv = block_table_to_bsr(wide[:, 3:], seq_lens, 2)
    assert_translation_is_naive(kv, wide[:, 3:], seq_lens, 2)


def test_persistent_buffers_are_written_in_place_and_fully_refreshed():
    buffers = BsrBuffers(max_requests=4, max_pages=4 * 5, device="cpu")
    gen = torch.Generator().manual_seed(0)
    for batch_size, page_size in [(4, 3), (2, 3), (3, 1)]:
        block_table, seq_lens = random_batch(gen, batch_size, 5, page_size)
        kv = block_table_to_bsr(block_table, seq_lens, page_size, out=buffers)
        assert kv.indptr.data_ptr() == buffers.indptr.data_ptr()
        assert kv.indices.data_ptr() == buffers.indices.data_ptr()
        assert kv.last_page_len.data_ptr() == buffers.last_page_len.data_ptr()
        assert_translation_is_naive(kv, block_table, seq_lens, page_size)


def test_translation_rejects_bad_inputs_before_writing():
    buffers = BsrBuffers(max_requests=2, max_pages=6, device="cpu")
    buffers.indices.fill_(-7)
    block_table = torch.zeros(3, 3, dtype=torch.int32)
    seq_lens = torch.ones(3, dtype=torch.int32)
    with pytest.raises(ValueError, match="batch_size 3 exceeds the buffers' max_requests 2"):
        block_table_to_bsr(block_table, seq_lens, 4, out=buffers)
    with pytest.raises(ValueError, match="max_pages 5"):
        block_table_to_bsr(block_table[:2], seq_lens[:2], 4, out=BsrBuffers(2, 5, "cpu"))
    assert (buffers.indices == -7).all()
    with pytest.raises(ValueError, match="block_table must be int32"):
        block_table_to_bsr(block_table.long(), seq_lens, 4)
    with pytest.raises(ValueError, match=r"seq_lens must be int32 \[3\]"):
        block_table_to_bsr(block_table, seq_lens[:2], 4)
    with pytest.raises(ValueError, match="page_size 0 is not allowed"):
        block_table_to_bsr(block_table, seq_lens, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("batch_size,max_blocks,page_size", [
    (1, 2056, 16),   # one long request (fi-bench's long context)
    (64, 73, 16),    # a decode batch
    (300, 40, 16),   # more requests than the kernel's threads: several per thread
    (1025, 3, 5),    # many CTAs' worth of slots, page size not a power of two
    (3, 7, 1),
    (4, 0, 16),      # no columns: every request empty
])
@pytest.mark.parametrize("column_major", [False, True])
def test_gpu_translation_of_a_column_slice_matches_naive(batch_size, max_blocks, page_size,
                                                         column_major):
    """The one-launch translation on a GPU (row-major tables) and the tensor-code form it
    falls back to (other strides), on slices of a wider table as the builder passes them."""
    gen = torch.Generator().manual_seed(batch_size * 7 + max_blocks)
    wide, seq_lens = random_batch(gen, batch_size, max_blocks + 5, page_size, num_pages=4096)
    seq_lens = seq_lens.clamp(max=max_blocks * page_size)
    seq_lens[::3] = 0
    wide = wide.cuda()
    if column_major:
        wide = wide.t().contiguous().t()
    table = wide[:, 2:2 + max_blocks]
    buffers = BsrBuffers(max_requests=batch_size, max_pages=max(batch_size * max_blocks, 1),
                         device="cuda")
    buffers.indices.fill_(-1)
    kv = block_table_to_bsr(table, seq_lens.cuda(), page_size, out=buffers)
    torch.cuda.synchronize()
    assert_translation_is_naive(kv, table.cpu(), seq_lens, page_size)


def test_vllm_packed_views_read_the_right_bytes():
    num_blocks, block_size, num_kv_heads, head_dim = 3, 4, 2, 8
    # vLLM allocates physical (blocks, tokens, heads, 2*head_dim) and hands over the permuted
    # logical (blocks, heads, tokens, 2*head_dim) view. Each element holds its flat offset.
    physical = torch.arange(num_blocks * block_size * num_kv_heads * 2 * head_dim,
                            dtype=torch.float64).view(num_blocks, block_size, num_kv_heads,
                                                      2 * head_dim)
    k, v = split_kv_cache(physical.permute(0, 2, 1, 3), "vllm_packed")
    assert k.shape == v.shape == (num_blocks, block_size, num_kv_heads, head_dim)
    assert k.data_ptr() == physical.data_ptr() and k.stride(-1) == 1
    for page, token, head, d in [(0, 0, 0, 0), (2, 3, 1, 7), (1, 2, 0, 5)]:
        offset = ((page * block_size + token) * num_kv_heads + head) * 2 * head_dim + d
        assert k[page, token, head, d] == offset
        assert v[page, token, head, d] == offset + head_dim
    assert torch.equal(k, physical[..., :head_dim]) and torch.equal(v, physical[..., head_dim:])


def test_paged_5d_views_read_the_right_bytes():
    num_blocks, block_size, num_kv_heads, head_dim = 3, 4, 2, 8
    cache = torch.arange(num_blocks * 2 * block_size * num_kv_heads * head_dim,
                         dtype=torch.float64).view(num_blocks, 2, block_size, num_kv_heads,
                                                   head_dim)
    k, v = split_kv_cache(cache, "paged_5d")
    assert k.shape == v.shape == (num_blocks, block_size, num_kv_heads, head_dim)
    for page, token, head, d in [(0, 0, 0, 0), (2, 3, 1, 7), (1, 2, 0, 5)]:
        offset = (((page * 2) * block_size + token) * num_kv_heads + head) * head_dim + d
        assert k[page, token, head, d] == offset
        assert v[page, token, head, d] == offset + block_size * num_kv_heads * head_dim


def test_split_kv_cache_rejects_unknown_layouts_and_shapes():
    with pytest.raises(ValueError, match="supported: vllm_packed, paged_5d"):
        split_kv_cache(torch.zeros(2, 2, 4, 8), "hnd")
    with pytest.raises(ValueError, match="2\\*head_dim"):
        split_kv_cache(torch.zeros(2, 2, 4, 7), "vllm_packed")
    with pytest.raises(ValueError, match="paged_5d cache must be"):
        split_kv_cache(torch.zeros(2, 3, 4, 2, 8), "paged_5d")
    with pytest.raises(ValueError, match="last dim must be contiguous"):
        split_kv_cache(torch.zeros(2, 2, 8, 4).transpose(2, 3), "vllm_packed")


def shared_prefix_batch(gen, batch_size, prefix_pages, page_size, max_blocks, num_pages=48):
    """A block table whose rows share their first `prefix_pages` pages; seq_lens >= the prefix."""
    prefix_len = prefix_pages * page_size
    block_table = torch.randperm(num_pages, generator=gen)[:batch_size * max_blocks].view(
        batch_size, max_blocks).to(torch.int32)
    block_table[:, :prefix_pages] = block_table[0, :prefix_pages].clone()
    seq_lens = torch.randint(prefix_len, max_blocks * page_size + 1, (batch_size,),
                             generator=gen, dtype=torch.int32)
    return block_table, seq_lens


@settings(max_examples=40, deadline=None)
@given(batch_size=st.integers(1, 4), prefix_pages=st.integers(0, 3),
       page_size=st.sampled_from([1, 3, 4]), seed=st.integers(0, 2**31 - 1),
       causal=st.booleans(), window_left=st.sampled_from([-1, 2, 7]),
       with_alibi_and_sinks=st.booleans())
def test_two_level_cascade_equals_single_level(batch_size, prefix_pages, page_size, seed, causal,
                                               window_left, with_alibi_and_sinks):
    gen = torch.Generator().manual_seed(seed)
    max_blocks, num_kv_heads, num_qo_heads, head_dim = 5, 2, 4, 8
    block_table, seq_lens = shared_prefix_batch(gen, batch_size, prefix_pages, page_size,
                                                max_blocks)
    prefix_len = prefix_pages * page_size
    prefix, suffix = split_shared_prefix(block_table, seq_lens, prefix_len, page_size)
    assert_translation_is_naive(prefix, block_table[:1, :prefix_pages],
                                torch.tensor([prefix_len], dtype=torch.int32), page_size)
    assert_translation_is_naive(suffix, block_table[:, prefix_pages:], seq_lens - prefix_len,
                                page_size)

    cache = torch.randn(48, 2, page_size, num_kv_heads, head_dim, generator=gen)
    k_cache, v_cache = split_kv_cache(cache, "paged_5d")
    q_lens = [int(torch.randint(0, int(n) + 1, (1,), generator=gen)) for n in seq_lens]
    qo_indptr = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(int(qo_indptr[-1]), num_qo_heads, head_dim, generator=gen)
    variant = AttentionVariant(
        causal=causal, window_left=window_left,
        alibi_slopes=torch.tensor([0.3, 0.2, 0.1, 0.05]) if with_alibi_and_sinks else None,
        sinks=torch.tensor([0.0, 1.0, -1.0, 3.0]) if with_alibi_and_sinks else None)

    full = block_table_to_bsr(block_table, seq_lens, page_size).with_cache(k_cache, v_cache)
    o_full, lse_full = reference.batch_attention(q, qo_indptr, full, variant)
    o, lse = reference.cascade_attention(q, qo_indptr, prefix.with_cache(k_cache, v_cache),
                                         suffix.with_cache(k_cache, v_cache), variant)
    torch.testing.assert_close(o, o_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_full, atol=1e-5, rtol=1e-5)


def test_split_shared_prefix_rejects_a_partial_page():
    block_table = torch.zeros(2, 4, dtype=torch.int32)
    seq_lens = torch.full((2,), 9, dtype=torch.int32)
    with pytest.raises(ValueError, match="multiple of page_size 4"):
        split_shared_prefix(block_table, seq_lens, 6, 4)
    with pytest.raises(ValueError, match="does not fit a block table of 4 columns"):
        split_shared_prefix(block_table, seq_lens, 20, 4)


def test_kv_len_and_with_cache():
    kv = BlockSparseKV(torch.tensor([0, 2, 2, 5], dtype=torch.int32),
                       torch.tensor([4, 1, 0, 2, 3], dtype=torch.int32),
                       torch.tensor([3, 0, 16], dtype=torch.int32), page_size=16)
    assert kv.kv_len_per_req.tolist() == [19, 0, 48]
    assert kv.batch_size == 3
    with pytest.raises(ValueError, match="page_size=16"):
        kv.with_cache(torch.zeros(5, 8, 2, 4), torch.zeros(5, 8, 2, 4))


@pytest.mark.gpu
def test_gpu_translation_has_no_host_sync_and_replays_in_a_cuda_graph():
    gen = torch.Generator().manual_seed(0)
    block_table, seq_lens = random_batch(gen, 8, 6, 16)
    block_table, seq_lens = block_table.cuda(), seq_lens.cuda()
    buffers = BsrBuffers(max_requests=8, max_pages=8 * 6, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        kv = block_table_to_bsr(block_table, seq_lens, 16, out=buffers)
        torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_translation_is_naive(kv, block_table.cpu(), seq_lens.cpu(), 16)

    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        block_table_to_bsr(block_table, seq_lens, 16, out=buffers)  # warm-up outside capture
        with torch.cuda.graph(graph):
            captured = block_table_to_bsr(block_table, seq_lens, 16, out=buffers)
    torch.cuda.current_stream().wait_stream(stream)
    new_table, new_lens = random_batch(gen, 8, 6, 16)
    block_table.copy_(new_table)
    seq_lens.copy_(new_lens)
    graph.replay()
    torch.cuda.synchronize()
    assert_translation_is_naive(captured, new_table, new_lens, 16)
