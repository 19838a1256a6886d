// Python binding of the merge_states launcher (see merge_states.h for the contract).
// fi_backend/ops.py is the public entry point: it checks tensors and passes their device
// pointers, strides (in elements) and the current CUDA stream as integers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "launch_common.h"
#include "merge_states.h"

namespace py = pybind11;

namespace fi_backend {

void bind_merge_states(py::module_& m) {
  m.attr("MERGE_STATES_MAX_HEAD_DIM") = kMergeStatesMaxHeadDim;
  m.attr("MERGE_STATES_HEAD_DIM_MULTIPLE") = kMergeStatesHeadDimMultiple;
  m.def(
      "merge_states",
      [](const std::string& dtype, std::uintptr_t v, std::array<std::int64_t, 3> v_strides,
         std::uintptr_t s, std::array<std::int64_t, 3> s_strides, std::uintptr_t o,
         std::array<std::int64_t, 2> o_strides, std::uintptr_t lse,
         std::array<std::int64_t, 2> lse_strides, std::int64_t num_rows,
         std::int64_t num_states, std::int64_t num_heads, std::int64_t head_dim,
         std::uintptr_t stream) {
        merge_states(MergeStatesParams{parse_dtype(dtype), v, v_strides, s, s_strides, o,
                                       o_strides, lse, lse_strides, num_rows, num_states,
                                       num_heads, head_dim, stream});
      },
      py::kw_only(), py::arg("dtype"), py::arg("v"), py::arg("v_strides"), py::arg("s"),
      py::arg("s_strides"), py::arg("o"), py::arg("o_strides"), py::arg("lse"),
      py::arg("lse_strides"), py::arg("num_rows"), py::arg("num_states"), py::arg("num_heads"),
      py::arg("head_dim"), py::arg("stream"),
      "Merge partial attention states by log-sum-exp (all keyword arguments).\n\n"
      "dtype: 'float16' | 'bfloat16' | 'float32' (of v and o). v: (num_rows, num_states, "
      "num_heads, head_dim) device pointer, strides (row, state, head) in elements; s: float32 "
      "natural-log LSE (num_rows, num_states, num_heads), strides (row, state, head); o: "
      "(num_rows, num_heads, head_dim), strides (row, head); lse: float32 (num_rows, "
      "num_heads), strides (row, head); stream: cudaStream_t as int. Raises ValueError for "
      "arguments outside the contract and RuntimeError when CUDA reports an error.");
}

}  // namespace fi_backend
