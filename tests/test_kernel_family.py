"""Choice of the attention kernel family (fi_backend.attention.resolve_kernel_family and the
`family` argument / FI_BACKEND_KERNEL_FAMILY of BatchAttention) and of the portable kernels'
shared-memory footprint (compact_smem_needed, FI_BACKEND_MAX_SMEM_PER_BLOCK), on the CPU."""

from __future__ import annotations

import pytest

from fi_backend import _C
from fi_backend import attention as attention_module
from fi_backend.attention import (KERNEL_FAMILY_ENV, MAX_SMEM_PER_BLOCK_ENV, BatchAttention,
                                  compact_smem_needed, resolve_kernel_family, select_kernel)
from fi_backend.metadata.planner import Planner

H100 = (9, 0)
A100 = (8, 0)
BLACKWELL = (10, 0)


def resolve(requested, capability=H100, built=True, supports=True):
    return resolve_kernel_family(requested, capability=capability, sm90_built=built,
                                 sm90_supports=supports)


def test_sm80_is_always_portable():
    for capability in (A100, H100, BLACKWELL):
        assert resolve("sm80", capability) == "sm80"


def test_sm90_runs_where_it_can_and_falls_back_for_uncovered_shapes():
    assert resolve("sm90") == "sm90"
    assert resolve("sm90", supports=False) == "sm80"


@pytest.mark.parametrize("capability", [A100, BLACKWELL, (8, 9)])
def test_sm90_on_another_device_is_an_error(capability):
    with pytest.raises(ValueError, match=r"needs a compute capability 9.0 device; this one is "
                                         rf"{capability[0]}\.{capability[1]}"):
        resolve("sm90", capability)


def test_sm90_without_sm90a_kernels_in_the_build_is_an_error():
    with pytest.raises(ValueError, match="rebuild with FI_CUDA_ARCHS containing 90a"):
        resolve("sm90", built=False, supports=False)


def test_auto_follows_the_sm90_switch(monkeypatch):
    monkeypatch.setattr(attention_module, "SM90_IN_AUTO", False)
    assert resolve("auto") == "sm80"
    monkeypatch.setattr(attention_module, "SM90_IN_AUTO", True)
    assert resolve("auto") == "sm90"
    assert resolve("auto", supports=False) == "sm80"
    assert resolve("auto", built=False, supports=False) == "sm80"
    assert resolve("auto", A100) == "sm80"
    assert resolve("auto", BLACKWELL) == "sm80"


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="kernel family 'sm100' is not supported; supported: "
                                         "auto, sm80, sm90"):
        resolve("sm100")


def make_planner():
    return Planner(max_requests=2, max_batched_tokens=8, max_model_len=64, num_qo_heads=4,
                   num_kv_heads=1, head_dim=128, page_size=16, num_ctas=2, device="cpu")


def test_batch_attention_takes_the_family_from_the_argument_or_the_environment(monkeypatch):
    monkeypatch.delenv(KERNEL_FAMILY_ENV, raising=False)
    assert BatchAttention(make_planner()).family == "auto"
    monkeypatch.setenv(KERNEL_FAMILY_ENV, "sm90")
    assert BatchAttention(make_planner()).family == "sm90"
    assert BatchAttention(make_planner(), family="sm80").family == "sm80"


def test_batch_attention_rejects_an_unknown_family(monkeypatch):
    with pytest.raises(ValueError, match="kernel family 'hopper' is not supported"):
        BatchAttention(make_planner(), family="hopper")
    monkeypatch.setenv(KERNEL_FAMILY_ENV, "fa3")
    with pytest.raises(ValueError, match="kernel family 'fa3' is not supported"):
        BatchAttention(make_planner())


def test_select_kernel_runs_every_plan_of_the_hopper_family_on_it():
    assert select_kernel("sm90", decode_plan=False) == "sm90"
    assert select_kernel("sm90", decode_plan=True) == "sm90"
    # Portable family: the decode-only kernel exactly for decode plans.
    assert select_kernel("sm80", decode_plan=True) == "sm80_decode"
    assert select_kernel("sm80", decode_plan=False) == "sm80"


def test_select_kernel_sends_k_and_v_with_different_strides_to_the_portable_family():
    # The Hopper producer computes one cache offset per key for K and V alike.
    assert select_kernel("sm90", decode_plan=False, kv_strides_shared=False) == "sm80"
    assert select_kernel("sm90", decode_plan=True, kv_strides_shared=False) == "sm80_decode"


# --- shared-memory footprint of the portable kernels ----------------------------------------

# Opt-in shared memory per block (bytes) by compute capability (CUDA programming guide).
SMEM_PER_BLOCK = {"sm_80": 163 * 1024, "sm_86/sm_89": 99 * 1024, "sm_90": 227 * 1024}


def footprint(dtype, head_dim, limit_bytes):
    full, compact = (_C.batch_attention_smem_bytes(dtype=dtype, head_dim=head_dim,
                                                   compact_smem=compact)
                     for compact in (False, True))
    return "compact" if compact_smem_needed(full, compact, limit_bytes) else "full"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_portable_footprints_fit_every_sm80_plus_gpu(dtype):
    # Full: Q + 3 decode stages of 64-key K and V tiles (head_dim 256: 8 + 192 KB); compact:
    # 2 stages (head_dim 128: the 64-key prefill tile's 96 KB), and head_dim 256 runs decode
    # items through its 2-stage prefill tile.
    bytes_of = {(hd, c): _C.batch_attention_smem_bytes(dtype=dtype, head_dim=hd, compact_smem=c)
                for hd in (64, 128, 256) for c in (False, True)}
    assert bytes_of == {(64, False): 64 * 1024, (64, True): 64 * 1024,
                        (128, False): 100 * 1024, (128, True): 96 * 1024,
                        (256, False): 200 * 1024, (256, True): 96 * 1024}
    assert {gpu: [footprint(dtype, hd, limit) for hd in (64, 128, 256)]
            for gpu, limit in SMEM_PER_BLOCK.items()} == {
        "sm_80": ["full", "full", "compact"],
        "sm_86/sm_89": ["full", "compact", "compact"],
        "sm_90": ["full", "full", "full"]}


def test_a_device_too_small_for_either_footprint_is_refused():
    with pytest.raises(ValueError, match="need 69632 bytes of shared memory per block; this "
                                         "device grants 65536"):
        compact_smem_needed(102400, 69632, 64 * 1024)


@pytest.mark.parametrize("value", ["0", "-5", "99KB"])
def test_the_shared_memory_limit_override_must_be_a_positive_byte_count(value, monkeypatch):
    monkeypatch.setenv(MAX_SMEM_PER_BLOCK_ENV, value)
    with pytest.raises(ValueError, match=f"{MAX_SMEM_PER_BLOCK_ENV}='{value}' is not supported"):
        attention_module._smem_limit_override()
    monkeypatch.setenv(MAX_SMEM_PER_BLOCK_ENV, "101376")
    assert attention_module._smem_limit_override() == 101376
