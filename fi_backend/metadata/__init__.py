"""Block-sparse KV metadata and the load-balanced planner (no vLLM imports here)."""
