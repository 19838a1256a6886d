"""Merging partial (output, LSE) states of KV chunks equals attention over their union."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fi_backend import reference
from fi_backend.variants import AttentionVariant

HEAD_DIM = 8
NUM_QO_HEADS = 4


@st.composite
def chunked_problems(draw):
    q_len = draw(st.integers(1, 6))
    kv_len = q_len + draw(st.integers(0, 12))
    cuts = sorted(draw(st.lists(st.integers(0, kv_len), min_size=1, max_size=3)))
    variant = AttentionVariant(
        causal=draw(st.booleans()),
        window_left=draw(st.sampled_from([-1, 0, 1, 4])),
        logits_soft_cap=draw(st.sampled_from([0.0, 3.0])),
        alibi_slopes=draw(st.sampled_from([None, torch.tensor([0.5, 0.25, 0.1, 0.0])])),
        sinks=draw(st.sampled_from([None, torch.tensor([1.0, -2.0, 0.0, 4.0])])),
    )
    return dict(q_len=q_len, kv_len=kv_len, bounds=[0, *cuts, kv_len], variant=variant,
                num_kv_heads=draw(st.sampled_from([1, 2, 4])),
                use_mask=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=150, deadline=None)
@given(chunked_problems())
def test_merged_chunks_equal_attention_over_the_union(problem):
    gen = torch.Generator().manual_seed(problem["seed"])
    q_len, kv_len, variant = problem["q_len"], problem["kv_len"], problem["variant"]
    q = torch.randn(q_len, NUM_QO_HEADS, HEAD_DIM, generator=gen)
    k = torch.randn(kv_len, problem["num_kv_heads"], HEAD_DIM, generator=gen)
    v = torch.randn(kv_len, problem["num_kv_heads"], HEAD_DIM, generator=gen)
    mask = torch.rand(q_len, kv_len, generator=gen) < 0.7 if problem["use_mask"] else None
    q_pos_start = kv_len - q_len
    o_full, lse_full = reference.attention_dense(q, k, v, variant, q_pos_start, custom_mask=mask)

    partial_o, partial_lse = [], []
    for begin, end in zip(problem["bounds"], problem["bounds"][1:]):
        o, lse = reference.attention_dense(
            q, k[begin:end], v[begin:end], variant, q_pos_start, kv_pos_start=begin,
            custom_mask=None if mask is None else mask[:, begin:end], apply_sinks=False)
        partial_o.append(o)
        partial_lse.append(lse)
    if len(partial_o) == 2:
        o, lse = reference.merge_state_pair(partial_o[0], partial_lse[0],
                                            partial_o[1], partial_lse[1])
    else:
        o, lse = reference.merge_states(torch.stack(partial_o, 1), torch.stack(partial_lse, 1))
    if variant.sinks is not None:
        o, lse = reference.apply_sinks(o, lse, variant.sinks)
    torch.testing.assert_close(o, o_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_full, atol=1e-5, rtol=1e-5)


@settings(max_examples=100, deadline=None)
@given(num_rows=st.integers(1, 5), num_states=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
       empty_fraction=st.sampled_from([0.0, 0.3, 1.0]))
def test_merge_states_equals_float64_formula(num_rows, num_states, seed, empty_fraction):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(num_rows, num_states, 2, HEAD_DIM, generator=gen)
    s = torch.randn(num_rows, num_states, 2, generator=gen) * 20
    s[torch.rand(s.shape, generator=gen) < empty_fraction] = -math.inf
    o, lse = reference.merge_states(v, s)
    for n in range(num_rows):
        for h in range(2):
            logits = [float(x) for x in s[n, :, h] if x != -math.inf]
            if not logits:
                assert lse[n, h] == -math.inf and torch.all(o[n, h] == 0)
                continue
            m = max(logits)
            expected_lse = m + math.log(sum(math.exp(x - m) for x in logits))
            expected_o = sum(math.exp(float(s[n, i, h]) - expected_lse) * v[n, i, h].double()
                             for i in range(num_states))
            assert math.isclose(float(lse[n, h]), expected_lse, rel_tol=1e-6, abs_tol=1e-5)
            torch.testing.assert_close(o[n, h].double(), expected_o, atol=1e-5, rtol=1e-5)
