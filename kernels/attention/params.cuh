// Parameters of one batch-attention run (persistent attention launch + split-KV merge
// launch). Plain C++ (no CUDA syntax) so that the pybind11 translation unit can fill it.
// Pointers are device addresses, strides are in elements, all 64-bit.
#pragma once

#include <cstdint>

#include "common/fast_divmod.cuh"

namespace fi_kernels {

// Built-in attention variant (fi_backend/variants.py); every flag is a run-time value, so
// one compiled kernel per (dtype, head_dim) serves all variants.
struct VariantParams {
  float sm_scale;           // logits = sm_scale * dot(q, k), natural-log units
  float logits_soft_cap;    // > 0: logits = cap * tanh(logits / cap)
  int window_left;          // >= 0: a query at p sees keys >= p - window_left
  int causal;               // 1: a query at p sees keys <= p
  const float* alibi_slopes;  // float32 [num_qo_heads] or null
  const float* sinks;         // float32 [num_qo_heads] or null (natural-log logits)
};

// The plan buffer, resolved into its sections (fi_backend/metadata/plan_layout.py).
struct PlanView {
  const std::int32_t* header;  // [0] num_work_items, [1] num_merge_items, ... (plan_layout.py)
  const std::int32_t* cta_work_indptr;
  const std::int32_t* work_request;
  const std::int32_t* work_kv_head;
  const std::int32_t* work_q_start;
  const std::int32_t* work_q_len;
  const std::int32_t* work_kv_start;
  const std::int32_t* work_kv_end;
  const std::int32_t* work_partial_slot;
  const std::int32_t* merge_request;
  const std::int32_t* merge_kv_head;
  const std::int32_t* merge_q_start;
  const std::int32_t* merge_q_len;
  const std::int32_t* merge_slot_start;
  const std::int32_t* merge_num_slots;
  const std::int32_t* merge_slot_row;
  const std::int32_t* merge_extra_slot_start;
  const std::int32_t* merge_extra_num_slots;
  const std::int32_t* merge_extra_slot_row;
};

// Header indices of the plan buffer.
constexpr int kPlanHeaderNumWorkItems = 0;
constexpr int kPlanHeaderNumMergeItems = 1;
constexpr int kPlanHeaderMaxMergeRows = 4;

// Rows (query tokens x GQA group) of one work item: plan_layout.MAX_TILE_ROWS.
constexpr int kMaxTileRows = 128;

struct BatchAttentionParams {
  // q: (num_tokens, num_qo_heads, head_dim); o likewise; lse: (num_tokens, num_qo_heads).
  const void* q;
  std::int64_t q_stride_token, q_stride_head;
  void* o;
  std::int64_t o_stride_token, o_stride_head;
  int o_rows_16b_aligned;  // o and its token/head strides allow 16-byte stores of a row's parts
  float* lse;  // null: not written
  std::int64_t lse_stride_token, lse_stride_head;
  // k, v: (num_pages, page_size, num_kv_heads, head_dim) strided views (any strides).
  const void* k;
  std::int64_t k_stride_page, k_stride_token, k_stride_head;
  const void* v;
  std::int64_t v_stride_page, v_stride_token, v_stride_head;
  // BSR page table: the pages of request b are kv_indices[kv_indptr[b] .. kv_indptr[b+1]).
  const std::int32_t* kv_indptr;
  const std::int32_t* kv_indices;
  int page_size;
  // Exact lengths, read on the device: queries of request b are tokens
  // qo_indptr[b] .. qo_indptr[b+1]; it has seq_lens[b] keys in total.
  const std::int32_t* qo_indptr;
  const std::int32_t* seq_lens;
  int num_qo_heads;
  int num_kv_heads;
  FastDivmod group_size;  // num_qo_heads / num_kv_heads: a row of a work item is (token, head)
  // Split-KV partial states: partial_o float32 [slots, kMaxTileRows, head_dim],
  // partial_lse float32 [slots, kMaxTileRows] (natural log, no sink).
  float* partial_o;
  float* partial_lse;
  PlanView plan;
  VariantParams variant;
};

}  // namespace fi_kernels
