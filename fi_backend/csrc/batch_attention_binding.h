// The Python signature of a batch-attention launcher, shared by every kernel family's binding
// (portable: bind_batch_attention.cpp, Hopper: bind_batch_attention_sm90.cpp), so that
// fi_backend/attention.py calls each family with the same keyword arguments.
// Pointers and the stream arrive as integers, strides in elements (DESIGN.md, decision 1).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>

#include "batch_attention.h"
#include "launch_common.h"

namespace fi_backend {

// Resolves the plan buffer into its sections; the offsets come from
// fi_backend.metadata.plan_layout.PlanLayout.offsets, the one definition of the layout.
inline fi_kernels::PlanView plan_view_from_offsets(
    std::uintptr_t plan, const std::map<std::string, std::int64_t>& offsets) {
  const auto* base = reinterpret_cast<const std::int32_t*>(plan);
  auto section = [&](const char* name) {
    const auto it = offsets.find(name);
    if (it == offsets.end()) {
      throw std::invalid_argument(std::string("batch_attention: plan_offsets lacks '") + name +
                                  "'");
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
  view.merge_slot_row = section("merge_slot_row");
  view.merge_extra_slot_start = section("merge_extra_slot_start");
  view.merge_extra_num_slots = section("merge_extra_num_slots");
  view.merge_extra_slot_row = section("merge_extra_slot_row");
  return view;
}

// Defines m.<name>(**kwargs) that fills a BatchAttentionLaunch and calls launcher(launch).
template <typename Launcher>
void def_batch_attention(pybind11::module_& m, const char* name, Launcher launcher,
                         const char* doc) {
  namespace py = pybind11;
  m.def(
      name,
      [launcher](const std::string& dtype, int head_dim, std::uintptr_t q,
                 std::array<std::int64_t, 2> q_strides, std::uintptr_t o,
                 std::array<std::int64_t, 2> o_strides, std::uintptr_t lse,
                 std::array<std::int64_t, 2> lse_strides, std::uintptr_t k,
                 std::array<std::int64_t, 3> k_strides, std::uintptr_t v,
                 std::array<std::int64_t, 3> v_strides, std::uintptr_t kv_indptr,
                 std::uintptr_t kv_indices, int page_size, std::uintptr_t qo_indptr,
                 std::uintptr_t seq_lens, int num_qo_heads, int num_kv_heads,
                 std::uintptr_t partial_o, std::uintptr_t partial_lse, std::uintptr_t plan,
                 const std::map<std::string, std::int64_t>& plan_offsets, int num_ctas,
                 int num_merge_ctas, bool causal, int window_left, float logits_soft_cap,
                 float sm_scale, std::uintptr_t alibi_slopes, std::uintptr_t sinks,
                 std::uintptr_t stream, bool prefill_tiles, bool compact_smem) {
        BatchAttentionLaunch launch;
        launch.dtype = parse_dtype(dtype);
        launch.head_dim = head_dim;
        fi_kernels::BatchAttentionParams& p = launch.params;
        p.q = reinterpret_cast<const void*>(q);
        p.q_stride_token = q_strides[0];
        p.q_stride_head = q_strides[1];
        p.o = reinterpret_cast<void*>(o);
        p.o_stride_token = o_strides[0];
        p.o_stride_head = o_strides[1];
        {
          const std::int64_t elems_per_16b = 16 / dtype_size_bytes(launch.dtype);
          p.o_rows_16b_aligned = o % 16 == 0 && o_strides[0] % elems_per_16b == 0 &&
                                 o_strides[1] % elems_per_16b == 0;
        }
        p.lse = reinterpret_cast<float*>(lse);
        p.lse_stride_token = lse_strides[0];
        p.lse_stride_head = lse_strides[1];
        p.k = reinterpret_cast<const void*>(k);
        p.k_stride_page = k_strides[0];
        p.k_stride_token = k_strides[1];
        p.k_stride_head = k_strides[2];
        p.v = reinterpret_cast<const void*>(v);
        p.v_stride_page = v_strides[0];
        p.v_stride_token = v_strides[1];
        p.v_stride_head = v_strides[2];
        p.kv_indptr = reinterpret_cast<const std::int32_t*>(kv_indptr);
        p.kv_indices = reinterpret_cast<const std::int32_t*>(kv_indices);
        p.page_size = page_size;
        p.qo_indptr = reinterpret_cast<const std::int32_t*>(qo_indptr);
        p.seq_lens = reinterpret_cast<const std::int32_t*>(seq_lens);
        if (num_kv_heads < 1 || num_qo_heads % num_kv_heads != 0) {
          throw std::invalid_argument(
              "batch_attention: num_qo_heads " + std::to_string(num_qo_heads) +
              " must be a positive multiple of num_kv_heads " + std::to_string(num_kv_heads));
        }
        p.num_qo_heads = num_qo_heads;
        p.num_kv_heads = num_kv_heads;
        p.group_size =
            fi_kernels::FastDivmod(static_cast<std::uint32_t>(num_qo_heads / num_kv_heads));
        p.partial_o = reinterpret_cast<float*>(partial_o);
        p.partial_lse = reinterpret_cast<float*>(partial_lse);
        p.plan = plan_view_from_offsets(plan, plan_offsets);
        p.variant.sm_scale = sm_scale;
        p.variant.logits_soft_cap = logits_soft_cap;
        p.variant.window_left = window_left;
        p.variant.causal = causal ? 1 : 0;
        p.variant.alibi_slopes = reinterpret_cast<const float*>(alibi_slopes);
        p.variant.sinks = reinterpret_cast<const float*>(sinks);
        launch.num_ctas = num_ctas;
        launch.num_merge_ctas = num_merge_ctas;
        launch.stream = stream;
        launch.prefill_tiles = prefill_tiles;
        launch.compact_smem = compact_smem;
        launcher(launch);
      },
      py::kw_only(), py::arg("dtype"), py::arg("head_dim"), py::arg("q"), py::arg("q_strides"),
      py::arg("o"), py::arg("o_strides"), py::arg("lse"), py::arg("lse_strides"), py::arg("k"),
      py::arg("k_strides"), py::arg("v"), py::arg("v_strides"), py::arg("kv_indptr"),
      py::arg("kv_indices"), py::arg("page_size"), py::arg("qo_indptr"), py::arg("seq_lens"),
      py::arg("num_qo_heads"), py::arg("num_kv_heads"), py::arg("partial_o"),
      py::arg("partial_lse"), py::arg("plan"), py::arg("plan_offsets"), py::arg("num_ctas"),
      py::arg("num_merge_ctas"), py::arg("causal"), py::arg("window_left"),
      py::arg("logits_soft_cap"), py::arg("sm_scale"), py::arg("alibi_slopes"), py::arg("sinks"),
      py::arg("stream"), py::arg("prefill_tiles") = true, py::arg("compact_smem") = false,
      doc);
}

}  // namespace fi_backend
