// Launcher of kernels/metadata/block_table_to_bsr.cuh: vLLM's block table -> BSR page table.
// Plain C++ so that the host compiler can bind it.
#pragma once

#include <cstdint>

namespace fi_backend {

// The largest batch one launch translates: its page offsets live in shared memory.
constexpr std::int64_t kBlockTableToBsrMaxRequests = 8192;

// Pointers are int32 device arrays. block_table: [num_reqs, >= max_blocks] (max_blocks >= 0),
// rows row_stride elements apart, request b's first ceil(seq_lens[b] / page_size) entries
// its pages in order; seq_lens [num_reqs]. Writes indptr [num_reqs + 1], indices [num_reqs * max_blocks]
// (pages request by request, then page 0) and last_page_len [num_reqs]. Throws
// std::invalid_argument for parameters outside this contract.
void block_table_to_bsr(std::uintptr_t block_table, std::int64_t row_stride,
                        std::int64_t num_reqs, std::int64_t max_blocks,
                        std::uintptr_t seq_lens, std::int64_t page_size, std::uintptr_t indptr,
                        std::uintptr_t indices, std::uintptr_t last_page_len,
                        std::uintptr_t stream);

}  // namespace fi_backend
