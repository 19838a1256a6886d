// The online-softmax state of one query row over a subset of keys, and the merge of two
// such states (Milakov & Gimelshein 2018; FlashAttention-2 section 3.1.1; FlashInfer paper
// section 2.2, "attention states"). The attention kernels' split-KV merge and the
// merge_states kernel both go through SoftmaxState::merge_*.
//
// Units: logits are in base 2 inside kernels (exp2 is one MUFU instruction); the API's LSE
// is natural log. Convert at the kernel boundary with lse_ln_to_log2 / lse_log2_to_ln.
#pragma once

namespace fi_kernels {

constexpr float kLog2e = 1.4426950408889634f;  // log2(e): natural-log units -> base 2
constexpr float kLn2 = 0.6931471805599453f;    // ln(2):   base 2 -> natural-log units

__device__ __forceinline__ float lse_ln_to_log2(float lse_ln) { return lse_ln * kLog2e; }
__device__ __forceinline__ float lse_log2_to_ln(float lse_log2) { return lse_log2 * kLn2; }

// For a set of keys J with base-2 logits x_j and values v_j (N columns of v per thread):
//   m        = max_j x_j                      (-inf for the empty set)
//   d        = sum_j 2^(x_j - m)              (0 for the empty set)
//   o_acc[i] = sum_j 2^(x_j - m) * v_j[i]     (0 for the empty set)
// so the softmax output is o_acc / d and the base-2 log-sum-exp is m + log2(d).
// Keeping m and d apart (instead of one LSE) lets merges rescale without a log per step.
template <int N>
struct SoftmaxState {
  float o_acc[N];
  float m;
  float d;

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int i = 0; i < N; ++i) o_acc[i] = 0.f;
    m = -__int_as_float(0x7f800000);  // -inf
    d = 0.f;
  }

  // Adds the keys of another state given as (o_acc, m, d). An empty other state (m = -inf)
  // is skipped outright: its o_acc may be anything (an empty KV chunk's output is never
  // read), and 2^(-inf - -inf) would be NaN.
  __device__ __forceinline__ void merge(const float (&other_o_acc)[N], float other_m,
                                        float other_d) {
    if (other_m == -__int_as_float(0x7f800000)) return;
    const float m_new = fmaxf(m, other_m);
    const float scale_self = exp2f(m - m_new);  // 0 while this state is still empty
    const float scale_other = exp2f(other_m - m_new);
    d = d * scale_self + other_d * scale_other;
#pragma unroll
    for (int i = 0; i < N; ++i) o_acc[i] = o_acc[i] * scale_self + other_o_acc[i] * scale_other;
    m = m_new;
  }

  __device__ __forceinline__ void merge(const SoftmaxState& other) {
    merge(other.o_acc, other.m, other.d);
  }

  // Adds a finished partial result: its normalized output o = o_acc / d and its base-2
  // LSE, which is the state (o_acc = o, m = lse, d = 1). lse = -inf marks an empty partial.
  __device__ __forceinline__ void merge_normalized(const float (&o)[N], float lse_log2) {
    merge(o, lse_log2, 1.f);
  }

  // Base-2 log-sum-exp of the keys seen so far; -inf when there were none.
  __device__ __forceinline__ float lse_log2() const {
    return d > 0.f ? m + log2f(d) : -__int_as_float(0x7f800000);
  }

  // The softmax-weighted output o_acc / d; 0 when no key was seen.
  __device__ __forceinline__ void normalized_output(float (&o)[N]) const {
    const float inv_d = d > 0.f ? 1.f / d : 0.f;
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = o_acc[i] * inv_d;
  }
};

}  // namespace fi_kernels
