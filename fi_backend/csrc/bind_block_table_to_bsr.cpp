// Python binding of the block-table translation (see block_table_to_bsr.h for the contract).
// fi_backend/metadata/block_sparse.py checks tensors and passes pointers and the stream.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "block_table_to_bsr.h"

namespace py = pybind11;

namespace fi_backend {

void bind_block_table_to_bsr(py::module_& m) {
  m.def("block_table_to_bsr", &block_table_to_bsr, py::kw_only(), py::arg("block_table"),
        py::arg("row_stride"), py::arg("num_reqs"), py::arg("max_blocks"), py::arg("seq_lens"),
        py::arg("page_size"), py::arg("indptr"), py::arg("indices"), py::arg("last_page_len"),
        py::arg("stream"),
        "Translate a block table (int32 [num_reqs, >= max_blocks], rows row_stride apart) "
        "into the BSR page table indptr [num_reqs + 1], indices [num_reqs * max_blocks] "
        "(padded with page 0) and last_page_len [num_reqs], in one launch.");
  m.attr("BLOCK_TABLE_TO_BSR_MAX_REQUESTS") = kBlockTableToBsrMaxRequests;
}

}  // namespace fi_backend
