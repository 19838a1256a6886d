// The built-in attention variants as one functor whose flags are run-time values
// (semantics: fi_backend/variants.py). Logits leave the functor in base-2 units so that the
// online softmax can use exp2 (one MUFU instruction).
#pragma once

#include "attention/params.cuh"
#include "common/softmax_state.cuh"

namespace fi_kernels {

struct AttentionVariant {
  VariantParams params;

  // True when logits need more than one multiply (soft-cap or ALiBi bias).
  __device__ __forceinline__ bool transforms_logits() const {
    return params.logits_soft_cap > 0.f || params.alibi_slopes != nullptr;
  }

  __device__ __forceinline__ float alibi_slope(int qo_head) const {
    return params.alibi_slopes != nullptr ? params.alibi_slopes[qo_head] : 0.f;
  }

  // Base-2 logit of dot(q, k) for a key `kv_minus_q` positions after the query (<= 0 for
  // causal attention); `alibi_slope` is this row's slope (0 without ALiBi).
  __device__ __forceinline__ float logit_log2(float dot, float alibi_slope, int kv_minus_q) const {
    float s = dot * params.sm_scale;
    if (params.logits_soft_cap > 0.f) {
      s = params.logits_soft_cap * tanhf(s * (1.f / params.logits_soft_cap));
    }
    s += alibi_slope * static_cast<float>(kv_minus_q);
    return s * kLog2e;
  }

  // Plain scaled-dot logit, used when transforms_logits() is false.
  __device__ __forceinline__ float scaled_logit_log2(float dot) const {
    return dot * (params.sm_scale * kLog2e);
  }

  // Whether a query at q_pos sees the key at kv_pos (bounds of the KV chunk aside).
  __device__ __forceinline__ bool visible(int q_pos, int kv_pos) const {
    return (!params.causal || kv_pos <= q_pos) &&
           (params.window_left < 0 || kv_pos >= q_pos - params.window_left);
  }

  // The keys [first, last] (inclusive) of a chunk ending before kv_hi that a query at q_pos
  // sees; an empty range comes back as first > last. Computed once per row, so that the
  // per-element mask is two compares.
  __device__ __forceinline__ void visible_keys(int q_pos, int kv_hi, int& first,
                                               int& last) const {
    first = params.window_left >= 0 ? q_pos - params.window_left : -0x7fffffff - 1;
    last = params.causal ? min(kv_hi - 1, q_pos) : kv_hi - 1;
  }

  // The KV range [kv_lo, kv_hi) that queries at q_pos_first .. q_pos_last can see at all,
  // intersected with the chunk [kv_lo, kv_hi) given; may come back empty (kv_hi <= kv_lo).
  __device__ __forceinline__ void clamp_kv_range(int q_pos_first, int q_pos_last, int& kv_lo,
                                                 int& kv_hi) const {
    if (params.causal) kv_hi = min(kv_hi, q_pos_last + 1);
    if (params.window_left >= 0) kv_lo = max(kv_lo, q_pos_first - params.window_left);
  }

  // Whether every query of the tile sees every key of [tile_lo, tile_hi) (no per-element mask).
  __device__ __forceinline__ bool sees_whole_tile(int q_pos_first, int q_pos_last, int tile_lo,
                                                  int tile_hi) const {
    return (!params.causal || tile_hi - 1 <= q_pos_first) &&
           (params.window_left < 0 || tile_lo >= q_pos_last - params.window_left);
  }
};

}  // namespace fi_kernels
