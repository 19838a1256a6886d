"""Block-sparse KV metadata and the load-balanced planner (no vLLM imports here)."""

from fi_backend.metadata.block_sparse import (
    KV_CACHE_LAYOUTS,
    BlockSparseKV,
    BsrBuffers,
    block_table_to_bsr,
    split_kv_cache,
    split_shared_prefix,
)

__all__ = [
    "KV_CACHE_LAYOUTS",
    "BlockSparseKV",
    "BsrBuffers",
    "block_table_to_bsr",
    "split_kv_cache",
    "split_shared_prefix",
]
