// Launcher of the persistent batch-attention kernel and its split-KV merge
// (kernels/attention/batch_attention.cuh). Plain C++ so that the host compiler can bind it.
#pragma once

#include <cstdint>

#include "attention/params.cuh"
#include "launch_common.h"

namespace fi_backend {

// head_dims compiled ahead of time (two attention kernels, with and without prefill tiles, and
// one merge kernel per dtype x head_dim; variants are run-time flags).
constexpr int kBatchAttentionHeadDims[] = {64, 128, 256};

struct BatchAttentionLaunch {
  DType dtype;  // of q, k, v, o: float16 or bfloat16
  int head_dim;
  fi_kernels::BatchAttentionParams params;
  int num_ctas;        // attention grid: the plan's fixed CTA count
  int num_merge_ctas;  // merge grid (fixed); 0 skips the merge launch (plans without splits)
  // false: the plan has no work item of more than 16 rows (a decode batch); the portable
  // kernel built without the prefill tile shape runs it (fewer registers, no spills in the
  // decode loop). The Hopper launcher has one kernel for all items and ignores it.
  bool prefill_tiles = true;
  // true: the portable kernels of the compact shared-memory footprint (at most
  // fi_kernels::kCompactSmemBytes per block, for GPUs that grant no more, e.g. sm_86/sm_89).
  // The Hopper launcher ignores it.
  bool compact_smem = false;
  std::uintptr_t stream;  // cudaStream_t
};

// Enqueues the attention launch, then the merge launch, on launch.stream. Throws
// std::invalid_argument for an unsupported dtype/head_dim or misaligned views and
// fi_kernels::CudaError when CUDA fails.
void batch_attention(const BatchAttentionLaunch& launch);

// How many attention CTAs of the given footprint fit one SM of the current device at once
// (registers and shared memory); a plan's CTA count is best a multiple of SMs x this.
int batch_attention_ctas_per_sm(DType dtype, int head_dim, bool compact_smem);

// Dynamic shared memory per block of the attention kernels of the given footprint.
int batch_attention_smem_bytes(DType dtype, int head_dim, bool compact_smem);

// The most dynamic shared memory the current device grants one block (opt-in limit).
int device_max_smem_per_block();

}  // namespace fi_backend
