// Python binding of the append_kv launcher (see append_kv.h for the contract).
// fi_backend/ops.py::append_kv checks tensors and passes pointers, strides and the stream.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "append_kv.h"
#include "launch_common.h"

namespace py = pybind11;

namespace fi_backend {

void bind_append_kv(py::module_& m) {
  m.def(
      "append_kv",
      [](const std::string& dtype, std::uintptr_t key, std::array<std::int64_t, 2> key_strides,
         std::uintptr_t value, std::array<std::int64_t, 2> value_strides,
         std::uintptr_t k_cache, std::array<std::int64_t, 3> k_cache_strides,
         std::uintptr_t v_cache, std::array<std::int64_t, 3> v_cache_strides,
         std::uintptr_t slot_mapping, std::int64_t num_tokens, std::int64_t num_kv_heads,
         std::int64_t head_dim, std::int64_t num_pages, std::int64_t page_size,
         std::uintptr_t stream) {
        append_kv(AppendKvParams{parse_dtype(dtype), key, key_strides, value, value_strides,
                                 k_cache, k_cache_strides, v_cache, v_cache_strides,
                                 slot_mapping, num_tokens, num_kv_heads, head_dim, num_pages,
                                 page_size, stream});
      },
      py::kw_only(), py::arg("dtype"), py::arg("key"), py::arg("key_strides"), py::arg("value"),
      py::arg("value_strides"), py::arg("k_cache"), py::arg("k_cache_strides"),
      py::arg("v_cache"), py::arg("v_cache_strides"), py::arg("slot_mapping"),
      py::arg("num_tokens"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("num_pages"),
      py::arg("page_size"), py::arg("stream"),
      "Write new K/V rows into the paged cache (all keyword arguments).\n\n"
      "key/value: (num_tokens, num_kv_heads, head_dim) device pointers, strides (token, head) "
      "in elements; k_cache/v_cache: (num_pages, page_size, num_kv_heads, head_dim), strides "
      "(page, slot, head); slot_mapping: int64 [num_tokens], -1 (and any slot outside the "
      "cache) skipped; stream: cudaStream_t as int.");
}

}  // namespace fi_backend
