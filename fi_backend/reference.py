"""Float32 attention oracle: the definition every kernel is tested against.

Semantics are exactly those of `fi_backend.variants` (positions, visibility, soft-cap, ALiBi,
sinks). Everything is computed in float32 on whatever device the inputs live on, one request
at a time with dense torch ops; it is meant to be obviously right, not fast.

LSE convention: natural logarithm (base e) of the softmax denominator, in the units of the
scaled logits `s`. A row that sees no key (and has no sink) has output 0 and LSE -inf.

Shapes: `q [num_q, num_qo_heads, head_dim]`, `k, v [num_kv, num_kv_heads, head_dim]`; query
head `h` reads KV head `h // (num_qo_heads // num_kv_heads)` (MHA, GQA and MQA alike).
"""

from __future__ import annotations

import torch

from fi_backend.metadata.block_sparse import BlockSparseKV
from fi_backend.variants import AttentionVariant

__all__ = [
    "attention_dense",
    "batch_attention",
    "cascade_attention",
    "gather_request_kv",
    "merge_states",
    "merge_state_pair",
    "apply_sinks",
]


def _finite_or_zero(lse: torch.Tensor) -> torch.Tensor:
    """LSE with -inf replaced by 0, so that `exp(s - lse)` of an all -inf row is 0, not NaN."""
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def _per_head(param, num_qo_heads: int, name: str, device: torch.device) -> torch.Tensor:
    values = torch.as_tensor(param, dtype=torch.float32, device=device).reshape(-1)
    if values.numel() != num_qo_heads:
        raise ValueError(
            f"{name} has {values.numel()} values; it needs one per query head ({num_qo_heads})")
    return values


def apply_sinks(o: torch.Tensor, lse: torch.Tensor, sinks) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale a finished state `(o [..., H, D], lse [..., H])` as if the logit `sinks[h]` (a
    key without a value) had been in the softmax denominator."""
    sinks = _per_head(sinks, lse.shape[-1], "sinks", lse.device)
    lse = lse.float()
    new_lse = torch.logaddexp(lse, sinks.expand_as(lse))
    return o.float() * torch.exp(lse - new_lse).unsqueeze(-1), new_lse


# attention_dense's keyword argument `apply_sinks` shadows the function inside it.
_apply_sinks = apply_sinks


def merge_states(v: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `S` partial states per row: `v [N, S, H, D]` (each normalized over its own keys),
    `s [N, S, H]` their LSEs -> `(o [N, H, D], lse [N, H])` over the union of the keys.

    A partial state with LSE -inf holds no keys and contributes nothing."""
    if v.dim() != 4 or s.dim() != 3 or v.shape[:3] != s.shape:
        raise ValueError(
            f"merge_states needs v [N, S, H, D] and s [N, S, H]; got v {tuple(v.shape)}, "
            f"s {tuple(s.shape)}")
    s = s.float()
    lse = torch.logsumexp(s, dim=1)
    weight = torch.exp(s - _finite_or_zero(lse).unsqueeze(1))
    o = (weight.unsqueeze(-1) * v.float()).sum(dim=1)
    return o, lse


def merge_state_pair(va: torch.Tensor, sa: torch.Tensor, vb: torch.Tensor, sb: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial states `(va [N, H, D], sa [N, H])` and `(vb, sb)`."""
    return merge_states(torch.stack([va, vb], dim=1), torch.stack([sa, sb], dim=1))


def _visible_keys(variant: AttentionVariant, q_pos: torch.Tensor, kv_pos: torch.Tensor,
                  custom_mask: torch.Tensor | None) -> torch.Tensor:
    """bool [num_q, num_kv]: which key each query may attend to."""
    visible = torch.ones(q_pos.numel(), kv_pos.numel(), dtype=torch.bool, device=q_pos.device)
    delta = kv_pos.unsqueeze(0) - q_pos.unsqueeze(1)
    if variant.causal:
        visible &= delta <= 0
    if variant.has_window:
        visible &= delta >= -variant.window_left
    if custom_mask is not None:
        visible &= custom_mask.to(device=q_pos.device, dtype=torch.bool)
    return visible


def attention_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: AttentionVariant,
                    q_pos_start: int, kv_pos_start: int = 0,
                    custom_mask: torch.Tensor | None = None, apply_sinks: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of queries at absolute positions `q_pos_start + i` over keys at absolute
    positions `kv_pos_start + j` -> `(o float32 [Lq, Hq, D], lse float32 [Lq, Hq])`.

    `custom_mask` is bool `[Lq, Lk]` (True = visible), indexed by this chunk's rows/columns.
    With `apply_sinks=False` the state is partial (for a later merge that applies sinks)."""
    num_q, num_qo_heads, head_dim = q.shape
    num_kv, num_kv_heads = k.shape[0], k.shape[1]
    if k.shape != v.shape or k.dim() != 3 or k.shape[2] != head_dim:
        raise ValueError(
            f"k and v must both be [Lk, Hkv, {head_dim}]; got k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}")
    if num_kv_heads == 0 or num_qo_heads % num_kv_heads != 0:
        raise ValueError(
            f"num_qo_heads {num_qo_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    if custom_mask is not None and tuple(custom_mask.shape) != (num_q, num_kv):
        raise ValueError(
            f"custom_mask has shape {tuple(custom_mask.shape)}; it must be [Lq, Lk] = "
            f"[{num_q}, {num_kv}]")
    device = q.device
    group_size = num_qo_heads // num_kv_heads

    # [H, Lq, D] x [H, D, Lk]: KV heads repeated so that query head h meets KV head h // group.
    q_h = q.float().transpose(0, 1)
    k_h = k.float().repeat_interleave(group_size, dim=1).transpose(0, 1)
    v_h = v.float().repeat_interleave(group_size, dim=1).transpose(0, 1)
    s = torch.matmul(q_h, k_h.transpose(1, 2)) * variant.scale_for(head_dim)

    if variant.logits_soft_cap > 0:
        s = variant.logits_soft_cap * torch.tanh(s / variant.logits_soft_cap)
    q_pos = torch.arange(num_q, device=device) + q_pos_start
    kv_pos = torch.arange(num_kv, device=device) + kv_pos_start
    if variant.alibi_slopes is not None:
        slopes = _per_head(variant.alibi_slopes, num_qo_heads, "alibi_slopes", device)
        distance = (kv_pos.unsqueeze(0) - q_pos.unsqueeze(1)).float()
        s = s + slopes.view(-1, 1, 1) * distance
    s = s.masked_fill(~_visible_keys(variant, q_pos, kv_pos, custom_mask), float("-inf"))

    lse = torch.logsumexp(s, dim=-1) if num_kv > 0 else s.new_full(
        (num_qo_heads, num_q), float("-inf"))
    p = torch.exp(s - _finite_or_zero(lse).unsqueeze(-1))
    o = torch.matmul(p, v_h).transpose(0, 1).contiguous()
    lse = lse.transpose(0, 1).contiguous()
    if apply_sinks and variant.sinks is not None:
        o, lse = _apply_sinks(o, lse, variant.sinks)
    return o, lse


def gather_request_kv(kv: BlockSparseKV, request: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values of one request, `[kv_len, num_kv_heads, head_dim]` each, in order."""
    if kv.k_cache is None or kv.v_cache is None:
        raise ValueError("BlockSparseKV has no k_cache/v_cache views; attach them with with_cache()")
    begin, end = (int(x) for x in kv.indptr[request:request + 2].tolist())
    kv_len = int(kv.kv_len_per_req[request])
    pages = kv.indices[begin:end].long().to(kv.k_cache.device)
    num_kv_heads, head_dim = kv.k_cache.shape[2], kv.k_cache.shape[3]
    k = kv.k_cache[pages].reshape(-1, num_kv_heads, head_dim)[:kv_len]
    v = kv.v_cache[pages].reshape(-1, num_kv_heads, head_dim)[:kv_len]
    return k, v


def _request_bounds(qo_indptr: torch.Tensor, kv_len_per_req: torch.Tensor
                    ) -> list[tuple[int, int, int]]:
    """(q_begin, q_end, kv_len) per request, checked: each request has q_len <= kv_len."""
    qo = [int(x) for x in qo_indptr.tolist()]
    kv_lens = [int(x) for x in kv_len_per_req.tolist()]
    if len(qo) != len(kv_lens) + 1:
        raise ValueError(
            f"qo_indptr has {len(qo)} entries; it needs batch_size + 1 = {len(kv_lens) + 1}")
    bounds = []
    for b, kv_len in enumerate(kv_lens):
        q_len = qo[b + 1] - qo[b]
        if not 0 <= q_len <= kv_len:
            raise ValueError(
                f"request {b} has q_len {q_len} and kv_len {kv_len}; 0 <= q_len <= kv_len is "
                "required (the queries are the last q_len tokens of the KV sequence)")
        bounds.append((qo[b], qo[b + 1], kv_len))
    return bounds


def _check_masks(custom_masks, batch_size: int) -> list:
    if custom_masks is None:
        return [None] * batch_size
    if len(custom_masks) != batch_size:
        raise ValueError(
            f"custom_masks has {len(custom_masks)} entries; it needs one (or None) per request "
            f"({batch_size})")
    return list(custom_masks)


def batch_attention(q: torch.Tensor, qo_indptr: torch.Tensor, kv: BlockSparseKV,
                    variant: AttentionVariant, custom_masks: list | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged batch attention over a paged cache -> `(o float32 [T, Hq, D], lse float32 [T, Hq])`.

    Request `b` owns query rows `qo_indptr[b]:qo_indptr[b+1]` and the first `kv_len_b` tokens
    of its pages; its query `i` sits at position `kv_len_b - q_len_b + i`. `custom_masks[b]` is
    bool `[q_len_b, kv_len_b]` or None."""
    bounds = _request_bounds(qo_indptr, kv.kv_len_per_req)
    masks = _check_masks(custom_masks, len(bounds))
    o = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device)
    for b, (q_begin, q_end, kv_len) in enumerate(bounds):
        if q_end == q_begin:
            continue
        k_b, v_b = gather_request_kv(kv, b)
        o[q_begin:q_end], lse[q_begin:q_end] = attention_dense(
            q[q_begin:q_end], k_b.to(q.device), v_b.to(q.device), variant,
            q_pos_start=kv_len - (q_end - q_begin), custom_mask=masks[b])
    return o, lse


def cascade_attention(q: torch.Tensor, qo_indptr: torch.Tensor, prefix: BlockSparseKV,
                      suffix: BlockSparseKV, variant: AttentionVariant
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-level attention: every request attends to the shared `prefix` (one BSR row, keys at
    positions `0 .. prefix_len-1`) and to its own row of `suffix` (keys from `prefix_len` on);
    the two partial states are merged by LSE and sinks applied once. Equals `batch_attention`
    over the concatenated pages; queries may reach back into the prefix (q_len <= prefix_len +
    suffix_len)."""
    (prefix_len,) = (int(x) for x in prefix.kv_len_per_req.tolist())
    k_prefix, v_prefix = gather_request_kv(prefix, 0)
    bounds = _request_bounds(qo_indptr, suffix.kv_len_per_req + prefix_len)
    o = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device)
    for b, (q_begin, q_end, kv_len) in enumerate(bounds):
        if q_end == q_begin:
            continue
        q_b = q[q_begin:q_end]
        q_pos_start = kv_len - (q_end - q_begin)
        k_b, v_b = gather_request_kv(suffix, b)
        o_prefix, lse_prefix = attention_dense(
            q_b, k_prefix.to(q.device), v_prefix.to(q.device), variant, q_pos_start,
            kv_pos_start=0, apply_sinks=False)
        o_suffix, lse_suffix = attention_dense(
            q_b, k_b.to(q.device), v_b.to(q.device), variant, q_pos_start,
            kv_pos_start=prefix_len, apply_sinks=False)
        o_b, lse_b = merge_state_pair(o_prefix, lse_prefix, o_suffix, lse_suffix)
        if variant.sinks is not None:
            o_b, lse_b = apply_sinks(o_b, lse_b, variant.sinks)
        o[q_begin:q_end], lse[q_begin:q_end] = o_b, lse_b
    return o, lse


def append_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
              v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Oracle of ops.append_kv, in place: token t's K/V row goes to slot slot_mapping[t]
    (page = slot // page_size, offset = slot % page_size); -1 and slots outside the cache are
    skipped; rows of key/value past len(slot_mapping) are ignored."""
    num_pages, page_size = k_cache.shape[:2]
    slots = slot_mapping.to(torch.int64)
    tokens = torch.nonzero((slots >= 0) & (slots < num_pages * page_size)).flatten()
    page, offset = slots[tokens] // page_size, slots[tokens] % page_size
    k_cache[page, offset] = key[tokens].to(k_cache.dtype)
    v_cache[page, offset] = value[tokens].to(v_cache.dtype)
