"""Public Python API of fi_backend's kernels.

Functions here check their tensors (dtype, device, shape, strides) and raise ValueError
before anything is launched or written, then hand device pointers, element strides and the
current CUDA stream to the torch-free extension `fi_backend._C` (DESIGN.md, decision 1).
LSE values are natural logarithms (fi_backend/variants.py).
"""

from __future__ import annotations

import torch

from fi_backend import _C
from fi_backend.attention import BatchAttention
from fi_backend._checks import (
    check_cuda,
    check_dtype,
    check_is_tensor,
    check_last_dim_contiguous,
    check_shape,
    check_vector_aligned,
)
from fi_backend._streams import current_raw_stream

__all__ = ["BatchAttention", "merge_states", "append_kv", "MERGE_STATES_DTYPES",
           "MERGE_STATES_MAX_HEAD_DIM", "MERGE_STATES_HEAD_DIM_MULTIPLE", "APPEND_KV_DTYPES"]

# Element types the extension's launchers take, by the name they are passed under.
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}

MERGE_STATES_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The kernel's limits, defined once in fi_backend/csrc/merge_states.h.
MERGE_STATES_MAX_HEAD_DIM: int = _C.MERGE_STATES_MAX_HEAD_DIM
MERGE_STATES_HEAD_DIM_MULTIPLE: int = _C.MERGE_STATES_HEAD_DIM_MULTIPLE


def _element_strides(tensor: torch.Tensor) -> tuple[int, ...]:
    """Strides in elements, 0 along dimensions of size 1: torch leaves any stride there, and
    the kernels' alignment contract should not see it."""
    return tuple(stride if size > 1 else 0 for size, stride in zip(tensor.shape, tensor.stride()))


def merge_states(
    v: torch.Tensor,
    s: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    out_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges partial attention results computed over disjoint key sets.

    v: `(num_rows, num_states, num_heads, head_dim)` float16/bfloat16/float32, each partial
       output normalized over its own keys; head_dim a multiple of 8 up to 512; last
       dimension contiguous, other strides free (multiples of 16 bytes).
    s: `(num_rows, num_states, num_heads)` float32, the natural-log LSE of each partial;
       -inf marks an empty partial, whose v is ignored (it may hold anything, NaN included).
    out, out_lse: optional outputs `(num_rows, num_heads, head_dim)` in v.dtype and
       `(num_rows, num_heads)` float32, written in place (any strides as for v).

    Returns `(o, lse)`: o = sum_s exp(s - lse) * v over the states, lse = logsumexp_s(s).
    A (row, head) whose partials are all empty gets o = 0 and lse = -inf.
    """
    check_is_tensor("v", v)
    check_is_tensor("s", s)
    check_shape("v", v, (None, None, None, None),
                ("num_rows", "num_states", "num_heads", "head_dim"))
    num_rows, num_states, num_heads, head_dim = v.shape
    check_dtype("v", v, MERGE_STATES_DTYPES)
    if head_dim % MERGE_STATES_HEAD_DIM_MULTIPLE != 0 or not (
            0 < head_dim <= MERGE_STATES_MAX_HEAD_DIM):
        raise ValueError(f"head_dim {head_dim} (v.shape[3]) is not supported; supported: "
                         f"multiples of {MERGE_STATES_HEAD_DIM_MULTIPLE} up to "
                         f"{MERGE_STATES_MAX_HEAD_DIM}")
    check_last_dim_contiguous("v", v)
    check_vector_aligned("v", v)
    check_shape("s", s, (num_rows, num_states, num_heads),
                ("num_rows", "num_states", "num_heads"))
    check_dtype("s", s, (torch.float32,))
    if out is not None:
        check_is_tensor("out", out)
        check_shape("out", out, (num_rows, num_heads, head_dim),
                    ("num_rows", "num_heads", "head_dim"))
        check_dtype("out", out, (v.dtype,))
        check_last_dim_contiguous("out", out)
        check_vector_aligned("out", out)
    if out_lse is not None:
        check_is_tensor("out_lse", out_lse)
        check_shape("out_lse", out_lse, (num_rows, num_heads), ("num_rows", "num_heads"))
        check_dtype("out_lse", out_lse, (torch.float32,))
    check_cuda("v", v)
    for name, tensor in (("s", s), ("out", out), ("out_lse", out_lse)):
        if tensor is not None:
            check_cuda(name, tensor, v.device)

    o = out if out is not None else v.new_empty((num_rows, num_heads, head_dim))
    lse = out_lse if out_lse is not None else s.new_empty((num_rows, num_heads))
    with torch.cuda.device(v.device):
        _C.merge_states(
            dtype=_DTYPE_NAMES[v.dtype],
            v=v.data_ptr(), v_strides=_element_strides(v)[:3],
            s=s.data_ptr(), s_strides=_element_strides(s),
            o=o.data_ptr(), o_strides=_element_strides(o)[:2],
            lse=lse.data_ptr(), lse_strides=_element_strides(lse),
            num_rows=num_rows, num_states=num_states, num_heads=num_heads, head_dim=head_dim,
            stream=current_raw_stream(v.device),
        )
    return o, lse


APPEND_KV_DTYPES = (torch.float16, torch.bfloat16)


def append_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Writes this step's K/V rows into the paged cache, in place (CUDA-graph capturable).

    key, value: `(num_tokens, num_kv_heads, head_dim)` float16/bfloat16; rows past
       len(slot_mapping) (CUDA-graph padding) are ignored.
    k_cache, v_cache: `(num_pages, page_size, num_kv_heads, head_dim)` strided views of the
       paged cache (e.g. fi_backend.metadata.block_sparse.split_kv_cache), same dtype as key.
    slot_mapping: int64 `[num_slots]`, slot = page * page_size + offset; -1 marks a padded
       token and is skipped, as is any slot outside the cache (never written out of bounds).
    Every tensor: last dimension contiguous, pointers and strides multiples of 16 bytes.
    """
    for name, tensor in (("key", key), ("value", value), ("k_cache", k_cache),
                         ("v_cache", v_cache), ("slot_mapping", slot_mapping)):
        check_is_tensor(name, tensor)
    check_shape("key", key, (None, None, None), ("num_tokens", "num_kv_heads", "head_dim"))
    num_tokens, num_kv_heads, head_dim = key.shape
    check_dtype("key", key, APPEND_KV_DTYPES)
    check_shape("value", value, key.shape, ("num_tokens", "num_kv_heads", "head_dim"))
    check_shape("k_cache", k_cache, (None, None, num_kv_heads, head_dim),
                ("num_pages", "page_size", "num_kv_heads", "head_dim"))
    num_pages, page_size = k_cache.shape[:2]
    check_shape("v_cache", v_cache, k_cache.shape,
                ("num_pages", "page_size", "num_kv_heads", "head_dim"))
    for name, tensor in (("value", value), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_dtype(name, tensor, (key.dtype,))
    for name, tensor in (("key", key), ("value", value), ("k_cache", k_cache),
                         ("v_cache", v_cache)):
        check_last_dim_contiguous(name, tensor)
        check_vector_aligned(name, tensor)
    check_dtype("slot_mapping", slot_mapping, (torch.int64,))
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] > num_tokens:
        raise ValueError(f"slot_mapping has shape {tuple(slot_mapping.shape)}; expected "
                         f"(num_slots,) with num_slots <= num_tokens = {num_tokens}")
    if slot_mapping.shape[0] > 1 and slot_mapping.stride(0) != 1:
        raise ValueError(f"slot_mapping has stride {slot_mapping.stride(0)}; only contiguous "
                         "(stride 1) is supported")
    check_cuda("key", key)
    for name, tensor in (("value", value), ("k_cache", k_cache), ("v_cache", v_cache),
                         ("slot_mapping", slot_mapping)):
        check_cuda(name, tensor, key.device)

    with torch.cuda.device(key.device):
        _C.append_kv(
            dtype=_DTYPE_NAMES[key.dtype],
            key=key.data_ptr(), key_strides=_element_strides(key)[:2],
            value=value.data_ptr(), value_strides=_element_strides(value)[:2],
            k_cache=k_cache.data_ptr(), k_cache_strides=_element_strides(k_cache)[:3],
            v_cache=v_cache.data_ptr(), v_cache_strides=_element_strides(v_cache)[:3],
            slot_mapping=slot_mapping.data_ptr(), num_tokens=slot_mapping.shape[0],
            num_kv_heads=num_kv_heads, head_dim=head_dim, num_pages=num_pages,
            page_size=page_size, stream=current_raw_stream(key.device),
        )
