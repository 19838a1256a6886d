// Host launcher of kernels/cache/append_kv.cuh.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "append_kv.h"
#include "cache/append_kv.cuh"
#include "common/cuda_check.cuh"

namespace fi_backend {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr std::int64_t kWordBytes = 16;

std::int64_t strided_bytes(std::int64_t elements, int element_size, const char* what) {
  const std::int64_t bytes = elements * element_size;
  if (bytes % kWordBytes != 0) {
    throw std::invalid_argument(std::string(what) + " stride " + std::to_string(elements) +
                                " elements is not a multiple of 16 bytes");
  }
  return bytes;
}

}  // namespace

void append_kv(const AppendKvParams& p) {
  const int element_size = dtype_size_bytes(p.dtype);
  if (p.head_dim <= 0 || p.head_dim * element_size % kWordBytes != 0) {
    throw std::invalid_argument("head_dim " + std::to_string(p.head_dim) +
                                " is not supported; supported: a positive multiple of " +
                                std::to_string(kWordBytes / element_size));
  }
  if (p.num_tokens < 0 || p.num_kv_heads <= 0 || p.num_pages < 0 || p.page_size <= 0) {
    throw std::invalid_argument("append_kv: num_tokens and num_pages must be >= 0, "
                                "num_kv_heads and page_size > 0");
  }
  for (std::uintptr_t pointer : {p.key, p.value, p.k_cache, p.v_cache}) {
    if (!is_aligned(pointer, kWordBytes)) {
      throw std::invalid_argument("append_kv: tensor data pointers must be 16-byte aligned");
    }
  }
  if (p.num_tokens == 0 || p.num_pages == 0) return;

  fi_kernels::AppendKvKernelParams kp{};
  kp.key = reinterpret_cast<const char*>(p.key);
  kp.value = reinterpret_cast<const char*>(p.value);
  kp.k_cache = reinterpret_cast<char*>(p.k_cache);
  kp.v_cache = reinterpret_cast<char*>(p.v_cache);
  kp.slot_mapping = reinterpret_cast<const std::int64_t*>(p.slot_mapping);
  kp.key_stride_token = strided_bytes(p.key_strides[0], element_size, "key token");
  kp.key_stride_head = strided_bytes(p.key_strides[1], element_size, "key head");
  kp.value_stride_token = strided_bytes(p.value_strides[0], element_size, "value token");
  kp.value_stride_head = strided_bytes(p.value_strides[1], element_size, "value head");
  kp.k_stride_page = strided_bytes(p.k_cache_strides[0], element_size, "k_cache page");
  kp.k_stride_slot = strided_bytes(p.k_cache_strides[1], element_size, "k_cache slot");
  kp.k_stride_head = strided_bytes(p.k_cache_strides[2], element_size, "k_cache head");
  kp.v_stride_page = strided_bytes(p.v_cache_strides[0], element_size, "v_cache page");
  kp.v_stride_slot = strided_bytes(p.v_cache_strides[1], element_size, "v_cache slot");
  kp.v_stride_head = strided_bytes(p.v_cache_strides[2], element_size, "v_cache head");
  kp.num_tokens = p.num_tokens;
  kp.num_kv_heads = p.num_kv_heads;
  kp.words_per_head = p.head_dim * element_size / kWordBytes;
  kp.page_size = p.page_size;
  kp.num_slots = p.num_pages * p.page_size;

  // The grid depends only on the tensor shapes, which a captured CUDA graph fixes anyway.
  const std::int64_t num_words = p.num_tokens * p.num_kv_heads * kp.words_per_head;
  const std::int64_t blocks = std::min<std::int64_t>(
      (num_words + kThreadsPerBlock - 1) / kThreadsPerBlock, 65535);
  fi_kernels::append_kv_kernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0,
                                 reinterpret_cast<cudaStream_t>(p.stream)>>>(kp);
  FI_CHECK_LAUNCH("append_kv_kernel");
}

}  // namespace fi_backend
