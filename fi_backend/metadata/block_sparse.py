"""Block-sparse (BSR) view of a paged KV cache, and its construction from vLLM inputs.

A batch over a paged cache is a BSR matrix: row `b` is request `b`, its column blocks are the
KV pages `indices[indptr[b]:indptr[b+1]]`, in sequence order, all full except the last, which
holds `last_page_len[b]` tokens (1..page_size; 0 for a request with no pages). A shared prefix
is one more BSR row that a group of requests attends to (two levels, merged by LSE).

Everything here that takes device tensors runs on the device only (tensor ops, or one kernel of
`fi_backend._C` on a GPU): no Python loop over requests and no device-to-host copy, so it may
run inside a CUDA graph. Checks use shapes (host-known) only; data preconditions are stated in
the docstrings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

__all__ = [
    "BlockSparseKV",
    "BsrBuffers",
    "KV_CACHE_LAYOUTS",
    "block_table_to_bsr",
    "block_table_to_bsr_tensor_ops",
    "split_kv_cache",
    "split_shared_prefix",
]

KV_CACHE_LAYOUTS = ("vllm_packed", "paged_5d")


@dataclass(frozen=True)
class BlockSparseKV:
    """BSR metadata of a paged KV cache plus (optionally) the K and V views it indexes.

    indptr:        int32 [B + 1], page offsets of each request into `indices`.
    indices:       int32 [>= nnz_pages], page ids; only `indices[:indptr[B]]` is meaningful
                   (device-built instances keep a host-known capacity, padded with page 0).
    last_page_len: int32 [B], tokens in each request's last page (0 when it has no pages).
    page_size:     tokens per page.
    k_cache, v_cache: `(num_pages, page_size, num_kv_heads, head_dim)` strided views, last
                   dim contiguous (see `split_kv_cache`).
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    last_page_len: torch.Tensor
    page_size: int
    k_cache: torch.Tensor | None = None
    v_cache: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.last_page_len.shape[0]

    @property
    def num_pages_per_req(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    @property
    def kv_len_per_req(self) -> torch.Tensor:
        """int32 [B]: `(num_pages - 1) * page_size + last_page_len`, 0 for a request without pages."""
        num_pages = self.num_pages_per_req
        kv_len = (num_pages - 1) * self.page_size + self.last_page_len
        return torch.where(num_pages > 0, kv_len, torch.zeros_like(kv_len)).to(torch.int32)

    def with_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> "BlockSparseKV":
        """The same metadata, indexing these K and V views."""
        for name, view in (("k_cache", k_cache), ("v_cache", v_cache)):
            if view.dim() != 4 or view.shape[1] != self.page_size or view.stride(-1) != 1:
                raise ValueError(
                    f"{name} has shape {tuple(view.shape)} and strides {view.stride()}; it must "
                    f"be (num_pages, page_size={self.page_size}, num_kv_heads, head_dim) with a "
                    "contiguous last dim")
        if k_cache.shape != v_cache.shape:
            raise ValueError(
                f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must have "
                "the same shape")
        return replace(self, k_cache=k_cache, v_cache=v_cache)


def split_kv_cache(kv_cache: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V views `(num_pages, page_size, num_kv_heads, head_dim)` of one cache tensor, no copy.

    layout "vllm_packed": vLLM 0.26's logical `(num_blocks, num_kv_heads, block_size,
        2 * head_dim)` with K and V concatenated per token and head (physically NHD; any
        strides are accepted, the views keep them).
    layout "paged_5d": `(num_blocks, 2, block_size, num_kv_heads, head_dim)`.
    """
    if layout == "vllm_packed":
        if kv_cache.dim() != 4 or kv_cache.shape[-1] % 2 != 0:
            raise ValueError(
                f"a vllm_packed cache must be (num_blocks, num_kv_heads, block_size, 2*head_dim); "
                f"got shape {tuple(kv_cache.shape)}")
        head_dim = kv_cache.shape[-1] // 2
        token_major = kv_cache.permute(0, 2, 1, 3)
        k_view, v_view = token_major[..., :head_dim], token_major[..., head_dim:]
    elif layout == "paged_5d":
        if kv_cache.dim() != 5 or kv_cache.shape[1] != 2:
            raise ValueError(
                f"a paged_5d cache must be (num_blocks, 2, block_size, num_kv_heads, head_dim); "
                f"got shape {tuple(kv_cache.shape)}")
        k_view, v_view = kv_cache[:, 0], kv_cache[:, 1]
    else:
        raise ValueError(f"kv cache layout {layout!r} is not supported; supported: "
                         f"{', '.join(KV_CACHE_LAYOUTS)}")
    if kv_cache.stride(-1) != 1:
        raise ValueError(
            f"the kv cache's last dim must be contiguous; its strides are {kv_cache.stride()}")
    return k_view, v_view


class BsrBuffers:
    """Persistent device buffers that `block_table_to_bsr(..., out=)` writes into, so that the
    BlockSparseKV a CUDA graph captured keeps pointing at live metadata.

    `max_pages` must cover `batch_size * max_blocks_per_req` of every block table passed in
    (the only bound on the page count known without reading device data)."""

    def __init__(self, max_requests: int, max_pages: int, device: torch.device | str) -> None:
        if max_requests < 1 or max_pages < 1:
            raise ValueError(
                f"BsrBuffers needs max_requests >= 1 and max_pages >= 1; got {max_requests}, "
                f"{max_pages}")
        self.max_requests = max_requests
        self.max_pages = max_pages
        self.indptr = torch.zeros(max_requests + 1, dtype=torch.int32, device=device)
        self.indices = torch.zeros(max_pages, dtype=torch.int32, device=device)
        self.last_page_len = torch.zeros(max_requests, dtype=torch.int32, device=device)


def _check_translation_inputs(block_table: torch.Tensor, seq_lens: torch.Tensor, page_size: int,
                              out: BsrBuffers | None) -> None:
    if not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size {page_size!r} is not allowed; use an int >= 1")
    if block_table.dim() != 2 or block_table.dtype != torch.int32:
        raise ValueError(
            f"block_table must be int32 [batch_size, max_blocks]; got {block_table.dtype} "
            f"{tuple(block_table.shape)}")
    batch_size, max_blocks = block_table.shape
    if seq_lens.dim() != 1 or seq_lens.shape[0] != batch_size or seq_lens.dtype != torch.int32:
        raise ValueError(
            f"seq_lens must be int32 [{batch_size}] (one per block table row); got "
            f"{seq_lens.dtype} {tuple(seq_lens.shape)}")
    if seq_lens.device != block_table.device:
        raise ValueError(
            f"seq_lens is on {seq_lens.device} but block_table on {block_table.device}")
    if out is None:
        return
    if out.indptr.device != block_table.device:
        raise ValueError(f"out buffers are on {out.indptr.device} but block_table on "
                         f"{block_table.device}")
    if batch_size > out.max_requests:
        raise ValueError(
            f"batch_size {batch_size} exceeds the buffers' max_requests {out.max_requests}")
    if batch_size * max_blocks > out.max_pages:
        raise ValueError(
            f"batch_size {batch_size} x max_blocks {max_blocks} = {batch_size * max_blocks} "
            f"pages may not fit the buffers' max_pages {out.max_pages}; allocate BsrBuffers with "
            "max_pages >= max_requests * max_blocks_per_req")


def block_table_to_bsr(block_table: torch.Tensor, seq_lens: torch.Tensor, page_size: int,
                       out: BsrBuffers | None = None) -> BlockSparseKV:
    """vLLM block table -> BlockSparseKV, on the tensors' device, without a host copy.

    block_table: int32 [B, max_blocks], row b's first `ceil(seq_lens[b] / page_size)` entries
                 are request b's pages in order (precondition: that count <= max_blocks).
    seq_lens:    int32 [B], KV tokens per request (0 allowed).
    out:         persistent buffers to write into; the result's tensors are views of them.

    `indices` has the host-known length B * max_blocks: the nnz pages packed in request order,
    then padding with page 0 (so every slot a kernel might prefetch is a valid page).

    On a GPU this is one kernel (`_C.block_table_to_bsr`): the builder runs it before every
    engine step, where the tensor-code form below costs ~27 launches. The tensor code runs
    elsewhere (CPU steps) and stays the kernel's reference.
    """
    _check_translation_inputs(block_table, seq_lens, page_size, out)
    if block_table.is_cuda and _translation_kernel_applies(block_table, seq_lens):
        return _translate_with_kernel(block_table, seq_lens, page_size, out)
    return _translate_with_tensor_ops(block_table, seq_lens, page_size, out)


def _translation_kernel_applies(block_table: torch.Tensor, seq_lens: torch.Tensor) -> bool:
    from fi_backend import _C

    batch_size, max_blocks = block_table.shape
    return (batch_size <= _C.BLOCK_TABLE_TO_BSR_MAX_REQUESTS
            and (max_blocks <= 1 or block_table.stride(1) == 1)
            and (batch_size <= 1 or (block_table.stride(0) >= max_blocks
                                     and seq_lens.stride(0) == 1)))


def _translate_with_kernel(block_table: torch.Tensor, seq_lens: torch.Tensor, page_size: int,
                           out: BsrBuffers | None) -> BlockSparseKV:
    from fi_backend import _C
    from fi_backend._streams import current_raw_stream

    batch_size, max_blocks = block_table.shape
    if out is None:
        indptr = torch.empty(batch_size + 1, dtype=torch.int32, device=block_table.device)
        indices = torch.empty(batch_size * max_blocks, dtype=torch.int32,
                              device=block_table.device)
        last_page_len = torch.empty(batch_size, dtype=torch.int32, device=block_table.device)
    else:
        indptr = out.indptr[:batch_size + 1]
        indices = out.indices[:batch_size * max_blocks]
        last_page_len = out.last_page_len[:batch_size]
    with torch.cuda.device(block_table.device):
        _C.block_table_to_bsr(
            block_table=block_table.data_ptr(),
            row_stride=block_table.stride(0) if batch_size > 1 else max_blocks,
            num_reqs=batch_size, max_blocks=max_blocks, seq_lens=seq_lens.data_ptr(),
            page_size=page_size, indptr=indptr.data_ptr(), indices=indices.data_ptr(),
            last_page_len=last_page_len.data_ptr(),
            stream=current_raw_stream(block_table.device))
    return BlockSparseKV(indptr, indices, last_page_len, page_size)


def block_table_to_bsr_tensor_ops(block_table: torch.Tensor, seq_lens: torch.Tensor,
                                  page_size: int, out: BsrBuffers | None = None
                                  ) -> BlockSparseKV:
    """`block_table_to_bsr` in device tensor ops (any device, any strides; capturable)."""
    _check_translation_inputs(block_table, seq_lens, page_size, out)
    return _translate_with_tensor_ops(block_table, seq_lens, page_size, out)


def _translate_with_tensor_ops(block_table: torch.Tensor, seq_lens: torch.Tensor,
                               page_size: int, out: BsrBuffers | None) -> BlockSparseKV:
    batch_size, max_blocks = block_table.shape
    capacity = batch_size * max_blocks
    device = block_table.device

    num_pages = (seq_lens + (page_size - 1)) // page_size
    page_end = torch.cumsum(num_pages, dim=0, dtype=torch.int32)
    last_page_len = torch.where(num_pages > 0, seq_lens - (num_pages - 1) * page_size,
                                torch.zeros_like(seq_lens))

    # Gather form of the packing: slot p belongs to the request whose page range covers it,
    # found by binary search over the page offsets, so every slot is written exactly once.
    slot = torch.arange(capacity, dtype=torch.int32, device=device)
    request = torch.searchsorted(page_end, slot, right=True)
    in_use = request < batch_size
    request = request.clamp(max=max(batch_size - 1, 0))
    page_start = page_end - num_pages
    block = (slot - page_start[request]).clamp(0, max(max_blocks - 1, 0)).long()
    indices = torch.where(in_use, block_table[request, block], torch.zeros_like(slot))

    if out is None:
        indptr = torch.cat([page_end.new_zeros(1), page_end])
        return BlockSparseKV(indptr, indices, last_page_len, page_size)
    indptr_view = out.indptr[:batch_size + 1]
    indptr_view[:1].zero_()
    indptr_view[1:].copy_(page_end)
    indices_view = out.indices[:capacity]
    indices_view.copy_(indices)
    last_page_len_view = out.last_page_len[:batch_size]
    last_page_len_view.copy_(last_page_len)
    return BlockSparseKV(indptr_view, indices_view, last_page_len_view, page_size)


def split_shared_prefix(block_table: torch.Tensor, seq_lens: torch.Tensor,
                        shared_prefix_len_tokens: int, page_size: int,
                        prefix_out: BsrBuffers | None = None,
                        suffix_out: BsrBuffers | None = None
                        ) -> tuple[BlockSparseKV, BlockSparseKV]:
    """Two-level (cascade) form of a group of requests that share their first pages.

    Returns `(prefix, suffix)`: `prefix` is a single BSR row over the shared pages (taken from
    block table row 0), holding keys at positions `0 .. shared_prefix_len_tokens - 1`; `suffix`
    has one row per request over its remaining pages, whose keys start at position
    `shared_prefix_len_tokens`. Merging a request's states over both levels equals attention
    over its whole sequence (`reference.cascade_attention`).

    Preconditions (not checked: they are device data): every row's first
    `shared_prefix_len_tokens / page_size` pages are the same, and every
    `seq_lens[b] >= shared_prefix_len_tokens`.
    """
    if not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size {page_size!r} is not allowed; use an int >= 1")
    if (not isinstance(shared_prefix_len_tokens, int) or shared_prefix_len_tokens < 0
            or shared_prefix_len_tokens % page_size != 0):
        raise ValueError(
            f"shared_prefix_len_tokens {shared_prefix_len_tokens!r} is not allowed; it must be a "
            f"multiple of page_size {page_size} (only whole pages can be shared), >= 0")
    if block_table.dim() != 2 or block_table.shape[0] < 1:
        raise ValueError(
            f"block_table must be [batch_size >= 1, max_blocks]; got {tuple(block_table.shape)}")
    prefix_pages = shared_prefix_len_tokens // page_size
    if prefix_pages > block_table.shape[1]:
        raise ValueError(
            f"a shared prefix of {prefix_pages} pages does not fit a block table of "
            f"{block_table.shape[1]} columns")
    prefix = block_table_to_bsr(
        block_table[:1, :prefix_pages], seq_lens.new_full((1,), shared_prefix_len_tokens),
        page_size, out=prefix_out)
    suffix = block_table_to_bsr(
        block_table[:, prefix_pages:], seq_lens - shared_prefix_len_tokens, page_size,
        out=suffix_out)
    return prefix, suffix
