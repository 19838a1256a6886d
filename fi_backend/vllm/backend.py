"""FIBackend: what fi_backend can run, told to vLLM through its `supports_*` hooks.

vLLM's selector (platforms/cuda.py) calls `validate_configuration`, which asks each hook in
turn and, for a backend the user selected, raises with the list of reasons. We override the
hooks, not `validate_configuration` (its signature grows between vLLM versions), and return
our own explanations from `supports_combination`, so the selector's error says what was
wrong and what is allowed.

KV cache: vLLM's standard packed shape `(num_blocks, num_kv_heads, block_size, 2*head_dim)`
(K and V side by side per token and head), physically NHD by default or HND when
VLLM_KV_CACHE_LAYOUT says so. The kernels read K and V as two strided views of it
(`fi_backend.metadata.block_sparse.split_kv_cache`), so either order works without a copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from vllm.v1.attention.backend import AttentionBackend, AttentionType

from fi_backend.vllm.version_gate import REGISTERED_NAME

if TYPE_CHECKING:
    from vllm.platforms.interface import DeviceCapability

    from fi_backend.vllm.builder import FIMetadataBuilder
    from fi_backend.vllm.impl import FIAttentionImpl

SUPPORTED_HEAD_SIZES = (64, 128, 256)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_KV_CACHE_DTYPES = ("auto", "float16", "bfloat16")
SUPPORTED_KERNEL_BLOCK_SIZES = (1, 16, 32, 64)
"""Tokens per page the kernels accept; vLLM picks the manager's block size if it is one of
these, else the largest of these that divides it."""
MIN_COMPUTE_CAPABILITY = (8, 0)
MAX_COMPUTE_CAPABILITY_EXCLUSIVE = (10, 0)
"""The extension carries sm_80 (portable family, runs on 8.x) and sm_90a machine code and no
PTX, so Blackwell (10.x and later) cannot load it."""


def _names(values) -> str:
    return ", ".join(str(v).removeprefix("torch.") for v in values)


def unsupported_reasons(head_size: int | None = None, dtype: torch.dtype | None = None,
                        kv_cache_dtype: str | None = None, block_size: int | None = None,
                        device_capability: "DeviceCapability | None" = None) -> list[str]:
    """Why fi_backend cannot run this configuration (empty list: it can). None = not asked."""
    reasons = []
    if head_size is not None and head_size not in SUPPORTED_HEAD_SIZES:
        reasons.append(f"head_size {head_size} is not supported; supported: "
                       f"{_names(SUPPORTED_HEAD_SIZES)}")
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        reasons.append(f"dtype {_names([dtype])} is not supported; supported: "
                       f"{_names(SUPPORTED_DTYPES)}")
    if kv_cache_dtype is not None and kv_cache_dtype not in SUPPORTED_KV_CACHE_DTYPES:
        reasons.append(f"kv_cache_dtype {kv_cache_dtype} is not supported; supported: "
                       f"{_names(SUPPORTED_KV_CACHE_DTYPES)}")
    if block_size is not None and not any(block_size % s == 0
                                          for s in SUPPORTED_KERNEL_BLOCK_SIZES):
        reasons.append(f"block_size {block_size} is not supported; it must be a multiple of "
                       f"one of {_names(SUPPORTED_KERNEL_BLOCK_SIZES)}")
    if device_capability is not None:
        capability = (device_capability.major, device_capability.minor)
        if not MIN_COMPUTE_CAPABILITY <= capability < MAX_COMPUTE_CAPABILITY_EXCLUSIVE:
            reasons.append(
                f"compute capability {capability[0]}.{capability[1]} is not supported; "
                f"supported: {MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} up to "
                f"9.x (kernels are built for sm_80 and sm_90a)")
    return [f"fi_backend: {reason}" for reason in reasons]


class FIBackend(AttentionBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = list(SUPPORTED_DTYPES)
    supported_kv_cache_dtypes: ClassVar[list] = list(SUPPORTED_KV_CACHE_DTYPES)

    # vLLM calls do_kv_cache_update (its own custom op) before forward.
    forward_includes_kv_cache_update: bool = False

    @staticmethod
    def get_name() -> str:
        return REGISTERED_NAME

    @staticmethod
    def get_impl_cls() -> type["FIAttentionImpl"]:
        from fi_backend.vllm.impl import FIAttentionImpl

        return FIAttentionImpl

    @staticmethod
    def get_builder_cls() -> type["FIMetadataBuilder"]:
        from fi_backend.vllm.builder import FIMetadataBuilder

        return FIMetadataBuilder

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                           head_size: int, cache_dtype_str: str = "auto") -> tuple[int, ...]:
        reasons = unsupported_reasons(head_size=head_size, kv_cache_dtype=cache_dtype_str)
        if block_size not in SUPPORTED_KERNEL_BLOCK_SIZES:
            reasons.append(f"fi_backend: kernel block_size {block_size} is not supported; "
                           f"supported: {_names(SUPPORTED_KERNEL_BLOCK_SIZES)}")
        if reasons:
            raise ValueError("; ".join(reasons))
        return (num_blocks, num_kv_heads, block_size, 2 * head_size)

    @staticmethod
    def get_kv_cache_stride_order(include_num_layers_dimension: bool = False
                                  ) -> tuple[int, ...]:
        """Physical order of the logical (blocks, heads, tokens, 2*head_dim) dims; with a
        leading layers dim when asked, kept inside each block (cross-layer layout)."""
        from vllm.v1.attention.backends.utils import get_kv_cache_layout

        layout = get_kv_cache_layout()
        if layout == "NHD":
            return (1, 0, 3, 2, 4) if include_num_layers_dimension else (0, 2, 1, 3)
        if layout == "HND":
            return (1, 2, 0, 3, 4) if include_num_layers_dimension else (0, 1, 2, 3)
        raise ValueError(f"KV cache layout {layout!r} is not supported; supported: NHD, HND")

    @staticmethod
    def get_supported_kernel_block_sizes(*_args, **_kwargs) -> list:
        return list(SUPPORTED_KERNEL_BLOCK_SIZES)

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(SUPPORTED_HEAD_SIZES)

    @classmethod
    def supports_compute_capability(cls, capability: "DeviceCapability") -> bool:
        return not unsupported_reasons(device_capability=capability)

    @classmethod
    def supports_sink(cls) -> bool:
        return True

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_non_causal(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        # Encoder and cross attention need K/V that are not in the paged cache.
        return attn_type == AttentionType.DECODER

    @classmethod
    def supports_combination(cls, head_size: int, dtype: torch.dtype, kv_cache_dtype,
                             block_size: int | None, use_mla: bool, has_sink: bool,
                             use_sparse: bool, use_mm_prefix: bool,
                             device_capability: "DeviceCapability", **_kwargs) -> str | None:
        """Not a combination rule: our explanation of every failed single-feature check, which
        vLLM appends to its own terse reasons."""
        reasons = unsupported_reasons(head_size, dtype, kv_cache_dtype, block_size,
                                      device_capability)
        return "; ".join(reasons) if reasons else None
