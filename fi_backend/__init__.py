"""fi_backend: a FlashInfer-class attention engine for LLM serving, as a vLLM backend."""

__version__ = "0.1.0"
