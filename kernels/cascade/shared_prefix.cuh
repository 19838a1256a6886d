// Device side of shared-prefix (cascade) steps planned without host knowledge of the page
// table (fi_backend/metadata/shared_prefix.py): vLLM's V2 model runner keeps block tables on
// the device only, so the host composes a cascade plan for a guessed prefix (the previous
// step's measurement), and the device replaces the step's plain plan with it only when the
// step's own page table shares that prefix. Both kernels run once per step, before any layer.
#pragma once

#include <cstdint>

namespace fi_kernels {

struct SharedPrefixParams {
  const std::int32_t* kv_indptr;   // [num_reqs + 1] BSR page offsets of each request
  const std::int32_t* kv_indices;  // pages, request by request
  const std::int32_t* seq_lens;    // [num_reqs] exact KV lengths (this step's tokens included)
  const std::int32_t* qo_indptr;   // [num_reqs + 1] query offsets
  int num_reqs;
  int page_size;
  std::int32_t* shared_pages;      // out [1]
};

// Pages that every request with queries starts its page row with (request 0's pages, which
// the composed plan's prefix items read) and that end before each such request's first query
// (a cascade prefix must precede every query, so no query masks a prefix key). Requests
// without queries (CUDA-graph padding) need no prefix and are skipped. One CTA: first the
// bound from the lengths, then each warp compares whole requests' page rows with request 0's,
// 32 pages per step, until the first difference or the bound.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) measure_shared_prefix_kernel(SharedPrefixParams p) {
  __shared__ int bound;
  if (threadIdx.x == 0) bound = p.num_reqs > 0 ? p.kv_indptr[1] - p.kv_indptr[0] : 0;
  __syncthreads();
  for (int r = threadIdx.x; r < p.num_reqs; r += kThreads) {
    const int q_len = p.qo_indptr[r + 1] - p.qo_indptr[r];
    if (q_len == 0) continue;
    const int context = p.seq_lens[r] - q_len;
    const int pages = p.kv_indptr[r + 1] - p.kv_indptr[r];
    atomicMin(&bound, min(max(context, 0) / p.page_size, pages));
  }
  __syncthreads();

  const int lane = threadIdx.x % 32;
  const std::int32_t* first_row = p.kv_indices + p.kv_indptr[0];
  for (int r = 1 + threadIdx.x / 32; r < p.num_reqs; r += kThreads / 32) {
    if (p.qo_indptr[r + 1] == p.qo_indptr[r]) continue;
    const std::int32_t* row = p.kv_indices + p.kv_indptr[r];
    for (int page = 0;; page += 32) {
      // `bound` only shrinks (other warps lower it), so a stale value just compares a few
      // pages more; lane 0's read is broadcast so that the warp leaves the loop together.
      const int limit = __shfl_sync(0xffffffffu, *static_cast<volatile int*>(&bound), 0);
      if (page >= limit) break;
      const int j = page + lane;
      const bool differs = j < limit && row[j] != first_row[j];
      const unsigned mask = __ballot_sync(0xffffffffu, differs);
      if (mask != 0) {
        if (lane == 0) atomicMin(&bound, page + __ffs(mask) - 1);
        break;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) *p.shared_pages = bound;
}

struct AdoptPlanParams {
  const std::int32_t* shared_pages;  // [1] from measure_shared_prefix_kernel
  int required_pages;                // the prefix the staged plan was composed for
  const std::int32_t* staged_plan;   // the composed plan (same layout as live_plan)
  std::int32_t* live_plan;           // the plan every layer of the step runs
  std::int64_t num_ints;
};

// Copies the staged plan over the live one when the step shares the prefix it was composed
// for; otherwise the live (plain) plan stays, which is always correct.
__global__ void adopt_plan_kernel(AdoptPlanParams p) {
  if (*p.shared_pages < p.required_pages) return;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < p.num_ints; i += stride) {
    p.live_plan[i] = p.staged_plan[i];
  }
}

}  // namespace fi_kernels
