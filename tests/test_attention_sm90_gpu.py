"""The Hopper (sm90a) attention family against the float32 oracle: the portable family's GPU
cases (tests/test_attention_gpu.py, imported, not copied) rerun with
FI_BACKEND_KERNEL_FAMILY=sm90, plus prefill shapes that cross many 128-key tiles.

Every case asserts that the sm90 launcher really ran, so a silent fallback to the portable
family cannot pass for a Hopper result. Same bounds as the portable tests: relative Frobenius error
<= 1e-2 (bfloat16) / 2e-3 (float16), LSE within 2e-3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import test_attention_gpu as portable
from fi_backend import _C
from fi_backend.attention import KERNEL_FAMILY_ENV, BatchAttention

pytestmark = pytest.mark.gpu


def _is_sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.fixture(autouse=True)
def sm90_launches(monkeypatch):
    """Selects the sm90 family and counts its launches."""
    if not _is_sm90():
        pytest.skip("needs a compute capability 9.0 GPU (H100/H200)")
    if not getattr(_C, "BATCH_ATTENTION_SM90_BUILT", False):
        pytest.fail("fi_backend._C has no sm90a kernels; build with FI_CUDA_ARCHS containing "
                    "90a")
    monkeypatch.setenv(KERNEL_FAMILY_ENV, "sm90")
    launches = []
    launcher = _C.batch_attention_sm90

    def counting_launcher(**kwargs):
        launches.append(kwargs["head_dim"])
        return launcher(**kwargs)

    monkeypatch.setattr(_C, "batch_attention_sm90", counting_launcher)
    return launches


def assert_sm90_ran(launches):
    assert launches, "the sm90 launcher did not run"


@pytest.mark.parametrize("plan_kind", ["planner", "hand"])
@pytest.mark.parametrize("variant", portable.VARIANTS)
def test_every_variant_mixed_batch(variant, plan_kind, sm90_launches):
    portable.test_every_variant_mixed_batch(variant, plan_kind)
    assert_sm90_ran(sm90_launches)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("plan_kind", ["planner", "hand"])
def test_dtypes_and_head_dims(dtype, head_dim, plan_kind, sm90_launches):
    portable.test_dtypes_and_head_dims(dtype, head_dim, plan_kind)
    assert sm90_launches and set(sm90_launches) == {head_dim}


@pytest.mark.parametrize("heads", [(8, 8), (32, 8), (64, 8), (16, 1), (32, 1), (64, 1)],
                         ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("variant", ["causal", "noncausal_sinks_window"])
def test_gqa_ratios_and_mqa(heads, variant, sm90_launches):
    portable.test_gqa_ratios_and_mqa(heads, variant)
    assert_sm90_ran(sm90_launches)


@pytest.mark.parametrize("page_size", [1, 16, 32, 64, 5])
@pytest.mark.parametrize("layout", ["vllm_packed", "paged_5d"])
def test_page_sizes_and_cache_layouts(page_size, layout, sm90_launches):
    portable.test_page_sizes_and_cache_layouts(page_size, layout)
    assert_sm90_ran(sm90_launches)


def test_skewed_decode_batch_splits(sm90_launches):
    portable.test_skewed_decode_batch_splits()
    assert_sm90_ran(sm90_launches)


def test_long_single_decode_and_prefill(sm90_launches):
    portable.test_long_single_decode_and_prefill()
    assert_sm90_ran(sm90_launches)


def test_padded_tokens_and_upper_bound_kv_lengths(sm90_launches):
    portable.test_padded_tokens_and_upper_bound_kv_lengths()
    assert_sm90_ran(sm90_launches)


def test_empty_kv_chunks_write_empty_partials(sm90_launches):
    portable.test_empty_kv_chunks_write_empty_partials()
    assert_sm90_ran(sm90_launches)


def test_rerun_with_new_plan_reuses_buffers(sm90_launches):
    portable.test_rerun_with_new_plan_reuses_buffers()
    assert_sm90_ran(sm90_launches)


@pytest.mark.parametrize("variant", ["causal", "noncausal", "window", "all"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_prefill_across_many_kv_tiles(variant, dtype, head_dim, sm90_launches):
    # Both consumer warpgroups busy (128-row items), causal diagonals inside the KV tiles,
    # several items per CTA, and a KV length that is no multiple of the tile.
    q_lens = [600, 257, 64, 1]
    kv_lens = [1400, 257, 3000, 5000]
    for plan_kind in ("planner", "hand"):
        portable.check_batch(q_lens, kv_lens, head_dim=head_dim, dtype=dtype, variant=variant,
                             plan_kind=plan_kind, seed=21)
    assert_sm90_ran(sm90_launches)


def test_family_argument_overrides_the_environment(sm90_launches):
    planner = portable.make_planner(32, 8, 128, 16, torch.bfloat16, [1], [64])
    assert BatchAttention(planner).kernel_family(torch.bfloat16) == "sm90"
    assert BatchAttention(planner, family="sm80").kernel_family(torch.bfloat16) == "sm80"


def test_k_and_v_with_different_strides_run_on_the_portable_family(sm90_launches):
    # The Hopper producer reads K and V with one set of page and token strides: an explicit
    # "sm90" request with a V cache laid out differently is refused, "auto" runs it on the
    # portable family, still exactly.
    q_lens, kv_lens = [70, 1], [300, 900]
    batch = portable.make_batch(q_lens, kv_lens, 32, 8, 128, 16, torch.bfloat16, "paged_5d",
                                seed=5)
    k = batch.k_cache
    num_pages, page_size, num_kv_heads, head_dim = k.shape
    v = torch.full((num_pages, page_size, num_kv_heads + 1, head_dim), math.nan, dtype=k.dtype,
                   device="cuda")[:, :, :num_kv_heads]
    v.copy_(batch.v_cache)
    batch.v_cache = v
    batch.kv = batch.kv.with_cache(k, v)
    variant = portable.make_variant("causal", 32, 6)
    planner = portable.make_planner(32, 8, 128, 16, torch.bfloat16, q_lens, kv_lens)

    explicit = BatchAttention(planner)  # FI_BACKEND_KERNEL_FAMILY=sm90 (fixture)
    plan = explicit.plan(batch.qo_indptr_host, batch.kv_lens_host, variant)
    with pytest.raises(ValueError, match="same page and token strides"):
        explicit.run(batch.q, k, v, batch.kv, batch.seq_lens, batch.qo_indptr, variant,
                     plan=plan)

    auto = BatchAttention(planner, family="auto")
    plan = auto.plan(batch.qo_indptr_host, batch.kv_lens_host, variant)
    portable.run_and_check(batch, variant, auto, plan, torch.bfloat16)
    assert not sm90_launches


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("variant", ["causal", "sinks"])
def test_out_rows_that_allow_no_16_byte_stores(head_dim, variant, sm90_launches):
    # Final rows normally leave in 16-byte stores (a quad transpose of the O accumulator); an
    # out whose head stride (head_dim + 2 elements) rules those out takes the 4-byte pair
    # stores, and neither path touches the columns past head_dim.
    q_lens, kv_lens = [1, 3, 70], [50, 300, 70]
    batch = portable.make_batch(q_lens, kv_lens, 32, 8, head_dim, 16, torch.bfloat16,
                                "vllm_packed", 11, 0)
    var = portable.make_variant(variant, 32, 12)
    attention = BatchAttention(portable.make_planner(32, 8, head_dim, 16, torch.bfloat16, q_lens,
                                                     kv_lens, 0))
    plan = attention.plan(batch.qo_indptr_host, np.asarray(batch.kv_lens_host, np.int32), var)
    padded = torch.full((batch.q.shape[0], 32, head_dim + 2), math.nan, dtype=torch.bfloat16,
                        device="cuda")
    o = attention.run(batch.q, batch.k_cache, batch.v_cache, batch.kv, batch.seq_lens,
                      batch.qo_indptr, var, out=padded[..., :head_dim], plan=plan)
    torch.cuda.synchronize()
    assert_sm90_ran(sm90_launches)
    tokens = batch.num_tokens
    expected_o, _ = portable.reference.batch_attention(batch.q[:tokens], batch.qo_indptr,
                                                       batch.kv, var)
    error = portable.relative_error(o[:tokens], expected_o)
    assert error <= portable.RELATIVE_ERROR_BOUND[torch.bfloat16], f"{error:.2e}"
    assert padded[..., head_dim:].isnan().all()
