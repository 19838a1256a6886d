// Python binding of the portable batch-attention launcher (see batch_attention.h).
// fi_backend/attention.py (BatchAttention.run) is the public entry point: it checks tensors and
// passes device pointers, strides (in elements), the plan's section offsets and the current
// CUDA stream as integers; the keyword signature is shared with the Hopper family
// (batch_attention_binding.h).
#include <pybind11/pybind11.h>

#include <string>

#include "batch_attention.h"
#include "batch_attention_binding.h"
#include "launch_common.h"

namespace py = pybind11;

namespace fi_backend {
namespace {

// Binds a per-(dtype, head_dim, footprint) query of the portable kernels as
// name(dtype: str, head_dim: int, compact_smem: bool = False) -> int.
template <int (*Query)(DType, int, bool)>
void def_footprint_query(py::module_& m, const char* name, const char* doc) {
  m.def(
      name,
      [](const std::string& dtype, int head_dim, bool compact_smem) {
        return Query(parse_dtype(dtype), head_dim, compact_smem);
      },
      py::arg("dtype"), py::arg("head_dim"), py::arg("compact_smem") = false, doc);
}

}  // namespace

void bind_batch_attention(py::module_& m) {
  def_batch_attention(
      m, "batch_attention", [](const BatchAttentionLaunch& launch) { batch_attention(launch); },
      "Runs the plan's work items (one persistent launch of num_ctas CTAs), then merges split "
      "KV chunks (num_merge_ctas CTAs; 0 skips the merge). Keyword arguments only; pointers "
      "and the stream are integers, strides are in elements: q/o (token, head), lse (token, "
      "head; lse=0 skips it), k/v (page, token, head). Raises ValueError for arguments outside "
      "the contract and RuntimeError when CUDA reports an error. prefill_tiles=False (the plan "
      "has no work item of more than 16 rows) runs the kernel built for decode tiles only; "
      "compact_smem=True runs the kernels of the compact shared-memory footprint.");
  def_footprint_query<batch_attention_ctas_per_sm>(
      m, "batch_attention_ctas_per_sm",
      "Attention CTAs of the given shared-memory footprint that fit one SM of the current "
      "device at once.");
  def_footprint_query<batch_attention_smem_bytes>(
      m, "batch_attention_smem_bytes",
      "Dynamic shared memory per block (bytes) of the portable attention kernels of the given "
      "footprint.");
  m.def("device_max_smem_per_block", &device_max_smem_per_block,
        "The most dynamic shared memory (bytes) the current CUDA device grants one block.");
  m.attr("BATCH_ATTENTION_MAX_TILE_ROWS") = fi_kernels::kMaxTileRows;
}

}  // namespace fi_backend
