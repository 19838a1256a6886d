"""Which vLLM API we are talking to, decided by feature detection, never by version string.

vLLM 0.26 is the target. Its successors renamed or removed parts of the backend API
(../shared/research/vllm-backend-api.md, A4); each difference the plugin depends on is one
probe here, so the rest of `fi_backend.vllm` reads a flag instead of guessing.
"""

from __future__ import annotations

import dataclasses

from vllm.v1.attention.backend import AttentionBackend, CommonAttentionMetadata
from vllm.v1.attention.backends.registry import AttentionBackendEnum

BACKEND_NAME = "FI_BACKEND"
"""Our own name where vLLM lets a plugin add one; also the value of VLLM_ATTENTION_BACKEND."""

CUSTOM_SLOT = "CUSTOM"
"""vLLM 0.26's single enum member reserved for third-party backends."""


def _check_minimum_api() -> None:
    """The features fi_backend cannot work without; an older vLLM gets one clear error."""
    missing = []
    if not hasattr(AttentionBackendEnum, CUSTOM_SLOT):
        missing.append("AttentionBackendEnum.CUSTOM")
    if not hasattr(AttentionBackend, "forward_includes_kv_cache_update"):
        missing.append("AttentionBackend.forward_includes_kv_cache_update")
    cam_fields = {f.name for f in dataclasses.fields(CommonAttentionMetadata)}
    if "seq_lens_cpu_upper_bound" not in cam_fields:
        missing.append("CommonAttentionMetadata.seq_lens_cpu_upper_bound")
    if missing:
        import vllm

        raise ImportError(
            f"fi_backend needs vLLM >= 0.26; the installed vLLM {vllm.__version__} lacks "
            f"{', '.join(missing)}")


_check_minimum_api()

HAS_NAMED_REGISTRATION: bool = hasattr(AttentionBackendEnum, "register")
"""vLLM > 0.26 accepts new backend names (`register_backend("FI_BACKEND", path)`);
0.26 only has the CUSTOM slot, and `get_name()` must name an existing enum member."""

HAS_KV_CACHE_LAYOUTS: bool = hasattr(AttentionBackend, "supported_kv_cache_layouts")
"""vLLM > 0.26 describes the cache with `supported_kv_cache_layouts()` instead of
`get_kv_cache_shape` + `get_kv_cache_stride_order`."""

REGISTERED_NAME: str = BACKEND_NAME if HAS_NAMED_REGISTRATION else CUSTOM_SLOT
"""The enum member our backend answers to (`FIBackend.get_name()`)."""
