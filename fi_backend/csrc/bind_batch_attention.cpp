// Python binding of the batch-attention launcher (see batch_attention.h).
// fi_backend/attention.py (BatchAttention.run) is the public entry point: it checks tensors and
// passes device pointers, strides (in elements), the plan's section offsets and the current
// CUDA stream as integers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>

#include "batch_attention.h"
#include "launch_common.h"

namespace py = pybind11;

namespace fi_backend {
namespace {

template <typename T>
T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// Resolves the plan buffer into its sections; the offsets come from
// fi_backend.metadata.plan_layout.PlanLayout.offsets, the one definition of the layout.
fi_kernels::PlanView plan_view(std::uintptr_t plan, const std::map<std::string, std::int64_t>& offsets) {
  const auto* base = as_ptr<const std::int32_t>(plan);
  auto section = [&](const char* name) {
    const auto it = offsets.find(name);
    if (it == offsets.end()) {
      throw std::invalid_argument(std::string("batch_attention: plan_offsets lacks '") + name + "'");
    }
    return base + it->second;
  };
  fi_kernels::PlanView view;
  view.header = section("header");
  view.cta_work_indptr = section("cta_work_indptr");
  view.work_request = section("work_request");
  view.work_kv_head = section("work_kv_head");
  view.work_q_start = section("work_q_start");
  view.work_q_len = section("work_q_len");
  view.work_kv_start = section("work_kv_start");
  view.work_kv_end = section("work_kv_end");
  view.work_partial_slot = section("work_partial_slot");
  view.merge_request = section("merge_request");
  view.merge_kv_head = section("merge_kv_head");
  view.merge_q_start = section("merge_q_start");
  view.merge_q_len = section("merge_q_len");
  view.merge_slot_start = section("merge_slot_start");
  view.merge_num_slots = section("merge_num_slots");
  return view;
}

}  // namespace

void bind_batch_attention(py::module_& m) {
  m.def(
      "batch_attention",
      [](const std::string& dtype, int head_dim, std::uintptr_t q,
         std::array<std::int64_t, 2> q_strides, std::uintptr_t o,
         std::array<std::int64_t, 2> o_strides, std::uintptr_t lse,
         std::array<std::int64_t, 2> lse_strides, std::uintptr_t k,
         std::array<std::int64_t, 3> k_strides, std::uintptr_t v,
         std::array<std::int64_t, 3> v_strides, std::uintptr_t kv_indptr,
         std::uintptr_t kv_indices, int page_size, std::uintptr_t qo_indptr,
         std::uintptr_t seq_lens, int num_qo_heads, int num_kv_heads, std::uintptr_t partial_o,
         std::uintptr_t partial_lse, std::uintptr_t plan,
         const std::map<std::string, std::int64_t>& plan_offsets, int num_ctas,
         int num_merge_ctas, bool causal, int window_left, float logits_soft_cap, float sm_scale,
         std::uintptr_t alibi_slopes, std::uintptr_t sinks, std::uintptr_t stream) {
        BatchAttentionLaunch launch;
        launch.dtype = parse_dtype(dtype);
        launch.head_dim = head_dim;
        fi_kernels::BatchAttentionParams& p = launch.params;
        p.q = as_ptr<const void>(q);
        p.q_stride_token = q_strides[0];
        p.q_stride_head = q_strides[1];
        p.o = as_ptr<void>(o);
        p.o_stride_token = o_strides[0];
        p.o_stride_head = o_strides[1];
        p.lse = as_ptr<float>(lse);
        p.lse_stride_token = lse_strides[0];
        p.lse_stride_head = lse_strides[1];
        p.k = as_ptr<const void>(k);
        p.k_stride_page = k_strides[0];
        p.k_stride_token = k_strides[1];
        p.k_stride_head = k_strides[2];
        p.v = as_ptr<const void>(v);
        p.v_stride_page = v_strides[0];
        p.v_stride_token = v_strides[1];
        p.v_stride_head = v_strides[2];
        p.kv_indptr = as_ptr<const std::int32_t>(kv_indptr);
        p.kv_indices = as_ptr<const std::int32_t>(kv_indices);
        p.page_size = page_size;
        p.qo_indptr = as_ptr<const std::int32_t>(qo_indptr);
        p.seq_lens = as_ptr<const std::int32_t>(seq_lens);
        p.num_qo_heads = num_qo_heads;
        p.num_kv_heads = num_kv_heads;
        p.partial_o = as_ptr<float>(partial_o);
        p.partial_lse = as_ptr<float>(partial_lse);
        p.plan = plan_view(plan, plan_offsets);
        p.variant.sm_scale = sm_scale;
        p.variant.logits_soft_cap = logits_soft_cap;
        p.variant.window_left = window_left;
        p.variant.causal = causal ? 1 : 0;
        p.variant.alibi_slopes = as_ptr<const float>(alibi_slopes);
        p.variant.sinks = as_ptr<const float>(sinks);
        launch.num_ctas = num_ctas;
        launch.num_merge_ctas = num_merge_ctas;
        launch.stream = stream;
        batch_attention(launch);
      },
      py::kw_only(), py::arg("dtype"), py::arg("head_dim"), py::arg("q"), py::arg("q_strides"),
      py::arg("o"), py::arg("o_strides"), py::arg("lse"), py::arg("lse_strides"), py::arg("k"),
      py::arg("k_strides"), py::arg("v"), py::arg("v_strides"), py::arg("kv_indptr"),
      py::arg("kv_indices"), py::arg("page_size"), py::arg("qo_indptr"), py::arg("seq_lens"),
      py::arg("num_qo_heads"), py::arg("num_kv_heads"), py::arg("partial_o"),
      py::arg("partial_lse"), py::arg("plan"), py::arg("plan_offsets"), py::arg("num_ctas"),
      py::arg("num_merge_ctas"), py::arg("causal"), py::arg("window_left"),
      py::arg("logits_soft_cap"), py::arg("sm_scale"), py::arg("alibi_slopes"), py::arg("sinks"),
      py::arg("stream"),
      "Runs the plan's work items (one persistent launch of num_ctas CTAs), then merges split "
      "KV chunks (num_merge_ctas CTAs; 0 skips the merge). Keyword arguments only; pointers "
      "and the stream are integers, strides are in elements: q/o (token, head), lse (token, "
      "head; lse=0 skips it), k/v (page, token, head). Raises ValueError for arguments outside "
      "the contract and RuntimeError when CUDA reports an error.");
  m.def(
      "batch_attention_ctas_per_sm",
      [](const std::string& dtype, int head_dim) {
        return batch_attention_ctas_per_sm(parse_dtype(dtype), head_dim);
      },
      py::arg("dtype"), py::arg("head_dim"),
      "Attention CTAs that fit one SM of the current device at once.");
  m.attr("BATCH_ATTENTION_MAX_TILE_ROWS") = fi_kernels::kMaxTileRows;
}

}  // namespace fi_backend
