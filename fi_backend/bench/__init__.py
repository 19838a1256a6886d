"""fi-bench: kernel and end-to-end vLLM benchmarks of fi_backend against FlashAttention-3,
FlashInfer and vLLM's Triton backend (entry point: `fi-bench`, see cli.py)."""
