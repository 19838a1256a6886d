// The pybind11 module fi_backend._C. Each feature binds its launchers in its own
// translation unit; launchers take device pointers, shapes, strides and the CUDA stream
// as integers, so the module never links libtorch (DESIGN.md, decision 1).
#include <pybind11/pybind11.h>

namespace fi_backend {
void bind_merge_states(pybind11::module_& m);
void bind_batch_attention(pybind11::module_& m);
void bind_batch_attention_sm90(pybind11::module_& m);
void bind_planner(pybind11::module_& m);
void bind_append_kv(pybind11::module_& m);
void bind_shared_prefix(pybind11::module_& m);
void bind_block_table_to_bsr(pybind11::module_& m);
}  // namespace fi_backend

PYBIND11_MODULE(_C, m) {
  m.doc() = "fi_backend CUDA kernels (pybind11, torch-free)";
  fi_backend::bind_merge_states(m);
  fi_backend::bind_batch_attention(m);
  fi_backend::bind_batch_attention_sm90(m);
  fi_backend::bind_planner(m);
  fi_backend::bind_append_kv(m);
  fi_backend::bind_shared_prefix(m);
  fi_backend::bind_block_table_to_bsr(m);
}
