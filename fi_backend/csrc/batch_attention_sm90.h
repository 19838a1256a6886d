// Launcher of the Hopper (sm90a) batch-attention family
// (kernels/attention/hopper/batch_attention_sm90.cuh). It takes the portable launcher's
// BatchAttentionLaunch, executes the same plan, and merges split KV chunks with the portable
// merge kernel. Built only when FI_CUDA_ARCHS contains 90a (setup.py).
#pragma once

#include "batch_attention.h"

namespace fi_backend {

// (dtype, head_dim) pairs compiled for sm90a; other head_dims use the portable family.
constexpr int kBatchAttentionSm90HeadDims[] = {64, 128, 256};

bool batch_attention_sm90_supports(DType dtype, int head_dim);

// Enqueues the sm90a attention launch, then the merge launch, on launch.stream. Throws
// std::invalid_argument for an unsupported dtype/head_dim or misaligned views and
// fi_kernels::CudaError when CUDA fails (e.g. on a device that is not sm90).
void batch_attention_sm90(const BatchAttentionLaunch& launch);

// Attention CTAs of the sm90a kernel resident per SM of the current device.
int batch_attention_sm90_ctas_per_sm(DType dtype, int head_dim);

}  // namespace fi_backend
