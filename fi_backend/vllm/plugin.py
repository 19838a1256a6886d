"""Entry point of the `vllm.general_plugins` group: `fi_backend.vllm.plugin:register`.

vLLM calls `register()` once in every process it starts (front end, engine core, each
worker), and may call it again in a process that already ran it, so it is idempotent.
It only records class paths and installs the VLLM_ATTENTION_BACKEND hook; nothing CUDA is
touched and the backend module is imported lazily, when vLLM resolves the class.
"""

from __future__ import annotations

from fi_backend.vllm.version_gate import (
    BACKEND_NAME,
    CUSTOM_SLOT,
    HAS_NAMED_REGISTRATION,
)

BACKEND_CLASS_PATH = "fi_backend.vllm.backend.FIBackend"


def _register_custom_slot() -> bool:
    """Claim vLLM's CUSTOM slot unless another plugin holds it. True if it is ours now."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from fi_backend.vllm.selection import logger

    custom = AttentionBackendEnum[CUSTOM_SLOT]
    if custom.is_overridden() and custom.get_path() != BACKEND_CLASS_PATH:
        logger.warning(
            "fi_backend: the %s attention backend slot already holds %s; fi_backend is not "
            "registered there", CUSTOM_SLOT, custom.get_path())
        return False
    register_backend(custom, BACKEND_CLASS_PATH)
    return True


def _register_named() -> None:
    """Newer vLLM: our own enum member FI_BACKEND (`--attention-backend FI_BACKEND`)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if BACKEND_NAME not in AttentionBackendEnum.__members__:
        register_backend(BACKEND_NAME, BACKEND_CLASS_PATH)
    elif AttentionBackendEnum[BACKEND_NAME].get_path() != BACKEND_CLASS_PATH:
        register_backend(AttentionBackendEnum[BACKEND_NAME], BACKEND_CLASS_PATH)


def register() -> None:
    """Register fi_backend with vLLM and honour VLLM_ATTENTION_BACKEND. Safe to call twice."""
    from fi_backend.vllm.selection import install_env_selection

    if HAS_NAMED_REGISTRATION:
        _register_named()
    # The CUSTOM slot too on every version, so `--attention-backend CUSTOM` always works.
    holds_custom_slot = _register_custom_slot()
    # On vLLM 0.26 the variable resolves to CUSTOM: never let it pick another plugin's class.
    if HAS_NAMED_REGISTRATION or holds_custom_slot:
        install_env_selection()
