"""BatchAttention: paged attention over a ragged batch, planned once per step, run per layer.

    attention = BatchAttention(planner)                 # once per engine: fixed buffers
    plan = attention.plan(qo_indptr_host, kv_len_host, variant)   # once per step (host)
    o = attention.run(q, k_cache, v_cache, kv, seq_lens, qo_indptr, variant)  # per layer

run() launches the persistent attention kernel with the plan's fixed grid, then the merge of
split KV chunks, also with a fixed grid; every buffer it touches (plan, partial states) is
allocated once, so a CUDA graph captured around run() replays correctly for any later plan of
the same planner. Exact lengths are read on the device (`seq_lens`, `qo_indptr`); the plan
may have been made from upper bounds. Kernels: kernels/attention/batch_attention.cuh.

Two kernel families execute the same plan: "sm80" (portable, mma.sync, any sm80+ device) and
"sm90" (Hopper, wgmma + warp specialization, kernels/attention/hopper/; only compute
capability 9.0 and the (dtype, head_dim) pairs it was built for). `family` (or the
FI_BACKEND_KERNEL_FAMILY environment variable) picks one: "auto" (default), "sm80", "sm90".
The portable kernels come in two shared-memory footprints, picked per device: full (deeper
pipelines) where the device grants it per block, compact (at most 99 KB: sm_86 and sm_89 for
head_dim 128 and 256, sm_80 for head_dim 256) elsewhere; FI_BACKEND_MAX_SMEM_PER_BLOCK (bytes)
lowers the limit that choice sees.
"""

from __future__ import annotations

import os

import torch

from fi_backend import _C
from fi_backend._checks import (
    check_cuda,
    check_dtype,
    check_is_tensor,
    check_last_dim_contiguous,
    check_shape,
    check_vector_aligned,
)
from fi_backend._streams import current_raw_stream
from fi_backend.metadata.block_sparse import BlockSparseKV
from fi_backend.metadata.plan_layout import DECODE_TILE_ROWS, MAX_TILE_ROWS
from fi_backend.metadata.planner import Plan, Planner
from fi_backend.variants import AttentionVariant

__all__ = ["BatchAttention", "KERNEL_FAMILIES", "SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS",
           "compact_smem_needed", "ctas_per_sm", "resolve_kernel_family", "select_kernel"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (64, 128, 256)

KERNEL_FAMILIES = ("auto", "sm80", "sm90")
KERNEL_FAMILY_ENV = "FI_BACKEND_KERNEL_FAMILY"
MAX_SMEM_PER_BLOCK_ENV = "FI_BACKEND_MAX_SMEM_PER_BLOCK"
# Merge CTAs launched per attention CTA (see BatchAttention.__init__).
MERGE_CTAS_PER_ATTENTION_CTA = 4
SM90_CAPABILITY = (9, 0)
SM90_IN_AUTO = True
"""Whether "auto" picks the Hopper family where it can run: validated against the oracle by
tests/test_attention_sm90_gpu.py on an H100; on one H100, benchmarks/bench_kernels.py run for
each family two minutes apart (benchmarks/results/kernels_h100x2_2026-11-27c_*): 1.6-2.2x the
portable family on prefill and as fast or faster on all 17 decode cells (1.00-1.35x)."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_family(family: str) -> None:
    if family not in KERNEL_FAMILIES:
        raise ValueError(f"kernel family {family!r} is not supported; supported: "
                         f"{', '.join(KERNEL_FAMILIES)}")


def _sm90_built() -> bool:
    # An extension built before the Hopper family existed has no such attribute.
    return bool(getattr(_C, "BATCH_ATTENTION_SM90_BUILT", False))


def _sm90_supports(dtype: torch.dtype, head_dim: int) -> bool:
    return _sm90_built() and _C.batch_attention_sm90_supports(dtype=_dtype_name(dtype),
                                                              head_dim=head_dim)


def resolve_kernel_family(requested: str, *, capability: tuple[int, int], sm90_built: bool,
                          sm90_supports: bool) -> str:
    """The family ("sm80" or "sm90") that runs a call, given the request ("auto", "sm80",
    "sm90"), the device's compute capability, whether the extension has sm90a kernels and
    whether they cover the call's (dtype, head_dim).

    "sm90" where the device or the build cannot run it at all raises ValueError; "sm90" for a
    (dtype, head_dim) without Hopper kernels falls back to the portable family, like "auto"."""
    _check_family(requested)
    if requested == "sm80":
        return "sm80"
    if requested == "sm90":
        if tuple(capability) != SM90_CAPABILITY:
            raise ValueError(f"kernel family 'sm90' needs a compute capability 9.0 device; this "
                             f"one is {capability[0]}.{capability[1]}")
        if not sm90_built:
            raise ValueError("kernel family 'sm90' is not in this build of fi_backend._C; "
                             "rebuild with FI_CUDA_ARCHS containing 90a")
        return "sm90" if sm90_supports else "sm80"
    use_sm90 = (SM90_IN_AUTO and tuple(capability) == SM90_CAPABILITY and sm90_built
                and sm90_supports)
    return "sm90" if use_sm90 else "sm80"


def _requested_family(family: str | None) -> str:
    family = family if family is not None else os.environ.get(KERNEL_FAMILY_ENV, "auto")
    _check_family(family)
    return family


def _device_family(requested: str, dtype: torch.dtype, head_dim: int,
                   device: torch.device | str) -> str:
    return resolve_kernel_family(requested, capability=torch.cuda.get_device_capability(device),
                                 sm90_built=_sm90_built(),
                                 sm90_supports=_sm90_supports(dtype, head_dim))


def compact_smem_needed(full_bytes: int, compact_bytes: int, limit_bytes: int) -> bool:
    """Whether the portable kernels run in their compact shared-memory footprint: where the
    full one (deeper pipelines) needs more per block than the device grants. sm_86 and sm_89
    grant 99 KB, so head_dim 128 and 256 run compact there; sm_80 grants 163 KB (head_dim 256
    runs compact); sm_90 227 KB. Raises ValueError where neither fits."""
    if full_bytes <= limit_bytes:
        return False
    if compact_bytes <= limit_bytes:
        return True
    raise ValueError(f"the portable attention kernels need {compact_bytes} bytes of shared "
                     f"memory per block; this device grants {limit_bytes}")


def _smem_limit_override() -> int | None:
    value = os.environ.get(MAX_SMEM_PER_BLOCK_ENV)
    if not value:
        return None
    if not value.isdigit() or int(value) == 0:
        raise ValueError(f"{MAX_SMEM_PER_BLOCK_ENV}={value!r} is not supported; supported: a "
                         f"positive number of bytes")
    return int(value)


def _device_smem_limit(device: torch.device | str) -> int:
    """The shared memory per block the device grants, lowered to FI_BACKEND_MAX_SMEM_PER_BLOCK
    (bytes) where that is set: the portable kernels then run as on a GPU that grants that much
    (how the compact footprint is tested and timed on an H100)."""
    with torch.cuda.device(device):
        limit = _C.device_max_smem_per_block()
    override = _smem_limit_override()
    return limit if override is None else min(limit, override)


def _portable_compact(dtype: torch.dtype, head_dim: int, device: torch.device | str) -> bool:
    name = _dtype_name(dtype)
    return compact_smem_needed(
        _C.batch_attention_smem_bytes(dtype=name, head_dim=head_dim, compact_smem=False),
        _C.batch_attention_smem_bytes(dtype=name, head_dim=head_dim, compact_smem=True),
        _device_smem_limit(device))


def select_kernel(resolved: str, decode_plan: bool, kv_strides_shared: bool = True) -> str:
    """The kernel that runs one plan: "sm90" (Hopper family), "sm80" (portable, with prefill
    tiles) or "sm80_decode" (portable, built for decode tiles only).

    resolved: the family of the call (resolve_kernel_family); decode_plan: the plan has no
    tile over DECODE_TILE_ROWS rows and the decode-only kernel is allowed; kv_strides_shared:
    the K and V caches have the same page and token strides, which the Hopper producer needs
    (vLLM's caches always do; other K/V pairs run on the portable family)."""
    if resolved == "sm90" and kv_strides_shared:
        return "sm90"
    return "sm80_decode" if decode_plan else "sm80"


def ctas_per_sm(dtype: torch.dtype, head_dim: int, device: torch.device | str = "cuda",
                family: str | None = None) -> int:
    """Attention CTAs resident per SM on `device` (occupancy of the compiled kernel of the
    family BatchAttention(..., family) runs there): a planner's `num_ctas` is best
    `multiprocessor_count * ctas_per_sm(...)`."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {_dtype_name(dtype)} is not supported; supported: "
                         f"{', '.join(map(_dtype_name, SUPPORTED_DTYPES))}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} is not supported; supported: "
                         f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    requested = _requested_family(family)
    with torch.cuda.device(device):
        if _device_family(requested, dtype, head_dim, device) == "sm90":
            return _C.batch_attention_sm90_ctas_per_sm(dtype=_dtype_name(dtype),
                                                       head_dim=head_dim)
        return _C.batch_attention_ctas_per_sm(
            dtype=_dtype_name(dtype), head_dim=head_dim,
            compact_smem=_portable_compact(dtype, head_dim, device))


def _check_index_tensor(name: str, tensor, length: int) -> None:
    check_is_tensor(name, tensor)
    check_shape(name, tensor, (length,), ("batch_size + 1" if "indptr" in name else "batch_size",))
    check_dtype(name, tensor, (torch.int32,))
    if tensor.stride(0) != 1:
        raise ValueError(f"{name} has stride {tensor.stride(0)}; only contiguous (1) is supported")


def _check_per_head(name: str, value, num_qo_heads: int) -> None:
    check_is_tensor(f"variant.{name}", value)
    check_shape(f"variant.{name}", value, (num_qo_heads,), ("num_qo_heads",))
    check_dtype(f"variant.{name}", value, (torch.float32,))
    if value.stride(0) != 1:
        raise ValueError(f"variant.{name} has stride {value.stride(0)}; only contiguous (1) is "
                         "supported")


def _layout_signature(*tensors) -> tuple | None:
    """What run()'s checks of per-layer tensors depend on: type, shape, strides, dtype,
    device and 16-byte alignment of each (None stays None); None if any is not a tensor."""
    signature = []
    for t in tensors:
        if t is None:
            signature.append(None)
        elif isinstance(t, torch.Tensor):
            signature.append((t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16))
        else:
            return None
    return tuple(signature)


class BatchAttention:
    """Attention of a ragged batch of queries over a paged KV cache, driven by a Plan.

    `planner` fixes heads, head_dim, page size and the plan capacities for the life of the
    engine; the float32 partial-state workspace for split KV chunks is allocated here, once:
    `(max_partial_slots, MAX_TILE_ROWS, head_dim)` outputs and `(max_partial_slots,
    MAX_TILE_ROWS)` natural-log LSEs.

    `family`: "auto", "sm80" or "sm90" (see resolve_kernel_family); None reads
    FI_BACKEND_KERNEL_FAMILY, default "auto".

    `decode_kernel`: the portable family runs plans whose items all have at most
    DECODE_TILE_ROWS rows (decode batches) on a kernel compiled for decode tiles alone, which
    is faster there. That kernel runs any plan correctly, but prefill tiles only 16 rows at a
    time; turn it off when a CUDA graph captured on a decode batch may be replayed on a batch
    with prefills (vLLM's FULL graph mode for mixed batches)."""

    def __init__(self, planner: Planner, family: str | None = None,
                 decode_kernel: bool = True) -> None:
        if planner.head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"head_dim {planner.head_dim} is not supported; supported: "
                             f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
        self.family = _requested_family(family)
        self.decode_kernel = decode_kernel
        self._family_by_dtype: dict[torch.dtype, str] = {}
        self._compact_by_dtype: dict[torch.dtype, bool] = {}
        if _C.BATCH_ATTENTION_MAX_TILE_ROWS != MAX_TILE_ROWS:
            raise RuntimeError(
                f"fi_backend._C was built with {_C.BATCH_ATTENTION_MAX_TILE_ROWS} tile rows but "
                f"plan_layout.MAX_TILE_ROWS is {MAX_TILE_ROWS}; rebuild the extension")
        self.planner = planner
        device = torch.device(planner.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.partial_o = torch.empty(planner.partial_o_shape, dtype=torch.float32,
                                     device=self.device)
        self.partial_lse = torch.empty(planner.partial_lse_shape, dtype=torch.float32,
                                       device=self.device)
        # The merge grid is fixed too: the kernel reads the number of merge items from the
        # plan header and strides over (row, merge item). A split decode row is one unit of
        # one CTA, so the grid is a few times the attention grid (merge CTAs are small) to
        # run a decode batch's rows at once rather than in rounds.
        self.num_merge_ctas = min(MERGE_CTAS_PER_ATTENTION_CTA * planner.capacity.num_ctas,
                                  planner.capacity.max_merge_items * MAX_TILE_ROWS)
        self._plan: Plan | None = None
        self._plan_variant: AttentionVariant | None = None
        # The step inputs (kv, seq_lens, qo_indptr) last checked by run(): every layer of an
        # engine step passes the same objects, so eager steps check them once, not per layer.
        self._checked_step_inputs: tuple = ()
        # Likewise the layout of the per-layer inputs last checked, and the variant.
        self._checked_layer_signature: tuple | None = None
        self._checked_variant: AttentionVariant | None = None

    def kernel_family(self, dtype: torch.dtype) -> str:
        """The family ("sm80" or "sm90") that runs q of `dtype` on this device."""
        if dtype not in self._family_by_dtype:
            self._family_by_dtype[dtype] = _device_family(self.family, dtype,
                                                          self.planner.head_dim, self.device)
        return self._family_by_dtype[dtype]

    def portable_compact_smem(self, dtype: torch.dtype) -> bool:
        """Whether the portable kernels run q of `dtype` in their compact shared-memory
        footprint on this device (compact_smem_needed)."""
        if dtype not in self._compact_by_dtype:
            self._compact_by_dtype[dtype] = _portable_compact(dtype, self.planner.head_dim,
                                                              self.device)
        return self._compact_by_dtype[dtype]

    def plan(self, qo_indptr_host, kv_len_host, variant: AttentionVariant) -> Plan:
        """Plans one step (host arrays: qo_indptr int32 [B+1] exact, kv_len int32 [B] upper
        bounds); later run() calls of this step execute it."""
        self._plan = self.planner.plan(qo_indptr_host, kv_len_host, variant)
        self._plan_variant = variant
        return self._plan

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            kv: BlockSparseKV, seq_lens: torch.Tensor, qo_indptr: torch.Tensor,
            variant: AttentionVariant, *, out: torch.Tensor | None = None,
            return_lse: bool = False, lse_out: torch.Tensor | None = None,
            plan: Plan | None = None
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """o `(num_tokens, num_qo_heads, head_dim)` in q.dtype (and the natural-log LSE
        float32 `(num_tokens, num_qo_heads)` with return_lse).

        q: `(num_tokens, num_qo_heads, head_dim)` float16/bfloat16; tokens past
           qo_indptr[-1] (CUDA-graph padding) are neither read nor written.
        k_cache, v_cache: `(num_pages, page_size, num_kv_heads, head_dim)` views in q.dtype,
           contiguous last dim, any other strides (multiples of 16 bytes), e.g. from
           `fi_backend.metadata.block_sparse.split_kv_cache`.
        kv: the batch's page table (kv.indptr, kv.indices; kv.page_size must match).
        seq_lens: int32 [B] exact KV lengths; qo_indptr: int32 [B+1] exact query offsets.
        variant: causal and window_left must be those the plan was made with.
        lse_out: optional float32 `(num_tokens, num_qo_heads)` view (any strides) that receives
           the LSE; implies return_lse.
        plan: the plan to execute; default the one from the last plan() call.
        """
        plan = plan if plan is not None else self._plan
        if plan is None:
            raise ValueError("run() needs a plan: call plan() first or pass plan=")
        if plan.layout != self.planner.layout:
            raise ValueError("plan was made by a different planner (its layout differs from "
                             "this BatchAttention's)")
        planned = self._plan_variant if plan is self._plan else None
        if planned is not None and (planned.causal, planned.window_left) != (
                variant.causal, variant.window_left):
            raise ValueError(
                f"variant (causal={variant.causal}, window_left={variant.window_left}) differs "
                f"from the one planned (causal={planned.causal}, "
                f"window_left={planned.window_left}); plan again for this variant")
        planner = self.planner
        num_qo_heads, num_kv_heads, head_dim = (planner.num_qo_heads, planner.num_kv_heads,
                                                planner.head_dim)
        # Every layer of an engine step passes the same step inputs (page table, lengths) and
        # layer inputs laid out alike (same shapes, strides, dtypes, alignment), so an eager
        # step (piecewise graphs, cascade) checks each kind once, not once per layer.
        step_inputs = (kv, seq_lens, qo_indptr)
        step_inputs_checked = len(self._checked_step_inputs) == 3 and all(
            a is b for a, b in zip(step_inputs, self._checked_step_inputs))
        layer_signature = _layout_signature(q, k_cache, v_cache, out, lse_out)
        layer_inputs_checked = (layer_signature is not None
                                and layer_signature == self._checked_layer_signature
                                and variant is self._checked_variant)
        if not layer_inputs_checked:
            self._check_layer_inputs(q, k_cache, v_cache, out, lse_out, variant)
        if not step_inputs_checked:
            self._check_step_inputs(kv, seq_lens, qo_indptr)
        # Devices last, so that the checks above also run (and are tested) on a CPU machine.
        on_device = []
        if not layer_inputs_checked:
            on_device += [("q", q), ("k_cache", k_cache), ("v_cache", v_cache),
                          ("variant.alibi_slopes", variant.alibi_slopes),
                          ("variant.sinks", variant.sinks), ("out", out), ("lse_out", lse_out)]
        if not step_inputs_checked:
            on_device += [("seq_lens", seq_lens), ("qo_indptr", qo_indptr),
                          ("kv.indptr", kv.indptr), ("kv.indices", kv.indices)]
        for name, tensor in on_device:
            if tensor is not None:
                check_cuda(name, tensor, self.device)
        self._checked_step_inputs = step_inputs
        self._checked_layer_signature = layer_signature
        self._checked_variant = variant
        o = out if out is not None else torch.empty_like(q)
        lse = lse_out
        if lse is None and return_lse:
            lse = torch.empty(q.shape[:2], dtype=torch.float32, device=self.device)

        decode_plan = self.decode_kernel and plan.max_item_rows <= DECODE_TILE_ROWS
        family = self.kernel_family(q.dtype)
        kv_strides_shared = k_cache.stride()[:2] == v_cache.stride()[:2]
        if not kv_strides_shared and family == "sm90" and self.family == "sm90":
            raise ValueError(f"kernel family 'sm90' needs k_cache and v_cache with the same page "
                             f"and token strides; got {tuple(k_cache.stride()[:2])} and "
                             f"{tuple(v_cache.stride()[:2])} (family 'auto' runs such caches "
                             f"on the portable kernels)")
        kernel = select_kernel(family, decode_plan, kv_strides_shared)
        launch = _C.batch_attention_sm90 if kernel == "sm90" else _C.batch_attention
        with torch.cuda.device(self.device):
            launch(
                dtype=_dtype_name(q.dtype), head_dim=head_dim,
                q=q.data_ptr(), q_strides=q.stride()[:2],
                o=o.data_ptr(), o_strides=o.stride()[:2],
                lse=lse.data_ptr() if lse is not None else 0,
                lse_strides=lse.stride() if lse is not None else (0, 0),
                k=k_cache.data_ptr(), k_strides=(k_cache.stride(0), k_cache.stride(1),
                                                 k_cache.stride(2)),
                v=v_cache.data_ptr(), v_strides=(v_cache.stride(0), v_cache.stride(1),
                                                 v_cache.stride(2)),
                kv_indptr=kv.indptr.data_ptr(), kv_indices=kv.indices.data_ptr(),
                page_size=kv.page_size, qo_indptr=qo_indptr.data_ptr(),
                seq_lens=seq_lens.data_ptr(), num_qo_heads=num_qo_heads,
                num_kv_heads=num_kv_heads, partial_o=self.partial_o.data_ptr(),
                partial_lse=self.partial_lse.data_ptr(), plan=plan.buffer.data_ptr(),
                plan_offsets=plan.layout.offsets, num_ctas=plan.layout.capacity.num_ctas,
                num_merge_ctas=self.num_merge_ctas, causal=bool(variant.causal),
                window_left=int(variant.window_left),
                logits_soft_cap=float(variant.logits_soft_cap),
                sm_scale=float(variant.scale_for(head_dim)),
                alibi_slopes=(variant.alibi_slopes.data_ptr()
                              if variant.alibi_slopes is not None else 0),
                sinks=variant.sinks.data_ptr() if variant.sinks is not None else 0,
                stream=current_raw_stream(self.device),
                prefill_tiles=kernel != "sm80_decode",
                compact_smem=kernel != "sm90" and self.portable_compact_smem(q.dtype),
            )
        return (o, lse) if lse is not None else o

    def _check_layer_inputs(self, q, k_cache, v_cache, out, lse_out,
                            variant: AttentionVariant) -> None:
        """The checks of run()'s per-layer inputs, but their devices, which run() checks last."""
        planner = self.planner
        num_qo_heads, num_kv_heads, head_dim = (planner.num_qo_heads, planner.num_kv_heads,
                                                planner.head_dim)
        check_is_tensor("q", q)
        check_shape("q", q, (None, num_qo_heads, head_dim),
                    ("num_tokens", "num_qo_heads", "head_dim"))
        check_dtype("q", q, SUPPORTED_DTYPES)
        check_last_dim_contiguous("q", q)
        check_vector_aligned("q", q)
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            check_is_tensor(name, cache)
            check_shape(name, cache, (None, planner.page_size, num_kv_heads, head_dim),
                        ("num_pages", "page_size", "num_kv_heads", "head_dim"))
            check_dtype(name, cache, (q.dtype,))
            check_last_dim_contiguous(name, cache)
            check_vector_aligned(name, cache)
        for name in ("alibi_slopes", "sinks"):
            value = getattr(variant, name)
            if value is not None:
                _check_per_head(name, value, num_qo_heads)
        if out is not None:
            check_is_tensor("out", out)
            check_shape("out", out, tuple(q.shape), ("num_tokens", "num_qo_heads", "head_dim"))
            check_dtype("out", out, (q.dtype,))
            check_last_dim_contiguous("out", out)
            if out.data_ptr() % 4 != 0 or any(s % 2 for s in out.stride()[:2]):
                raise ValueError(f"out needs a 4-byte aligned pointer and even strides; got "
                                 f"strides {out.stride()}")
        if lse_out is not None:
            check_is_tensor("lse_out", lse_out)
            check_shape("lse_out", lse_out, tuple(q.shape[:2]), ("num_tokens", "num_qo_heads"))
            check_dtype("lse_out", lse_out, (torch.float32,))

    def _check_step_inputs(self, kv: BlockSparseKV, seq_lens: torch.Tensor,
                           qo_indptr: torch.Tensor) -> None:
        """The checks of run()'s per-step inputs (the page table and the exact lengths), but
        their devices, which run() checks last."""
        if kv.page_size != self.planner.page_size:
            raise ValueError(f"kv.page_size {kv.page_size} differs from the planner's page_size "
                             f"{self.planner.page_size}")
        batch_size = seq_lens.shape[0] if isinstance(seq_lens, torch.Tensor) else -1
        _check_index_tensor("seq_lens", seq_lens, batch_size)
        _check_index_tensor("qo_indptr", qo_indptr, batch_size + 1)
        _check_index_tensor("kv.indptr", kv.indptr, batch_size + 1)
        check_is_tensor("kv.indices", kv.indices)
        check_dtype("kv.indices", kv.indices, (torch.int32,))
        if kv.indices.dim() != 1 or kv.indices.stride(0) != 1:
            raise ValueError(f"kv.indices must be a contiguous 1-d tensor; got shape "
                             f"{tuple(kv.indices.shape)}, strides {kv.indices.stride()}")


