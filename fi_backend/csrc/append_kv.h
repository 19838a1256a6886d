// Launcher of append_kv: writes new K/V rows into the paged cache at vLLM's slots.
// Plain C++ so that the host compiler can bind it.
#pragma once

#include <array>
#include <cstdint>

#include "launch_common.h"

namespace fi_backend {

// Shapes and strides in elements; the head_dim axis of every tensor is contiguous, every
// pointer and stride is a multiple of 16 bytes. key/value and both caches share one dtype.
struct AppendKvParams {
  DType dtype;
  std::uintptr_t key;                          // (num_tokens, num_kv_heads, head_dim)
  std::array<std::int64_t, 2> key_strides;     // token, head
  std::uintptr_t value;                        // (num_tokens, num_kv_heads, head_dim)
  std::array<std::int64_t, 2> value_strides;   // token, head
  std::uintptr_t k_cache;                      // (num_pages, page_size, num_kv_heads, head_dim)
  std::array<std::int64_t, 3> k_cache_strides; // page, slot in page, head
  std::uintptr_t v_cache;
  std::array<std::int64_t, 3> v_cache_strides;
  std::uintptr_t slot_mapping;                 // int64 [num_tokens]; -1 = padded, skipped
  std::int64_t num_tokens;
  std::int64_t num_kv_heads;
  std::int64_t head_dim;
  std::int64_t num_pages;
  std::int64_t page_size;
  std::uintptr_t stream;  // cudaStream_t
};

// Enqueues the copy on params.stream. Slots outside [0, num_pages * page_size) are skipped.
// Throws std::invalid_argument for parameters outside the contract above and
// fi_kernels::CudaError when CUDA fails.
void append_kv(const AppendKvParams& params);

}  // namespace fi_backend
