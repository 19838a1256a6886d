// The plan's work item as a kernel sees it, and where a row of its result goes. Shared by
// every kernel family that executes the plan (portable sm80 and Hopper sm90), so that all of
// them clamp lengths, place rows and write outputs and partial states identically.
#pragma once

#include <cstdint>

#include "attention/mma.cuh"
#include "attention/params.cuh"
#include "attention/variant.cuh"
#include "common/softmax_state.cuh"

namespace fi_kernels {

// Where a work item reads and writes, with every length clamped by the exact device lengths.
struct WorkItem {
  int kv_head;
  FastDivmod group;  // query heads per KV head (rows are token-major: row = token * group + h)
  int rows;          // query tokens x group
  int q_token0;      // global token index (row of q / o) of the tile's first query
  int q_pos_first;   // absolute positions of the tile's first and last query
  int q_pos_last;
  int kv_lo, kv_hi;  // keys to visit, possibly empty
  int partial_slot;
  int page_begin;    // offset of the request's pages in kv_indices

  // The query token (relative to q_token0) and the query head of a row.
  __device__ __forceinline__ void row_position(int row, int& token, int& head) const {
    int head_in_group;
    group.divmod(row, token, head_in_group);
    head = kv_head * static_cast<int>(group.divisor) + head_in_group;
  }
  __device__ __forceinline__ int row_token(int row) const {
    int token, head;
    row_position(row, token, head);
    return token;
  }
  __device__ __forceinline__ int row_head(int row) const {
    int token, head;
    row_position(row, token, head);
    return head;
  }
  // Element offset of a row's vector in a (tokens, heads, head_dim) tensor such as q; rows
  // past `rows` get row 0's, so that their (zero-filled) copies keep an in-bounds address.
  __device__ __forceinline__ std::int64_t row_offset(int row, std::int64_t stride_token,
                                                     std::int64_t stride_head) const {
    int token = 0;
    int head = kv_head * static_cast<int>(group.divisor);
    if (row < rows) row_position(row, token, head);
    return (q_token0 + token) * stride_token + head * stride_head;
  }
};

__device__ __forceinline__ WorkItem load_work_item(const BatchAttentionParams& p,
                                                   const AttentionVariant& variant, int w) {
  const PlanView& plan = p.plan;
  WorkItem item;
  const int request = plan.work_request[w];
  item.kv_head = plan.work_kv_head[w];
  item.group = p.group_size;
  const int q_start = plan.work_q_start[w];
  const int q_len = plan.work_q_len[w];
  item.rows = q_len * static_cast<int>(item.group.divisor);
  item.partial_slot = plan.work_partial_slot[w];
  const int qo_begin = p.qo_indptr[request];
  const int q_len_request = p.qo_indptr[request + 1] - qo_begin;
  const int kv_len = p.seq_lens[request];
  item.q_token0 = qo_begin + q_start;
  item.q_pos_first = kv_len - q_len_request + q_start;
  item.q_pos_last = item.q_pos_first + q_len - 1;
  item.kv_lo = max(plan.work_kv_start[w], 0);
  item.kv_hi = min(plan.work_kv_end[w], kv_len);
  variant.clamp_kv_range(item.q_pos_first, item.q_pos_last, item.kv_lo, item.kv_hi);
  item.kv_hi = max(item.kv_hi, item.kv_lo);
  item.page_begin = p.kv_indptr[request];
  return item;
}

// Where one row of a work item's (or a merge item's) result goes: the final output, with the
// sinks folded into a scale, when partial_slot < 0, else the float32 partial state of the
// item's slot. Built once per row, so that the sink's exp/log run once per row, not per
// column pair.
template <typename T, int HEAD_DIM>
struct RowWriter {
  float* partial_row;  // the row of the partial slot; null when the output is final
  T* out_row;          // the row of o (final output)
  float scale;         // multiplies the normalized output (sink rescale; 1 without sinks)
  float* lse_dst;      // null: the LSE is not written
  float lse_value;     // natural log; with sinks for the final output, without for partials

  __device__ __forceinline__ RowWriter(const BatchAttentionParams& p, const WorkItem& item,
                                       int row, float lse_log2) {
    lse_value = lse_log2_to_ln(lse_log2);
    scale = 1.f;
    if (item.partial_slot >= 0) {
      const std::int64_t slot_row =
          static_cast<std::int64_t>(item.partial_slot) * kMaxTileRows + row;
      partial_row = p.partial_o + slot_row * HEAD_DIM;
      out_row = nullptr;
      lse_dst = p.partial_lse + slot_row;
      return;
    }
    int token_in_item, head;
    item.row_position(row, token_in_item, head);
    const std::int64_t token = item.q_token0 + token_in_item;
    if (p.variant.sinks != nullptr) {
      // The sink is one more logit in the denominator, with no value (variants.py).
      const float sink = p.variant.sinks[head];
      const float top = fmaxf(lse_value, sink);
      const float lse_with_sink = top + logf(expf(lse_value - top) + expf(sink - top));
      scale = expf(lse_value - lse_with_sink);
      lse_value = lse_with_sink;
    }
    partial_row = nullptr;
    out_row = static_cast<T*>(p.o) + token * p.o_stride_token + head * p.o_stride_head;
    lse_dst = p.lse != nullptr ? p.lse + token * p.lse_stride_token + head * p.lse_stride_head
                               : nullptr;
  }

  // Stores N consecutive columns from `col` of the normalized output o.
  template <int N>
  __device__ __forceinline__ void store(int col, const float (&o)[N]) const {
    static_assert(N % 2 == 0, "columns are stored in pairs");
    if (partial_row != nullptr) {
#pragma unroll
      for (int i = 0; i < N; i += 2) {
        *reinterpret_cast<float2*>(partial_row + col + i) = make_float2(o[i], o[i + 1]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < N; i += 2) {
        *reinterpret_cast<std::uint32_t*>(out_row + col + i) =
            mma::pack2<T>(o[i] * scale, o[i + 1] * scale);
      }
    }
  }

  __device__ __forceinline__ void store_lse() const {
    if (lse_dst != nullptr) *lse_dst = lse_value;
  }
};

}  // namespace fi_kernels
