// merge_states: o[n, h] = sum_s softmax_s(lse[n, s, h]) * v[n, s, h], lse[n, h] = logsumexp_s.
//
// One thread owns one 16-byte slice of one (row, head) output and folds the S partial
// states into a SoftmaxState in order; the threads of a (row, head) read the same LSE
// values (one broadcast load each). The kernel is bandwidth-bound, so the loop keeps
// kStatesInFlight independent 16-byte loads outstanding before it merges them, holding
// them in their storage type (4 registers each) to keep occupancy up.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "common/cuda_check.cuh"
#include "common/softmax_state.cuh"
#include "common/vec.cuh"
#include "merge_states.h"

namespace fi_backend {
namespace {

constexpr int kThreadsPerBlock = 128;
constexpr int kStatesInFlight = 4;

template <typename T>
struct MergeStatesKernelParams {
  const T* v;
  const float* s;
  T* o;
  float* lse;
  std::int64_t v_stride_row, v_stride_state, v_stride_head;
  std::int64_t s_stride_row, s_stride_state, s_stride_head;
  std::int64_t o_stride_row, o_stride_head;
  std::int64_t lse_stride_row, lse_stride_head;
  std::int64_t num_row_heads;  // num_rows * num_heads
  std::int64_t num_heads;
  std::int64_t num_states;
};

// blockDim = (head_dim / kVec, row-heads per block); grid.x covers all (row, head) pairs.
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    merge_states_kernel(const MergeStatesKernelParams<T> p) {
  constexpr int kVec = fi_kernels::kElemsPerVec<T>;
  const std::int64_t row_head = static_cast<std::int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row_head >= p.num_row_heads) return;
  const std::int64_t row = row_head / p.num_heads;
  const std::int64_t head = row_head % p.num_heads;
  const int col = threadIdx.x * kVec;

  const T* v = p.v + row * p.v_stride_row + head * p.v_stride_head + col;
  const float* s = p.s + row * p.s_stride_row + head * p.s_stride_head;

  fi_kernels::SoftmaxState<kVec> state;
  state.init();
  for (std::int64_t first = 0; first < p.num_states; first += kStatesInFlight) {
    fi_kernels::Vec<T, kVec> v_partial[kStatesInFlight];
    float lse_log2[kStatesInFlight];
#pragma unroll
    for (int i = 0; i < kStatesInFlight; ++i) {
      const std::int64_t state_idx = first + i;
      if (state_idx < p.num_states) {
        lse_log2[i] = fi_kernels::lse_ln_to_log2(s[state_idx * p.s_stride_state]);
        v_partial[i].load(v + state_idx * p.v_stride_state);
      } else {
        lse_log2[i] = -__int_as_float(0x7f800000);  // past the end: an empty state
      }
    }
#pragma unroll
    for (int i = 0; i < kStatesInFlight; ++i) {
      float v_float[kVec];
      v_partial[i].to_float(v_float);
      state.merge_normalized(v_float, lse_log2[i]);
    }
  }

  float o[kVec];
  state.normalized_output(o);
  fi_kernels::store_from_float(o, p.o + row * p.o_stride_row + head * p.o_stride_head + col);
  if (threadIdx.x == 0) {
    p.lse[row * p.lse_stride_row + head * p.lse_stride_head] =
        fi_kernels::lse_log2_to_ln(state.lse_log2());
  }
}

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument("merge_states: " + message);
}

// The host-side contract of MergeStatesParams; ops.merge_states checks the same with
// per-tensor messages, this guards direct callers of _C.
void check_params(const MergeStatesParams& p) {
  require(p.num_rows >= 0 && p.num_states >= 0 && p.num_heads >= 0,
          "num_rows, num_states and num_heads must be >= 0");
  require(p.head_dim > 0 && p.head_dim <= kMergeStatesMaxHeadDim &&
              p.head_dim % kMergeStatesHeadDimMultiple == 0,
          "head_dim " + std::to_string(p.head_dim) + " is not supported; supported: multiples of " +
              std::to_string(kMergeStatesHeadDimMultiple) + " up to " +
              std::to_string(kMergeStatesMaxHeadDim));
  const std::int64_t elems_per_vec = fi_kernels::kVecBytes / dtype_size_bytes(p.dtype);
  const bool v_aligned = is_aligned(p.v, fi_kernels::kVecBytes) &&
                         p.v_strides[0] % elems_per_vec == 0 &&
                         p.v_strides[1] % elems_per_vec == 0 && p.v_strides[2] % elems_per_vec == 0;
  const bool o_aligned = is_aligned(p.o, fi_kernels::kVecBytes) &&
                         p.o_strides[0] % elems_per_vec == 0 && p.o_strides[1] % elems_per_vec == 0;
  require(v_aligned && o_aligned,
          "v and o need 16-byte aligned pointers and row/state/head strides that are multiples "
          "of 16 bytes");
}

template <typename T>
void launch(const MergeStatesParams& p) {
  constexpr int kVec = fi_kernels::kElemsPerVec<T>;
  const int threads_per_row_head = static_cast<int>(p.head_dim / kVec);
  const int row_heads_per_block = std::max(1, kThreadsPerBlock / threads_per_row_head);
  const std::int64_t num_row_heads = p.num_rows * p.num_heads;
  const std::int64_t num_blocks = (num_row_heads + row_heads_per_block - 1) / row_heads_per_block;
  require(num_blocks <= 0x7fffffff, "num_rows * num_heads is too large for one launch");

  MergeStatesKernelParams<T> kp;
  kp.v = reinterpret_cast<const T*>(p.v);
  kp.s = reinterpret_cast<const float*>(p.s);
  kp.o = reinterpret_cast<T*>(p.o);
  kp.lse = reinterpret_cast<float*>(p.lse);
  kp.v_stride_row = p.v_strides[0];
  kp.v_stride_state = p.v_strides[1];
  kp.v_stride_head = p.v_strides[2];
  kp.s_stride_row = p.s_strides[0];
  kp.s_stride_state = p.s_strides[1];
  kp.s_stride_head = p.s_strides[2];
  kp.o_stride_row = p.o_strides[0];
  kp.o_stride_head = p.o_strides[1];
  kp.lse_stride_row = p.lse_strides[0];
  kp.lse_stride_head = p.lse_strides[1];
  kp.num_row_heads = num_row_heads;
  kp.num_heads = p.num_heads;
  kp.num_states = p.num_states;

  const dim3 block(threads_per_row_head, row_heads_per_block);
  const dim3 grid(static_cast<unsigned>(num_blocks));
  merge_states_kernel<T><<<grid, block, 0, reinterpret_cast<cudaStream_t>(p.stream)>>>(kp);
  FI_CHECK_LAUNCH("merge_states_kernel");
}

}  // namespace

void merge_states(const MergeStatesParams& params) {
  check_params(params);
  if (params.num_rows == 0 || params.num_heads == 0) return;
  switch (params.dtype) {
    case DType::kFloat16:
      return launch<__half>(params);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(params);
    case DType::kFloat32:
      return launch<float>(params);
  }
}

}  // namespace fi_backend
