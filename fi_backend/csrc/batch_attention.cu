// Ahead-of-time instantiations of the batch-attention kernels (dtype x head_dim) and their
// launcher. Variants are run-time parameters, so this is the whole set.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "attention/batch_attention.cuh"
#include "batch_attention.h"
#include "common/cuda_check.cuh"
#include "dispatch.cuh"
#include "programmatic_launch.cuh"

namespace fi_backend {
namespace {

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument("batch_attention: " + message);
}

bool aligned_view(const void* ptr, std::initializer_list<std::int64_t> strides) {
  if (!is_aligned(reinterpret_cast<std::uintptr_t>(ptr), 16)) return false;
  for (const std::int64_t stride : strides) {
    if (stride % 8 != 0) return false;  // 8 half-precision elements = 16 bytes
  }
  return true;
}

void check_launch(const BatchAttentionLaunch& l) {
  const fi_kernels::BatchAttentionParams& p = l.params;
  require(l.dtype == DType::kFloat16 || l.dtype == DType::kBFloat16,
          "dtype is not supported; supported: float16, bfloat16");
  require(p.num_kv_heads > 0 && p.num_qo_heads % p.num_kv_heads == 0,
          "num_qo_heads " + std::to_string(p.num_qo_heads) + " must be a multiple of num_kv_heads " +
              std::to_string(p.num_kv_heads));
  require(p.num_qo_heads / p.num_kv_heads <= fi_kernels::kMaxTileRows,
          "GQA group " + std::to_string(p.num_qo_heads / p.num_kv_heads) +
              " is not supported; supported: up to " + std::to_string(fi_kernels::kMaxTileRows));
  require(p.page_size >= 1, "page_size must be >= 1");
  require(aligned_view(p.q, {p.q_stride_token, p.q_stride_head}) &&
              aligned_view(p.k, {p.k_stride_page, p.k_stride_token, p.k_stride_head}) &&
              aligned_view(p.v, {p.v_stride_page, p.v_stride_token, p.v_stride_head}),
          "q, k and v need 16-byte aligned pointers and strides that are multiples of 8 elements");
  // The paged loader builds row addresses from 32-bit byte strides (attention/paged_kv.cuh).
  constexpr std::int64_t kMaxRowStride = std::int64_t{1} << 30;
  for (const std::int64_t stride :
       {p.k_stride_page, p.k_stride_token, p.v_stride_page, p.v_stride_token}) {
    require(stride >= 0 && stride < kMaxRowStride,
            "k and v page and token strides must be in [0, 2^30) elements; got " +
                std::to_string(stride));
  }
  require(is_aligned(reinterpret_cast<std::uintptr_t>(p.o), 4) && p.o_stride_token % 2 == 0 &&
              p.o_stride_head % 2 == 0,
          "o needs a 4-byte aligned pointer and even strides");
  require(l.num_ctas >= 1 && l.num_merge_ctas >= 0, "num_ctas must be >= 1");
}

// Calls f(std::bool_constant<COMPACT>) for the footprint whose kernels run (dtype, head_dim)
// when `compact` is asked for: a head_dim without compact kernels of its own runs its full
// ones, which fit the compact budget.
template <typename T, int HEAD_DIM, typename F>
decltype(auto) with_footprint(bool compact, F&& f) {
  static_assert(fi_kernels::attention_smem_bytes<T, HEAD_DIM, true>() <=
                    fi_kernels::kCompactSmemBytes,
                "the compact footprint fits every sm80+ GPU");
  if constexpr (fi_kernels::has_compact_kernels<T, HEAD_DIM>()) {
    if (compact) return f(std::true_type{});
  }
  return f(std::false_type{});
}

// The attention kernel of a footprint, with or without prefill tiles, its dynamic
// shared-memory limit raised. Both kernels of a footprint get the same shared memory, so that
// a plan's CTA count fits either. The limit is per device; setting it each time keeps
// multi-device processes right and costs little.
template <typename T, int HEAD_DIM, bool COMPACT>
auto* configured_kernel(bool prefill_tiles) {
  auto* kernel = fi_kernels::batch_attention_kernel<T, HEAD_DIM, true, COMPACT>;
  if constexpr (!fi_kernels::has_one_tile_shape<HEAD_DIM, COMPACT>()) {
    if (!prefill_tiles) kernel = fi_kernels::batch_attention_kernel<T, HEAD_DIM, false, COMPACT>;
  }
  FI_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     fi_kernels::attention_smem_bytes<T, HEAD_DIM, COMPACT>()));
  return kernel;
}

template <typename T, int HEAD_DIM, bool COMPACT>
void launch_footprint(const BatchAttentionLaunch& l) {
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(l.stream);
  constexpr int kSmemBytes = fi_kernels::attention_smem_bytes<T, HEAD_DIM, COMPACT>();
  configured_kernel<T, HEAD_DIM, COMPACT>(l.prefill_tiles)
      <<<l.num_ctas, fi_kernels::kAttentionThreads, kSmemBytes, stream>>>(l.params);
  FI_CHECK_LAUNCH("batch_attention_kernel");
  if (l.num_merge_ctas > 0) {
    // On sm90+ the merge is a programmatic dependent of the attention kernel, as in the Hopper
    // family: its launch and plan loads overlap the attention kernel's last CTAs.
    auto* merge = fi_kernels::merge_partial_states_kernel<T, HEAD_DIM>;
    if (device_has_programmatic_launch()) {
      FI_CUDA_CHECK(launch_programmatic_dependent(merge, l.num_merge_ctas,
                                                  fi_kernels::kMergeThreads, 0, stream,
                                                  l.params));
    } else {
      merge<<<l.num_merge_ctas, fi_kernels::kMergeThreads, 0, stream>>>(l.params);
      FI_CHECK_LAUNCH("merge_partial_states_kernel");
    }
  }
}

template <typename T, int HEAD_DIM>
void launch_typed(const BatchAttentionLaunch& l) {
  with_footprint<T, HEAD_DIM>(l.compact_smem, [&](auto compact) {
    launch_footprint<T, HEAD_DIM, decltype(compact)::value>(l);
  });
}

}  // namespace

void batch_attention(const BatchAttentionLaunch& launch) {
  check_launch(launch);
  dispatch_dtype_head_dim(launch.dtype, launch.head_dim, "batch_attention",
                          [&](auto element, auto head_dim) {
                            launch_typed<typename decltype(element)::type,
                                         decltype(head_dim)::value>(launch);
                          });
}

namespace {

template <typename T, int HEAD_DIM>
int resident_ctas_typed(bool compact) {
  return with_footprint<T, HEAD_DIM>(compact, [](auto footprint) {
    constexpr bool kCompact = decltype(footprint)::value;
    // The kernel with prefill tiles uses at least the registers of the decode-only one.
    auto* attention = configured_kernel<T, HEAD_DIM, kCompact>(/*prefill_tiles=*/true);
    int ctas = 0;
    FI_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &ctas, attention, fi_kernels::kAttentionThreads,
        fi_kernels::attention_smem_bytes<T, HEAD_DIM, kCompact>()));
    return ctas;
  });
}

}  // namespace

int batch_attention_ctas_per_sm(DType dtype, int head_dim, bool compact_smem) {
  return dispatch_dtype_head_dim(
      dtype, head_dim, "batch_attention", [&](auto element, auto head_dim_tag) {
        return resident_ctas_typed<typename decltype(element)::type,
                                   decltype(head_dim_tag)::value>(compact_smem);
      });
}

int batch_attention_smem_bytes(DType dtype, int head_dim, bool compact_smem) {
  return dispatch_dtype_head_dim(
      dtype, head_dim, "batch_attention", [&](auto element, auto head_dim_tag) {
        using T = typename decltype(element)::type;
        constexpr int kHeadDim = decltype(head_dim_tag)::value;
        return with_footprint<T, kHeadDim>(compact_smem, [](auto footprint) {
          return fi_kernels::attention_smem_bytes<T, kHeadDim, decltype(footprint)::value>();
        });
      });
}

int device_max_smem_per_block() {
  int device = 0;
  FI_CUDA_CHECK(cudaGetDevice(&device));
  int bytes = 0;
  FI_CUDA_CHECK(
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

}  // namespace fi_backend
