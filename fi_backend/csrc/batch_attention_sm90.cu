// Ahead-of-time instantiations of the Hopper batch-attention kernel (dtype x head_dim) and
// its launcher. Compiled for sm_90a only (wgmma and setmaxnreg exist nowhere else).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>

#include "attention/batch_attention.cuh"
#include "attention/hopper/batch_attention_sm90.cuh"
#include "batch_attention_sm90.h"
#include "common/cuda_check.cuh"
#include "dispatch.cuh"
#include "programmatic_launch.cuh"

namespace fi_backend {
namespace {

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument("batch_attention_sm90: " + message);
}

// The producer keeps page and token strides of K and V as 32-bit byte counts.
bool fits_int32_bytes(std::int64_t stride_elements) {
  constexpr std::int64_t kElementBytes = 2;  // float16 / bfloat16
  const std::int64_t bytes = stride_elements * kElementBytes;
  return bytes >= INT32_MIN && bytes <= INT32_MAX;
}

std::string supported_head_dims() {
  std::string names;
  for (const int head_dim : kBatchAttentionSm90HeadDims) {
    names += (names.empty() ? "" : ", ") + std::to_string(head_dim);
  }
  return names;
}

template <typename T, int HEAD_DIM>
auto* configured_kernel() {
  constexpr int kSmemBytes = fi_kernels::hopper::Sm90Config<T, HEAD_DIM>::kSmemBytes;
  auto* kernel = fi_kernels::hopper::batch_attention_sm90_kernel<T, HEAD_DIM>;
  // The dynamic shared-memory limit is per device; setting it each time keeps multi-device
  // processes right and costs little.
  FI_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  return kernel;
}

template <typename T, int HEAD_DIM>
void launch_typed(const BatchAttentionLaunch& l) {
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(l.stream);
  constexpr int kSmemBytes = fi_kernels::hopper::Sm90Config<T, HEAD_DIM>::kSmemBytes;
  // Both kernels are programmatic dependents of the kernel ahead of them in the stream
  // (common/grid_dependency.cuh): the attention kernel of append_kv (its metadata and
  // page-table loads overlap the cache write; the producer waits before reading K/V), the
  // merge of the attention kernel (scheduled while its last CTAs run). Each waits for its
  // predecessor before reading what that wrote, so the launches leave the critical path. A
  // predecessor that never allows it is simply awaited in full. CUDA graph capture keeps the
  // dependencies as programmatic edges.
  FI_CUDA_CHECK(launch_programmatic_dependent(configured_kernel<T, HEAD_DIM>(), l.num_ctas,
                                              fi_kernels::hopper::kSm90Threads, kSmemBytes,
                                              stream, l.params));
  if (l.num_merge_ctas > 0) {
    FI_CUDA_CHECK(launch_programmatic_dependent(
        fi_kernels::merge_partial_states_kernel<T, HEAD_DIM>, l.num_merge_ctas,
        fi_kernels::kMergeThreads, 0, stream, l.params));
  }
}

template <typename T, int HEAD_DIM>
int resident_ctas_typed() {
  constexpr int kSmemBytes = fi_kernels::hopper::Sm90Config<T, HEAD_DIM>::kSmemBytes;
  int ctas = 0;
  FI_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &ctas, configured_kernel<T, HEAD_DIM>(), fi_kernels::hopper::kSm90Threads, kSmemBytes));
  return ctas;
}

void require_supported(DType dtype, int head_dim) {
  require(batch_attention_sm90_supports(dtype, head_dim),
          "dtype/head_dim " + std::to_string(head_dim) +
              " is not supported; supported: float16, bfloat16 with head_dim " +
              supported_head_dims());
}

}  // namespace

bool batch_attention_sm90_supports(DType dtype, int head_dim) {
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16) return false;
  for (const int supported : kBatchAttentionSm90HeadDims) {
    if (head_dim == supported) return true;
  }
  return false;
}

void batch_attention_sm90(const BatchAttentionLaunch& launch) {
  const fi_kernels::BatchAttentionParams& p = launch.params;
  // The Python wrapper checks shapes, strides and alignment (the same contract as the
  // portable launcher's); what the kernel itself relies on is checked again here.
  require(p.num_kv_heads > 0 && p.num_qo_heads % p.num_kv_heads == 0 &&
              p.num_qo_heads / p.num_kv_heads <= fi_kernels::kMaxTileRows,
          "num_qo_heads " + std::to_string(p.num_qo_heads) +
              " must be a multiple of num_kv_heads " + std::to_string(p.num_kv_heads) +
              " with a group of at most " + std::to_string(fi_kernels::kMaxTileRows));
  require(p.page_size >= 1, "page_size must be >= 1");
  require(fits_int32_bytes(p.k_stride_page) && fits_int32_bytes(p.k_stride_token) &&
              fits_int32_bytes(p.v_stride_page) && fits_int32_bytes(p.v_stride_token),
          "k and v page and token strides must be below 2^31 bytes; got k " +
              std::to_string(p.k_stride_page) + ", " + std::to_string(p.k_stride_token) +
              " and v " + std::to_string(p.v_stride_page) + ", " +
              std::to_string(p.v_stride_token) + " elements");
  require(p.k_stride_page == p.v_stride_page && p.k_stride_token == p.v_stride_token,
          "k and v must share page and token strides (the producer computes one offset for "
          "both); got k " + std::to_string(p.k_stride_page) + ", " +
              std::to_string(p.k_stride_token) + " and v " + std::to_string(p.v_stride_page) +
              ", " + std::to_string(p.v_stride_token) + " elements");
  require(launch.num_ctas >= 1 && launch.num_merge_ctas >= 0, "num_ctas must be >= 1");
  require_supported(launch.dtype, launch.head_dim);
  dispatch_dtype_head_dim(launch.dtype, launch.head_dim, "batch_attention_sm90",
                          [&](auto element, auto head_dim) {
                            launch_typed<typename decltype(element)::type,
                                         decltype(head_dim)::value>(launch);
                          });
}

int batch_attention_sm90_ctas_per_sm(DType dtype, int head_dim) {
  require_supported(dtype, head_dim);
  return dispatch_dtype_head_dim(dtype, head_dim, "batch_attention_sm90",
                                 [](auto element, auto head_dim_tag) {
                                   return resident_ctas_typed<typename decltype(element)::type,
                                                              decltype(head_dim_tag)::value>();
                                 });
}

}  // namespace fi_backend
