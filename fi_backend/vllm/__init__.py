"""fi_backend as a vLLM attention backend: the only package of fi_backend that imports vllm.

plugin.py     entry point of the `vllm.general_plugins` group (`register()`)
selection.py  VLLM_ATTENTION_BACKEND, which vLLM 0.26 no longer reads
backend.py    FIBackend: capabilities (supports_* hooks), KV-cache shape
builder.py    FIMetadataBuilder: block table -> BSR, host plan, persistent buffers
impl.py       FIAttentionImpl: KV-cache update and attention forward per layer
version_gate.py  feature detection of the vLLM API in use

Importing this package does not import vllm; its modules do.
"""
