"""Tensor checks run before any kernel launch.

Each check raises ValueError that names the argument, the value it got and what is
allowed, so that a caller never reaches C++ (or writes an output) with a bad tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

VECTOR_ALIGNMENT_BYTES = 16


def check_is_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    return value


def check_dtype(name: str, tensor: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if tensor.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(
            f"{name} has dtype {str(tensor.dtype).removeprefix('torch.')}; supported: {names}")


def check_shape(name: str, tensor: torch.Tensor, expected: Sequence[int | None],
                dim_names: Sequence[str]) -> None:
    """`expected[i] is None` accepts any size along dimension i."""
    layout = "(" + ", ".join(dim_names) + ")"
    if tensor.dim() != len(expected):
        raise ValueError(f"{name} must have {len(expected)} dimensions {layout}; "
                         f"got shape {tuple(tensor.shape)}")
    for size, want, dim_name in zip(tensor.shape, expected, dim_names):
        if want is not None and size != want:
            wanted = tuple("*" if w is None else w for w in expected)
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {layout} = "
                             f"{wanted} ({dim_name} is {want}, not {size})")


def check_last_dim_contiguous(name: str, tensor: torch.Tensor) -> None:
    if tensor.shape[-1] > 1 and tensor.stride(-1) != 1:
        raise ValueError(f"{name} has stride {tensor.stride(-1)} along its last dimension; "
                         "only 1 (contiguous last dimension) is supported; other strides "
                         f"{tuple(tensor.stride())} may be anything")


def check_vector_aligned(name: str, tensor: torch.Tensor,
                         alignment_bytes: int = VECTOR_ALIGNMENT_BYTES) -> None:
    """Every row along the last dimension starts on an `alignment_bytes` boundary, as
    vectorized (16-byte) loads and stores need."""
    if tensor.data_ptr() % alignment_bytes != 0:
        raise ValueError(f"{name}'s data pointer {tensor.data_ptr():#x} (storage offset "
                         f"{tensor.storage_offset()} elements) is not {alignment_bytes}-byte "
                         f"aligned; it must be a multiple of {alignment_bytes} bytes")
    element_size = tensor.element_size()
    for dim, (size, stride) in enumerate(zip(tensor.shape[:-1], tensor.stride()[:-1])):
        if size > 1 and stride * element_size % alignment_bytes != 0:
            raise ValueError(f"{name} has stride {stride} elements ({stride * element_size} "
                             f"bytes) along dimension {dim}; strides must be multiples of "
                             f"{alignment_bytes} bytes")


def check_cuda(name: str, tensor: torch.Tensor, device: torch.device | None = None) -> None:
    """On a CUDA device; with `device`, on that very device."""
    if tensor.device.type != "cuda":
        raise ValueError(f"{name} is on device {tensor.device}; only CUDA tensors are supported")
    if device is not None and tensor.device != device:
        raise ValueError(f"{name} is on device {tensor.device}; it must be on {device} "
                         "like the other inputs")
