// append_kv: scatter this step's new K/V rows into the paged cache (vLLM's slot mapping).
//
// The copy is type-agnostic: a (token, head) row of head_dim elements is moved as 16-byte
// words, so one instantiation serves fp16 and bf16 caches alike. One thread moves one word of
// K and the same word of V; consecutive threads take consecutive words of a row, so reads
// and writes are coalesced within each head row.
#pragma once

#include <cstdint>

#include "common/grid_dependency.cuh"

namespace fi_kernels {

struct AppendKvKernelParams {
  const char* key;    // (num_tokens, num_kv_heads, head_dim)
  const char* value;  // (num_tokens, num_kv_heads, head_dim)
  char* k_cache;      // (num_pages, page_size, num_kv_heads, head_dim), strided view
  char* v_cache;      // (num_pages, page_size, num_kv_heads, head_dim), strided view
  const std::int64_t* slot_mapping;  // [num_tokens], slot = page * page_size + offset
  // Strides in bytes; all multiples of 16 (the launcher checks).
  std::int64_t key_stride_token, key_stride_head;
  std::int64_t value_stride_token, value_stride_head;
  std::int64_t k_stride_page, k_stride_slot, k_stride_head;
  std::int64_t v_stride_page, v_stride_slot, v_stride_head;
  std::int64_t num_tokens;
  std::int64_t num_kv_heads;
  std::int64_t words_per_head;  // head_dim * element size / 16
  std::int64_t page_size;
  std::int64_t num_slots;  // num_pages * page_size
};

__global__ void append_kv_kernel(const AppendKvKernelParams p) {
  // The attention kernel that follows (sm90, a programmatic dependent) may start its metadata
  // and page-table loads now; it waits for this kernel before it reads K or V.
  allow_dependent_launch();
  const std::int64_t num_words = p.num_tokens * p.num_kv_heads * p.words_per_head;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < num_words; i += stride) {
    const std::int64_t word = i % p.words_per_head;
    const std::int64_t head = (i / p.words_per_head) % p.num_kv_heads;
    const std::int64_t token = i / (p.words_per_head * p.num_kv_heads);
    const std::int64_t slot = __ldg(p.slot_mapping + token);
    // -1 marks a padded token; a slot past the cache is bad input and must not corrupt
    // anything, so it is skipped as well (the cache is never written out of bounds).
    if (slot < 0 || slot >= p.num_slots) continue;
    const std::int64_t page = slot / p.page_size;
    const std::int64_t in_page = slot % p.page_size;
    const std::int64_t word_bytes = word * 16;
    const uint4 k = *reinterpret_cast<const uint4*>(
        p.key + token * p.key_stride_token + head * p.key_stride_head + word_bytes);
    const uint4 v = *reinterpret_cast<const uint4*>(
        p.value + token * p.value_stride_token + head * p.value_stride_head + word_bytes);
    *reinterpret_cast<uint4*>(p.k_cache + page * p.k_stride_page + in_page * p.k_stride_slot +
                              head * p.k_stride_head + word_bytes) = k;
    *reinterpret_cast<uint4*>(p.v_cache + page * p.v_stride_page + in_page * p.v_stride_slot +
                              head * p.v_stride_head + word_bytes) = v;
  }
}

}  // namespace fi_kernels
