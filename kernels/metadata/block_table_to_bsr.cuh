// vLLM's block table -> the BSR page table the attention kernels read (the contract of
// fi_backend/metadata/block_sparse.py::block_table_to_bsr), in one launch. The translation runs
// before every engine step's layers; as tensor code it was ~27 small kernels, each paying a
// launch, ahead of each step's CUDA-graph replay.
#pragma once

#include <cstdint>

namespace fi_kernels {

struct BlockTableToBsrParams {
  const std::int32_t* block_table;  // [num_reqs, >= max_blocks], rows row_stride apart
  std::int64_t row_stride;          // in elements
  const std::int32_t* seq_lens;     // [num_reqs] KV tokens per request
  int num_reqs;
  int max_blocks;                   // columns a request may use
  int page_size;
  std::int32_t* indptr;             // out [num_reqs + 1] page offsets
  std::int32_t* indices;            // out [num_reqs * max_blocks]: pages, request by request,
                                    //     then page 0 up to the end
  std::int32_t* last_page_len;      // out [num_reqs] tokens in the last page (0: no pages)
};

__device__ __forceinline__ int pages_of_request(const BlockTableToBsrParams& p, int request) {
  return (p.seq_lens[request] + p.page_size - 1) / p.page_size;
}

// Exclusive prefix sum of one value per thread over the CTA (kThreads a multiple of 32).
template <int kThreads>
__device__ __forceinline__ int cta_exclusive_sum(int value) {
  constexpr int kWarps = kThreads / 32;
  __shared__ int warp_totals[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int inclusive = value;
  for (int offset = 1; offset < 32; offset *= 2) {
    const int below = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += below;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  int warp_offset = 0;
  for (int w = 0; w < warp; ++w) warp_offset += warp_totals[w];
  return warp_offset + inclusive - value;
}

// Every CTA first scans the requests' page counts into shared memory (num_reqs + 1 ints; a
// batch's few hundred requests cost less than a second launch would), then gathers its share
// of `indices`: slot s belongs to the request whose page range covers it (binary search over
// the page ends), so every slot is written exactly once, and slots past the last page get
// page 0, a valid page for any prefetch. CTA 0 also writes indptr and last_page_len.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) block_table_to_bsr_kernel(BlockTableToBsrParams p) {
  extern __shared__ std::int32_t page_end[];  // [num_reqs + 1]: page_end[r + 1] = indptr[r + 1]
  const int per_thread = (p.num_reqs + kThreads - 1) / kThreads;
  const int first = min(static_cast<int>(threadIdx.x) * per_thread, p.num_reqs);
  const int last = min(first + per_thread, p.num_reqs);
  int own_pages = 0;
  for (int r = first; r < last; ++r) own_pages += pages_of_request(p, r);
  int running = cta_exclusive_sum<kThreads>(own_pages);
  if (threadIdx.x == 0) page_end[0] = 0;
  for (int r = first; r < last; ++r) {
    running += pages_of_request(p, r);
    page_end[r + 1] = running;
  }
  __syncthreads();

  if (blockIdx.x == 0) {
    for (int r = threadIdx.x; r <= p.num_reqs; r += kThreads) p.indptr[r] = page_end[r];
    for (int r = threadIdx.x; r < p.num_reqs; r += kThreads) {
      const int pages = page_end[r + 1] - page_end[r];
      p.last_page_len[r] = pages > 0 ? p.seq_lens[r] - (pages - 1) * p.page_size : 0;
    }
  }

  const std::int64_t capacity = static_cast<std::int64_t>(p.num_reqs) * p.max_blocks;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kThreads;
  for (std::int64_t slot = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x;
       slot < capacity; slot += stride) {
    // The request r with page_end[r] <= slot < page_end[r + 1], or num_reqs past the last page.
    int lo = 0, hi = p.num_reqs;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (page_end[mid + 1] > slot) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    std::int32_t page = 0;
    if (lo < p.num_reqs) {
      const int block = min(static_cast<int>(slot - page_end[lo]), p.max_blocks - 1);
      page = p.block_table[lo * p.row_stride + block];
    }
    p.indices[slot] = page;
  }
}

}  // namespace fi_kernels
