// Launchers of kernels/cascade/shared_prefix.cuh: measure the pages a step's requests share
// and adopt a cascade plan composed for them. Plain C++ so that the host compiler can bind it.
#pragma once

#include <cstdint>

namespace fi_backend {

// Writes into shared_pages (int32 [1]) how many leading pages all num_reqs requests of the
// BSR page table share and hold before their first query. Pointers are int32 device arrays:
// kv_indptr and qo_indptr [num_reqs + 1], kv_indices, seq_lens [num_reqs].
void measure_shared_prefix(std::uintptr_t kv_indptr, std::uintptr_t kv_indices,
                           std::uintptr_t seq_lens, std::uintptr_t qo_indptr,
                           std::int64_t num_reqs, std::int64_t page_size,
                           std::uintptr_t shared_pages, std::uintptr_t stream);

// Copies num_ints int32 from staged_plan over live_plan when *shared_pages >= required_pages.
void adopt_plan_if_shared(std::uintptr_t shared_pages, std::int64_t required_pages,
                          std::uintptr_t staged_plan, std::uintptr_t live_plan,
                          std::int64_t num_ints, std::uintptr_t stream);

}  // namespace fi_backend
