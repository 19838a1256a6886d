"""BatchAttention rejects unsupported inputs with a ValueError that names the value and what
is supported, before anything is launched. Runs on the CPU: every check precedes the launch
(a CPU planner makes a BatchAttention whose run() then only reports the device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fi_backend.attention import BatchAttention, ctas_per_sm
from fi_backend.metadata.block_sparse import BlockSparseKV
from fi_backend.metadata.planner import Planner
from fi_backend.variants import AttentionVariant

NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE = 8, 2, 64, 16


def make_planner(head_dim=HEAD_DIM):
    return Planner(max_requests=4, max_batched_tokens=64, max_model_len=256,
                   num_qo_heads=NUM_QO_HEADS, num_kv_heads=NUM_KV_HEADS, head_dim=head_dim,
                   page_size=PAGE_SIZE, num_ctas=4, device="cpu")


def valid_inputs(dtype=torch.bfloat16):
    """A well-formed batch of two requests (CPU tensors)."""
    q = torch.randn(3, NUM_QO_HEADS, HEAD_DIM).to(dtype)
    cache = torch.randn(4, 2, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM).to(dtype)
    kv = BlockSparseKV(indptr=torch.tensor([0, 1, 3], dtype=torch.int32),
                       indices=torch.tensor([2, 0, 1], dtype=torch.int32),
                       last_page_len=torch.tensor([5, 4], dtype=torch.int32),
                       page_size=PAGE_SIZE)
    return dict(q=q, k_cache=cache[:, 0], v_cache=cache[:, 1], kv=kv,
                seq_lens=torch.tensor([5, 20], dtype=torch.int32),
                qo_indptr=torch.tensor([0, 1, 3], dtype=torch.int32),
                variant=AttentionVariant(causal=True))


@pytest.fixture
def attention():
    attention = BatchAttention(make_planner())
    attention.plan(np.array([0, 1, 3], dtype=np.int32), np.array([5, 20], dtype=np.int32),
                   AttentionVariant(causal=True))
    return attention


def run_with(attention, **changes):
    inputs = valid_inputs()
    inputs.update(changes)
    return attention.run(**inputs)


def test_valid_inputs_reach_the_device_check(attention):
    with pytest.raises(ValueError, match="only CUDA tensors are supported"):
        run_with(attention)


def test_unsupported_head_dim():
    with pytest.raises(ValueError, match="head_dim 80 is not supported; supported: 64, 128, 256"):
        BatchAttention(make_planner(head_dim=80))


def test_unsupported_dtype(attention):
    inputs = valid_inputs(torch.float32)
    with pytest.raises(ValueError, match="q has dtype float32; supported: float16, bfloat16"):
        attention.run(**inputs)
    with pytest.raises(ValueError, match="dtype float32 is not supported; supported: float16, "
                                         "bfloat16"):
        ctas_per_sm(torch.float32, 128)
    with pytest.raises(ValueError, match="head_dim 96 is not supported"):
        ctas_per_sm(torch.bfloat16, 96)


def test_kv_cache_dtype_must_match_q(attention):
    k = valid_inputs(torch.float16)["k_cache"]
    with pytest.raises(ValueError, match="k_cache has dtype float16; supported: bfloat16"):
        run_with(attention, k_cache=k)


def test_q_heads_and_head_dim_must_match_the_planner(attention):
    with pytest.raises(ValueError, match=r"q has shape \(3, 4, 64\).*num_qo_heads is 8, not 4"):
        run_with(attention, q=torch.randn(3, 4, HEAD_DIM).bfloat16())
    with pytest.raises(ValueError, match="head_dim is 64, not 128"):
        run_with(attention, q=torch.randn(3, NUM_QO_HEADS, 128).bfloat16())


def test_kv_cache_layout(attention):
    cache = valid_inputs()["k_cache"]
    with pytest.raises(ValueError, match="page_size is 16, not 8"):
        run_with(attention, k_cache=cache[:, :8])
    strided_last_dim = torch.randn(4, PAGE_SIZE, NUM_KV_HEADS, 2 * HEAD_DIM).bfloat16()[..., ::2]
    with pytest.raises(ValueError, match="k_cache has stride 2 along its last dimension"):
        run_with(attention, k_cache=strided_last_dim)
    misaligned = torch.randn(4 * PAGE_SIZE * NUM_KV_HEADS * HEAD_DIM + 1).bfloat16()[1:]
    with pytest.raises(ValueError, match="v_cache's data pointer .* is not 16-byte aligned"):
        run_with(attention, v_cache=misaligned.view(4, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM))


def test_index_tensors(attention):
    with pytest.raises(ValueError, match="seq_lens has dtype int64; supported: int32"):
        run_with(attention, seq_lens=torch.tensor([5, 20]))
    with pytest.raises(ValueError, match=r"qo_indptr has shape \(2,\)"):
        run_with(attention, qo_indptr=torch.tensor([0, 3], dtype=torch.int32))


def test_variant_tensors(attention):
    with pytest.raises(ValueError, match=r"variant.sinks has shape \(4,\).*num_qo_heads is 8"):
        run_with(attention, variant=AttentionVariant(sinks=torch.zeros(4)))
    with pytest.raises(ValueError, match="variant.alibi_slopes has dtype float64; supported: "
                                         "float32"):
        run_with(attention, variant=AttentionVariant(
            alibi_slopes=torch.zeros(NUM_QO_HEADS, dtype=torch.float64)))
    with pytest.raises(ValueError, match="variant.sinks must be a torch.Tensor; got list"):
        run_with(attention, variant=AttentionVariant(sinks=[0.0] * NUM_QO_HEADS))


def test_variant_must_match_the_plan(attention):
    with pytest.raises(ValueError, match=r"variant \(causal=False, window_left=-1\) differs from "
                                         r"the one planned \(causal=True, window_left=-1\)"):
        run_with(attention, variant=AttentionVariant(causal=False))


def test_run_needs_a_plan():
    with pytest.raises(ValueError, match="run\\(\\) needs a plan"):
        run_with(BatchAttention(make_planner()))


def test_out_must_match_q(attention):
    with pytest.raises(ValueError, match="out has dtype float16; supported: bfloat16"):
        run_with(attention, out=torch.empty(3, NUM_QO_HEADS, HEAD_DIM, dtype=torch.float16))


@pytest.mark.parametrize("launcher_name", ["batch_attention", "batch_attention_sm90"])
@pytest.mark.parametrize("num_qo_heads, num_kv_heads", [(32, 3), (8, 0), (8, -2)])
def test_launcher_refuses_heads_that_are_no_gqa_group(launcher_name, num_qo_heads,
                                                      num_kv_heads):
    # The launchers split rows by num_qo_heads / num_kv_heads (a divisor prepared at launch):
    # called directly with heads that form no group, they refuse before touching a pointer.
    from fi_backend import _C
    from fi_backend.metadata.plan_layout import PlanCapacity, PlanLayout

    if not hasattr(_C, launcher_name):
        pytest.skip(f"{launcher_name} is not built")
    layout = PlanLayout(PlanCapacity.for_engine(4, 64, 256, 8, 2, 4))
    with pytest.raises(ValueError, match=f"num_qo_heads {num_qo_heads} must be a positive "
                                         f"multiple of num_kv_heads {num_kv_heads}"):
        getattr(_C, launcher_name)(
            dtype="bfloat16", head_dim=64, q=0, q_strides=[0, 0], o=0, o_strides=[0, 0], lse=0,
            lse_strides=[0, 0], k=0, k_strides=[0, 0, 0], v=0, v_strides=[0, 0, 0],
            kv_indptr=0, kv_indices=0, page_size=16, qo_indptr=0, seq_lens=0,
            num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, partial_o=0, partial_lse=0,
            plan=0, plan_offsets=layout.offsets, num_ctas=4, num_merge_ctas=1, causal=True,
            window_left=-1, logits_soft_cap=0.0, sm_scale=1.0, alibi_slopes=0, sinks=0,
            stream=0)
