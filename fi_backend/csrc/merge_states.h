// Launcher of the merge_states kernel: merges S partial attention results per (row, head)
// into one by their log-sum-exp. Plain C++ so that the host compiler can bind it.
#pragma once

#include <array>
#include <cstdint>

#include "launch_common.h"

namespace fi_backend {

// Largest head_dim the kernel supports; head_dim must also be a multiple of
// kMergeStatesHeadDimMultiple so that every thread moves whole 16-byte words.
constexpr std::int64_t kMergeStatesMaxHeadDim = 512;
constexpr std::int64_t kMergeStatesHeadDimMultiple = 8;

// Shapes and strides in elements; the head_dim axis of v and o is contiguous. v and o rows
// (their pointers and every stride) must be 16-byte aligned.
struct MergeStatesParams {
  DType dtype;                              // of v and o; s and lse are float32
  std::uintptr_t v;                         // (num_rows, num_states, num_heads, head_dim)
  std::array<std::int64_t, 3> v_strides;    // row, state, head
  std::uintptr_t s;                         // (num_rows, num_states, num_heads), natural-log LSE
  std::array<std::int64_t, 3> s_strides;    // row, state, head
  std::uintptr_t o;                         // (num_rows, num_heads, head_dim)
  std::array<std::int64_t, 2> o_strides;    // row, head
  std::uintptr_t lse;                       // (num_rows, num_heads), natural-log LSE
  std::array<std::int64_t, 2> lse_strides;  // row, head
  std::int64_t num_rows;
  std::int64_t num_states;
  std::int64_t num_heads;
  std::int64_t head_dim;
  std::uintptr_t stream;  // cudaStream_t
};

// Enqueues the merge on params.stream. Throws std::invalid_argument for parameters outside
// the contract above and fi_kernels::CudaError (a std::runtime_error) when CUDA fails.
void merge_states(const MergeStatesParams& params);

}  // namespace fi_backend
