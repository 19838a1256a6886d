// Host launcher of kernels/metadata/block_table_to_bsr.cuh.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "block_table_to_bsr.h"
#include "common/cuda_check.cuh"
#include "metadata/block_table_to_bsr.cuh"

namespace fi_backend {
namespace {

constexpr int kThreads = 256;
// Enough CTAs to gather a batch-256 table of 2048 columns in a few passes; every CTA
// repeats the scan of the page counts, so more would only add that work.
constexpr std::int64_t kMaxBlocks = 128;

}  // namespace

void block_table_to_bsr(std::uintptr_t block_table, std::int64_t row_stride,
                        std::int64_t num_reqs, std::int64_t max_blocks,
                        std::uintptr_t seq_lens, std::int64_t page_size, std::uintptr_t indptr,
                        std::uintptr_t indices, std::uintptr_t last_page_len,
                        std::uintptr_t stream) {
  if (num_reqs < 0 || num_reqs > kBlockTableToBsrMaxRequests) {
    throw std::invalid_argument("block_table_to_bsr: batch_size " + std::to_string(num_reqs) +
                                " is not supported; supported: 0 to " +
                                std::to_string(kBlockTableToBsrMaxRequests));
  }
  if (max_blocks < 0 || max_blocks > 0x7fffffff || page_size < 1 || page_size > 0x7fffffff ||
      row_stride < max_blocks || num_reqs * max_blocks > 0x7fffffff) {
    throw std::invalid_argument(
        "block_table_to_bsr: needs 0 <= max_blocks <= row_stride, page_size >= 1 and "
        "batch_size x max_blocks < 2^31; got max_blocks " + std::to_string(max_blocks) +
        ", row_stride " + std::to_string(row_stride) + ", page_size " +
        std::to_string(page_size) + ", batch_size " + std::to_string(num_reqs));
  }
  fi_kernels::BlockTableToBsrParams p{};
  p.block_table = reinterpret_cast<const std::int32_t*>(block_table);
  p.row_stride = row_stride;
  p.seq_lens = reinterpret_cast<const std::int32_t*>(seq_lens);
  p.num_reqs = static_cast<int>(num_reqs);
  p.max_blocks = static_cast<int>(max_blocks);
  p.page_size = static_cast<int>(page_size);
  p.indptr = reinterpret_cast<std::int32_t*>(indptr);
  p.indices = reinterpret_cast<std::int32_t*>(indices);
  p.last_page_len = reinterpret_cast<std::int32_t*>(last_page_len);

  const std::int64_t capacity = num_reqs * max_blocks;
  const std::int64_t blocks =
      std::clamp<std::int64_t>((capacity + kThreads - 1) / kThreads, 1, kMaxBlocks);
  const std::size_t smem_bytes = static_cast<std::size_t>(num_reqs + 1) * sizeof(std::int32_t);
  fi_kernels::block_table_to_bsr_kernel<kThreads>
      <<<static_cast<unsigned>(blocks), kThreads, smem_bytes,
         reinterpret_cast<cudaStream_t>(stream)>>>(p);
  FI_CHECK_LAUNCH("block_table_to_bsr_kernel");
}

}  // namespace fi_backend
