// Python binding of the Hopper batch-attention launcher (batch_attention_sm90.h). The
// launcher exists only in builds whose FI_CUDA_ARCHS contains 90a (setup.py then defines
// FI_BACKEND_WITH_SM90); other builds bind the same names, reporting "not built", so that
// fi_backend/attention.py can ask instead of guessing.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "batch_attention_binding.h"
#include "launch_common.h"
#ifdef FI_BACKEND_WITH_SM90
#include "batch_attention_sm90.h"
#endif

namespace py = pybind11;

namespace fi_backend {
namespace {

#ifdef FI_BACKEND_WITH_SM90
constexpr bool kSm90Built = true;
#else
constexpr bool kSm90Built = false;

[[noreturn]] void not_built() {
  // RuntimeError in Python: the build, not the arguments, is what is missing.
  throw std::runtime_error(
      "batch_attention_sm90: this build of fi_backend._C has no sm90a kernels; rebuild with "
      "FI_CUDA_ARCHS containing 90a (e.g. FI_CUDA_ARCHS=\"80;90a\")");
}

void batch_attention_sm90(const BatchAttentionLaunch&) { not_built(); }
bool batch_attention_sm90_supports(DType, int) { return false; }
int batch_attention_sm90_ctas_per_sm(DType, int) { not_built(); }
#endif

}  // namespace

void bind_batch_attention_sm90(py::module_& m) {
  def_batch_attention(
      m, "batch_attention_sm90",
      [](const BatchAttentionLaunch& launch) { batch_attention_sm90(launch); },
      "The Hopper (sm90a) family of batch_attention: same keyword arguments and plan "
      "semantics, wgmma kernels; runs only on compute capability 9.0 devices and only for the "
      "(dtype, head_dim) pairs batch_attention_sm90_supports accepts.");
  m.def(
      "batch_attention_sm90_supports",
      [](const std::string& dtype, int head_dim) {
        return batch_attention_sm90_supports(parse_dtype(dtype), head_dim);
      },
      py::arg("dtype"), py::arg("head_dim"),
      "Whether this build has sm90a kernels for (dtype, head_dim).");
  m.def(
      "batch_attention_sm90_ctas_per_sm",
      [](const std::string& dtype, int head_dim) {
        return batch_attention_sm90_ctas_per_sm(parse_dtype(dtype), head_dim);
      },
      py::arg("dtype"), py::arg("head_dim"),
      "sm90a attention CTAs that fit one SM of the current device at once.");
  m.attr("BATCH_ATTENTION_SM90_BUILT") = kSm90Built;
}

}  // namespace fi_backend
