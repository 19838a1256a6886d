// Python binding of the shared-prefix launchers (see shared_prefix.h for the contracts).
// fi_backend/metadata/shared_prefix.py checks tensors and passes pointers and the stream.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "shared_prefix.h"

namespace py = pybind11;

namespace fi_backend {

void bind_shared_prefix(py::module_& m) {
  m.def("measure_shared_prefix", &measure_shared_prefix, py::kw_only(), py::arg("kv_indptr"),
        py::arg("kv_indices"), py::arg("seq_lens"), py::arg("qo_indptr"), py::arg("num_reqs"),
        py::arg("page_size"), py::arg("shared_pages"), py::arg("stream"),
        "Write into shared_pages (int32 [1]) the number of leading pages that all num_reqs "
        "requests of the BSR page table share and hold before their first query.");
  m.def("adopt_plan_if_shared", &adopt_plan_if_shared, py::kw_only(), py::arg("shared_pages"),
        py::arg("required_pages"), py::arg("staged_plan"), py::arg("live_plan"),
        py::arg("num_ints"), py::arg("stream"),
        "Copy num_ints int32 from staged_plan over live_plan when *shared_pages >= "
        "required_pages (all on the device, in stream order).");
}

}  // namespace fi_backend
