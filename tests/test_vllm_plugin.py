"""fi_backend's vLLM plugin against the real vllm 0.26 package (no mocks of vLLM's logic).

What stands in for hardware on a machine without a GPU:
- vLLM's front end (EngineArgs -> VllmConfig) runs on vLLM's own CPU platform;
- the backend selection runs vLLM's CUDA platform code (`CudaPlatform.get_attn_backend_cls`)
  on an H100 "on paper": the platform class with its device-capability query answered, and,
  where no CUDA driver exists, vLLM's compiled op library (which needs libcuda to load) left
  out of the import of platforms/cuda.py. vLLM's selection logic itself runs unchanged.
- the metadata builder plans on a CPU device; the plan is executed by the CPU executor and
  compared with the float32 oracle.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import math
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("vllm")  # guard only: CI installs vllm, so these tests run there

import numpy as np  # noqa: E402
import torch  # noqa: E402
import vllm.platforms  # noqa: E402

if vllm.platforms.current_platform.device_type == "":
    # No GPU here: vLLM's front end runs on its CPU platform (set before vLLM's config
    # modules bind `current_platform` at import).
    from vllm.platforms.cpu import CpuPlatform

    vllm.platforms.current_platform = CpuPlatform()

import vllm.envs  # noqa: E402
from vllm.config import VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.config.attention import AttentionConfig  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.platforms.interface import DeviceCapability  # noqa: E402
from vllm.v1.attention.backend import (  # noqa: E402
    AttentionCGSupport,
    AttentionType,
    CommonAttentionMetadata,
)
from vllm.v1.attention.backends.registry import (  # noqa: E402
    _ATTN_OVERRIDES,
    AttentionBackendEnum,
)
from vllm.v1.attention.selector import _cached_get_attn_backend, get_attn_backend  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec  # noqa: E402

import fi_backend.vllm  # noqa: E402
from fi_backend import reference  # noqa: E402
from fi_backend.metadata.executor import execute_plan_reference  # noqa: E402
from fi_backend.variants import AttentionVariant  # noqa: E402
from fi_backend.vllm import selection  # noqa: E402
from fi_backend.vllm.backend import FIBackend  # noqa: E402
from fi_backend.vllm.builder import (  # noqa: E402
    CASCADE_ENV,
    CASCADE_WORKSPACE_BYTES,
    NO_WINDOW,
    SHARED_PREFIX_ENV,
    FIMetadataBuilder,
    cascade_live_capacity,
    cascade_prefix_len,
)
from fi_backend.vllm.impl import FIAttentionImpl  # noqa: E402
from fi_backend.vllm.plugin import BACKEND_CLASS_PATH, register  # noqa: E402

CONFIGS = Path(fi_backend.vllm.__file__).parent / "configs"
LLAMA = CONFIGS / "llama3_8b"  # 32 query heads, 8 KV heads, head_dim 128
NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128


# --------------------------------------------------------------------------------------
# Platforms


def _cuda_platform_base():
    """vLLM's NonNvmlCudaPlatform; imported without vLLM's op library where no driver is."""
    try:
        importlib.import_module("vllm._C_stable_libtorch")
        return importlib.import_module("vllm.platforms.cuda").NonNvmlCudaPlatform
    except ImportError:
        pass
    sys.modules["vllm._C_stable_libtorch"] = types.ModuleType("vllm._C_stable_libtorch")
    try:
        return importlib.import_module("vllm.platforms.cuda").NonNvmlCudaPlatform
    finally:
        del sys.modules["vllm._C_stable_libtorch"]


def gpu_on_paper(major: int, minor: int):
    class GpuOnPaper(_cuda_platform_base()):
        @classmethod
        def get_device_capability(cls, device_id: int = 0) -> DeviceCapability:
            return DeviceCapability(major, minor)

    return GpuOnPaper()


@pytest.fixture
def on_gpu(monkeypatch):
    """Run vLLM's CUDA selection as on a GPU of the given compute capability."""

    def use(major: int = 9, minor: int = 0):
        platform = gpu_on_paper(major, minor)
        monkeypatch.setattr(vllm.platforms, "_current_platform", platform)
        monkeypatch.setattr(vllm.platforms, "current_platform", platform)
        _cached_get_attn_backend.cache_clear()

    yield use
    _cached_get_attn_backend.cache_clear()


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """fi_backend registered as vLLM registers it; the env variable unset unless a test sets it."""
    monkeypatch.delenv(selection.ENV_VAR, raising=False)
    register()


@pytest.fixture
def fi_log():
    """Lines fi_backend logs through vLLM's logger tree."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("vllm.fi_backend")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def engine_config(**engine_kwargs) -> VllmConfig:
    """The VllmConfig vLLM's front end makes (as `LLM(...)` and `vllm serve` do)."""
    return EngineArgs(model=str(LLAMA), load_format="dummy", skip_tokenizer_init=True,
                      max_model_len=2048, max_num_seqs=64,
                      **engine_kwargs).create_engine_config()


# --------------------------------------------------------------------------------------
# 1. Registration


def test_entry_point_is_installed_and_resolves_to_register():
    try:
        importlib.metadata.distribution("fi_backend")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("fi_backend is not installed, so vLLM cannot find its entry point: run "
                    "`pip install -e .` (README)")
    points = [p for p in importlib.metadata.entry_points(group="vllm.general_plugins")
              if p.name == "fi_backend"]
    assert [p.value for p in points] == ["fi_backend.vllm.plugin:register"]
    assert points[0].load() is register


def test_register_is_idempotent():
    from vllm.engine.arg_utils import EngineArgs as FreshEngineArgs

    register()
    hook = FreshEngineArgs.create_engine_config
    register()
    assert FreshEngineArgs.create_engine_config is hook
    assert not getattr(hook.__wrapped__, "_fi_backend_env_selection", False)
    assert AttentionBackendEnum.CUSTOM.get_path() == BACKEND_CLASS_PATH
    assert AttentionBackendEnum.CUSTOM.get_class() is FIBackend
    assert FIBackend.get_name() == "CUSTOM"  # vLLM 0.26: the one third-party slot
    assert selection.ENV_VAR in vllm.envs.environment_variables


def test_register_leaves_a_custom_slot_held_by_another_plugin(monkeypatch):
    monkeypatch.setitem(_ATTN_OVERRIDES, AttentionBackendEnum.CUSTOM, "other_plugin.Backend")
    register()
    assert AttentionBackendEnum.CUSTOM.get_path() == "other_plugin.Backend"


# --------------------------------------------------------------------------------------
# 2. Selection


def test_env_variable_alone_selects_fi_backend(monkeypatch, on_gpu, fi_log):
    monkeypatch.setenv(selection.ENV_VAR, "FI_BACKEND")
    config = engine_config()
    assert config.attention_config.backend is AttentionBackendEnum.CUSTOM
    assert any("FI_BACKEND selects attention backend CUSTOM" in line for line in fi_log)

    on_gpu(9, 0)
    with set_current_vllm_config(config):
        assert get_attn_backend(HEAD_DIM, torch.bfloat16, "auto") is FIBackend


@pytest.mark.parametrize("explicit", [{"attention_backend": "FLASH_ATTN"},
                                      {"attention_config": {"backend": "TRITON_ATTN"}}])
def test_explicit_choice_wins_over_env_variable(monkeypatch, fi_log, explicit):
    monkeypatch.setenv(selection.ENV_VAR, "CUSTOM")
    config = engine_config(**explicit)
    chosen = config.attention_config.backend
    assert chosen in (AttentionBackendEnum.FLASH_ATTN, AttentionBackendEnum.TRITON_ATTN)
    assert any(f"{chosen.name}, chosen explicitly, is used" in line for line in fi_log)


def test_flag_selects_fi_backend(on_gpu):
    config = engine_config(attention_backend="CUSTOM")  # LLM(attention_backend="CUSTOM")
    assert config.attention_config.backend is AttentionBackendEnum.CUSTOM
    on_gpu(8, 0)
    with set_current_vllm_config(config):
        assert get_attn_backend(HEAD_DIM, torch.float16, "auto") is FIBackend


def test_other_env_values_are_left_to_vllm(monkeypatch):
    monkeypatch.setenv(selection.ENV_VAR, "FLASH_ATTN")
    assert selection.backend_requested_by_env() is None


# --------------------------------------------------------------------------------------
# 3. Capabilities through vLLM's selector


def select(**selector_args):
    with set_current_vllm_config(VllmConfig(attention_config=AttentionConfig(backend="CUSTOM"))):
        return get_attn_backend(**selector_args)


@pytest.mark.parametrize("head_size", [64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_selector_accepts_supported_configurations(on_gpu, head_size, dtype):
    on_gpu(9, 0)
    assert select(head_size=head_size, dtype=dtype, kv_cache_dtype="auto", has_sink=True,
                  has_sliding_window=True) is FIBackend


@pytest.mark.parametrize("selector_args, capability, reason", [
    (dict(head_size=80, dtype=torch.bfloat16, kv_cache_dtype="auto"), (9, 0),
     "fi_backend: head_size 80 is not supported; supported: 64, 128, 256"),
    (dict(head_size=128, dtype=torch.float32, kv_cache_dtype="auto"), (9, 0),
     "fi_backend: dtype float32 is not supported; supported: float16, bfloat16"),
    (dict(head_size=128, dtype=torch.bfloat16, kv_cache_dtype="fp8"), (9, 0),
     "fi_backend: kv_cache_dtype fp8 is not supported; supported: auto, float16, bfloat16"),
    (dict(head_size=128, dtype=torch.bfloat16, kv_cache_dtype="auto"), (7, 5),
     "fi_backend: compute capability 7.5 is not supported"),
    (dict(head_size=128, dtype=torch.bfloat16, kv_cache_dtype="auto"), (10, 0),
     "fi_backend: compute capability 10.0 is not supported"),
    (dict(head_size=128, dtype=torch.bfloat16, kv_cache_dtype="auto",
          attn_type=AttentionType.ENCODER_ONLY), (9, 0),
     "ENCODER_ONLY not supported"),  # vLLM gives supports_combination no attn_type
])
def test_selector_refuses_with_our_reason(on_gpu, selector_args, capability, reason):
    on_gpu(*capability)
    with pytest.raises(ValueError, match="Selected backend AttentionBackendEnum.CUSTOM is not "
                                         "valid") as error:
        select(**selector_args)
    assert reason in str(error.value)


def test_kv_cache_shape_and_block_sizes():
    assert FIBackend.get_kv_cache_shape(10, 16, 8, 128) == (10, 8, 16, 256)
    assert FIBackend.get_supported_kernel_block_sizes() == [1, 16, 32, 64]
    from vllm.v1.attention.backends.utils import get_kv_cache_layout

    # Logical (blocks, heads, tokens, 2*head_dim) over physical NHD or HND.
    with set_current_vllm_config(VllmConfig()):
        assert FIBackend.get_kv_cache_stride_order() == {
            "NHD": (0, 2, 1, 3), "HND": (0, 1, 2, 3)}[get_kv_cache_layout()]
    with pytest.raises(ValueError, match="kernel block_size 24 is not supported"):
        FIBackend.get_kv_cache_shape(10, 24, 8, 128)


@pytest.mark.parametrize("kwargs, message", [
    (dict(head_size=96), "head_size 96 is not supported; supported: 64, 128, 256"),
    (dict(kv_cache_dtype="fp8_e4m3"), "kv_cache_dtype fp8_e4m3 is not supported"),
    (dict(attn_type=AttentionType.ENCODER_DECODER),
     "attention type encoder_decoder is not supported; supported: decoder"),
    (dict(num_kv_heads=5), "num_heads 32 must be a multiple of num_kv_heads 5"),
    (dict(alibi_slopes=[0.5] * 4), "alibi_slopes has 4 values; it needs one per query head"),
    (dict(chunk_lookback=4), "attention options ['chunk_lookback'] are not supported"),
])
def test_impl_refuses_unsupported_layers(kwargs, message):
    args = dict(num_heads=32, head_size=128, scale=128 ** -0.5, num_kv_heads=8) | kwargs
    with pytest.raises(ValueError, match="fi_backend") as error:
        FIAttentionImpl(**args)
    assert message in str(error.value)


def test_impl_maps_vllm_window_and_softcap():
    impl = FIAttentionImpl(16, 256, 256 ** -0.5, 8, sliding_window=4096, logits_soft_cap=50.0)
    variant = impl.variant(causal=True, device=torch.device("cpu"))
    assert (variant.window_left, variant.logits_soft_cap, variant.sm_scale) == (
        4095, 50.0, 256 ** -0.5)
    assert FIAttentionImpl(32, 128, 1.0, 8).window_left == -1


def test_profiling_run_without_metadata_zeroes_output():
    impl = FIAttentionImpl(32, 128, 128 ** -0.5, 8)
    output = torch.full((4, 32, 128), float("nan"))
    impl.forward(None, torch.randn(4, 32, 128), torch.randn(4, 8, 128), torch.randn(4, 8, 128),
                 torch.empty(0), None, output)
    assert torch.equal(output, torch.zeros_like(output))


# --------------------------------------------------------------------------------------
# 5. KV-cache update


def vllm_kv_cache(num_blocks: int, block_size: int, dtype=torch.bfloat16) -> torch.Tensor:
    """A cache tensor as vLLM 0.26 hands it over: the logical shape viewed over the physical
    order FIBackend asks for (v1/worker/gpu/attn_utils.py does the same permutation)."""
    shape = FIBackend.get_kv_cache_shape(num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM)
    with set_current_vllm_config(VllmConfig()):
        order = FIBackend.get_kv_cache_stride_order()
    physical = torch.randn([shape[i] for i in order]).to(dtype)
    return physical.permute([order.index(i) for i in range(len(order))])


@pytest.mark.gpu
def test_kv_cache_update_writes_real_slots_and_skips_padding():
    kv_cache = vllm_kv_cache(num_blocks=6, block_size=16).cuda()
    before = kv_cache.clone()
    slot_mapping = torch.tensor([17, 18, 95, -1, 40, -1], dtype=torch.int64)
    key = torch.randn(8, NUM_KV_HEADS, HEAD_DIM).to(torch.bfloat16)  # 2 padded rows past slots
    value = torch.randn(8, NUM_KV_HEADS, HEAD_DIM).to(torch.bfloat16)
    FIAttentionImpl(32, 128, 1.0, 8).do_kv_cache_update(None, key.cuda(), value.cuda(),
                                                        kv_cache, slot_mapping.cuda())

    expected = before.cpu()
    for token, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            block, offset = divmod(slot, 16)
            expected[block, :, offset, :HEAD_DIM] = key[token]
            expected[block, :, offset, HEAD_DIM:] = value[token]
    assert torch.equal(kv_cache.cpu(), expected)


# --------------------------------------------------------------------------------------
# 4. Metadata builder


@pytest.fixture(scope="module")
def llama_config() -> VllmConfig:
    return engine_config()


def spec(page_size: int = 16, sliding_window: int | None = None):
    common = dict(block_size=page_size, num_kv_heads=NUM_KV_HEADS, head_size=HEAD_DIM,
                  dtype=torch.bfloat16)
    if sliding_window is None:
        return FullAttentionSpec(**common)
    return SlidingWindowSpec(sliding_window=sliding_window, **common)


class Batch:
    """A synthetic engine step: requests (q_len, kv_len) in vLLM's order, plus CUDA-graph
    padding (requests with no query and no KV, tokens past the last query). With
    `shared_pages`, every real request's first pages are the same (a prefix-cache hit)."""

    def __init__(self, q_lens, kv_lens, page_size, padded_reqs=0, padded_tokens=0, seed=0,
                 shared_pages=0):
        generator = torch.Generator().manual_seed(seed)
        self.q_lens = list(q_lens) + [0] * padded_reqs
        self.kv_lens = list(kv_lens) + [0] * padded_reqs
        self.page_size = page_size
        pages = [math.ceil(k / page_size) for k in self.kv_lens]
        assert all(n >= shared_pages for n in pages[:len(q_lens)])
        own_pages = [n - shared_pages if n else 0 for n in pages]
        max_blocks = max(pages) + 3  # vLLM's table is wider than any request needs
        # Page 0 is vLLM's null block: never a request's; real pages in shuffled order.
        page_ids = (torch.randperm(shared_pages + sum(own_pages), generator=generator)
                    + 1).tolist()
        shared, page_ids = page_ids[:shared_pages], page_ids[shared_pages:]
        self.block_table = torch.zeros(len(self.q_lens), max_blocks, dtype=torch.int32)
        for b, (n, own) in enumerate(zip(pages, own_pages)):
            if n:
                self.block_table[b, :n] = torch.tensor(shared + page_ids[:own],
                                                       dtype=torch.int32)
                page_ids = page_ids[own:]
        self.num_pages = shared_pages + sum(own_pages) + 1
        qo = np.concatenate([[0], np.cumsum(self.q_lens)]).astype(np.int32)
        self.qo_indptr = torch.from_numpy(qo)
        slots = []
        for b, (q_len, kv_len) in enumerate(zip(self.q_lens, self.kv_lens)):
            for pos in range(kv_len - q_len, kv_len):
                slots.append(int(self.block_table[b, pos // page_size]) * page_size
                             + pos % page_size)
        self.num_tokens = int(qo[-1]) + padded_tokens
        self.slot_mapping = torch.tensor(slots + [-1] * padded_tokens, dtype=torch.int64)

    def common_attn_metadata(self, upper_bound_slack: int = 0) -> CommonAttentionMetadata:
        seq_lens = torch.tensor(self.kv_lens, dtype=torch.int32)
        upper = torch.tensor([k + upper_bound_slack if k else 0 for k in self.kv_lens],
                             dtype=torch.int32)
        return CommonAttentionMetadata(
            query_start_loc=self.qo_indptr.clone(), query_start_loc_cpu=self.qo_indptr.clone(),
            seq_lens=seq_lens, num_reqs=len(self.q_lens), num_actual_tokens=self.num_tokens,
            max_query_len=max(self.q_lens), max_seq_len=int(upper.max()),
            block_table_tensor=self.block_table.clone(), slot_mapping=self.slot_mapping,
            causal=True, seq_lens_cpu_upper_bound=upper)

    def expected_bsr(self):
        indptr, indices, last = [0], [], []
        for b, kv_len in enumerate(self.kv_lens):
            n = math.ceil(kv_len / self.page_size)
            indptr.append(indptr[-1] + n)
            indices += self.block_table[b, :n].tolist()
            last.append(kv_len - (n - 1) * self.page_size if n else 0)
        return indptr, indices, last


def check_metadata(builder: FIMetadataBuilder, batch: Batch, metadata, seed: int = 1):
    """The BSR equals the block table's; every plan, as the device holds it (a composed
    cascade plan where the device adopted one), executed, equals the oracle."""
    indptr, indices, last = batch.expected_bsr()
    assert metadata.kv.indptr.tolist() == indptr
    assert metadata.kv.indices[:indptr[-1]].tolist() == indices
    assert metadata.kv.last_page_len.tolist() == last
    assert metadata.num_actual_tokens == batch.num_tokens

    generator = torch.Generator().manual_seed(seed)
    cache_shape = (batch.num_pages, batch.page_size, NUM_KV_HEADS, HEAD_DIM)
    kv = metadata.kv.with_cache(torch.randn(cache_shape, generator=generator),
                                torch.randn(cache_shape, generator=generator))
    q = torch.randn(batch.num_tokens, NUM_QO_HEADS, HEAD_DIM, generator=generator)
    real = int(batch.qo_indptr[-1])
    assert set(metadata.plans) == set(builder.window_lefts)
    for window_left, plan in metadata.plans.items():
        plan = plan.as_on_device()
        variant = AttentionVariant(causal=True, window_left=window_left,
                                   logits_soft_cap=30.0 if window_left >= 0 else 0.0)
        o, lse = execute_plan_reference(plan, q, metadata.qo_indptr, kv, variant,
                                        metadata.seq_lens)
        o_ref, lse_ref = reference.batch_attention(q[:real], batch.qo_indptr, kv, variant)
        torch.testing.assert_close(o[:real], o_ref, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(lse[:real], lse_ref, atol=2e-5, rtol=2e-5)
        assert plan.num_work_items > 0


BATCHES = {
    "decode": dict(q_lens=[1] * 6, kv_lens=[1, 15, 16, 17, 300, 1000]),
    "prefill": dict(q_lens=[37, 128, 5], kv_lens=[37, 128, 5]),
    "mixed": dict(q_lens=[1, 1, 1, 64, 200], kv_lens=[33, 700, 64, 96, 455]),
    "padded_for_graphs": dict(q_lens=[1, 1, 40], kv_lens=[20, 517, 300], padded_reqs=5,
                              padded_tokens=22),
}


@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("page_size", [16, 64])
def test_build_produces_the_bsr_and_plan_the_oracle_expects(llama_config, name, page_size):
    builder = FIMetadataBuilder(spec(page_size), [], llama_config, torch.device("cpu"))
    batch = Batch(page_size=page_size, **BATCHES[name])
    cam = batch.common_attn_metadata()
    check_metadata(builder, batch, builder.build(0, cam))
    assert cam._seq_lens_cpu is None  # the deprecated, syncing seq_lens_cpu was never read


def test_build_for_sliding_window_group(llama_config):
    builder = FIMetadataBuilder(spec(16, sliding_window=64), [], llama_config,
                                torch.device("cpu"))
    assert builder.window_lefts == (63,)
    batch = Batch(**BATCHES["mixed"], page_size=16)
    check_metadata(builder, batch, builder.build(0, batch.common_attn_metadata()))


def test_layers_with_different_windows_get_one_plan_each(llama_config):
    """Gemma-2 style: real vLLM Attention layers alternating sliding (w=64) and global."""
    from vllm.model_executor.layers.attention import Attention

    config = engine_config()
    names = [f"model.layers.{i}.self_attn.attn" for i in range(4)]
    with set_current_vllm_config(config):
        for i, name in enumerate(names):
            Attention(NUM_QO_HEADS, HEAD_DIM, HEAD_DIM ** -0.5, NUM_KV_HEADS,
                      per_layer_sliding_window=64 if i % 2 == 0 else None, prefix=name,
                      attn_backend=FIBackend, logits_soft_cap=30.0)
    builder = FIMetadataBuilder(spec(16), names, config, torch.device("cpu"))
    assert builder.window_lefts == (-1, 63)
    batch = Batch(**BATCHES["mixed"], page_size=16)
    check_metadata(builder, batch, builder.build(0, batch.common_attn_metadata()))


def test_builder_buffers_are_persistent_and_graphs_always_supported(llama_config):
    assert FIMetadataBuilder.get_cudagraph_support(llama_config, spec()) is \
        AttentionCGSupport.ALWAYS
    builder = FIMetadataBuilder(spec(), [], llama_config, torch.device("cpu"))
    first = builder.build(0, Batch(**BATCHES["decode"], page_size=16).common_attn_metadata())
    second = builder.build(0, Batch(**BATCHES["mixed"], page_size=16).common_attn_metadata())
    for a, b in ((first.kv.indptr, second.kv.indptr), (first.kv.indices, second.kv.indices),
                 (first.kv.last_page_len, second.kv.last_page_len),
                 (first.plans[-1].buffer, second.plans[-1].buffer)):
        assert a.data_ptr() == b.data_ptr()
    assert builder.reorder_batch_threshold == 1


def test_speculative_rows_count_as_decodes_and_bounds_may_overshoot():
    config = engine_config(speculative_config={
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
        "prompt_lookup_min": 2})
    builder = FIMetadataBuilder(spec(16), [], config, torch.device("cpu"))
    assert builder.reorder_batch_threshold == 4  # 1 + k queries per request
    # Async spec decode: the host bound assumes every draft accepted (3 more than exact).
    batch = Batch(q_lens=[4, 4, 4, 30], kv_lens=[40, 300, 17, 30], page_size=16)
    check_metadata(builder, batch, builder.build(0, batch.common_attn_metadata(3)))


# --------------------------------------------------------------------------------------
# The impl on a GPU: builder + do_kv_cache_update + forward against the oracle.


@pytest.mark.gpu
@pytest.mark.parametrize("sliding_window, soft_cap, sinks", [(None, 0.0, False),
                                                             (64, 30.0, True)])
def test_forward_matches_oracle_on_gpu(llama_config, sliding_window, soft_cap, sinks):
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(3)
    builder = FIMetadataBuilder(spec(16, sliding_window), [], llama_config, device)
    sink_values = torch.randn(NUM_QO_HEADS, generator=generator) if sinks else None
    impl = FIAttentionImpl(NUM_QO_HEADS, HEAD_DIM, HEAD_DIM ** -0.5, NUM_KV_HEADS,
                           sliding_window=sliding_window, logits_soft_cap=soft_cap,
                           sinks=sink_values.to(device) if sinks else None)
    batch = Batch(**BATCHES["padded_for_graphs"], page_size=16)
    kv_cache = vllm_kv_cache(batch.num_pages, 16).to(device)
    cam = batch.common_attn_metadata()
    for name in ("query_start_loc", "seq_lens", "block_table_tensor", "slot_mapping"):
        setattr(cam, name, getattr(cam, name).to(device))
    metadata = builder.build(0, cam)

    # Context tokens already cached, then this step's tokens written by do_kv_cache_update.
    k_new, v_new, q = (torch.randn(batch.num_tokens, heads, HEAD_DIM, generator=generator)
                       .to(torch.bfloat16).to(device)
                       for heads in (NUM_KV_HEADS, NUM_KV_HEADS, NUM_QO_HEADS))
    impl.do_kv_cache_update(None, k_new, v_new, kv_cache, cam.slot_mapping)
    output = torch.full_like(q, float("nan"))
    impl.forward(None, q, k_new, v_new, kv_cache, metadata, output)

    k_view, v_view = kv_cache.permute(0, 2, 1, 3).split(HEAD_DIM, dim=-1)
    kv = metadata.kv.with_cache(k_view.float(), v_view.float())
    variant = AttentionVariant(causal=True, window_left=impl.window_left,
                               logits_soft_cap=soft_cap, sm_scale=HEAD_DIM ** -0.5,
                               sinks=sink_values)
    real = int(batch.qo_indptr[-1])
    o_ref, _ = reference.batch_attention(q[:real].float().cpu(), batch.qo_indptr,
                                         _to_cpu(kv), variant)
    error = (output[:real].float().cpu() - o_ref).norm() / o_ref.norm()
    assert error < 1e-2
    assert torch.isnan(output[real:]).all()  # padding rows are left untouched


def _to_cpu(kv):
    from dataclasses import replace

    return replace(kv, indptr=kv.indptr.cpu(), indices=kv.indices.cpu(),
                   last_page_len=kv.last_page_len.cpu(), k_cache=kv.k_cache.cpu(),
                   v_cache=kv.v_cache.cpu())


# --------------------------------------------------------------------------------------
# Cascade attention (shared prefix): the prefix level and the suffix level composed into one
# plan, from a prefix that vLLM announces or that the device finds.


@pytest.fixture
def cascade_config(monkeypatch) -> VllmConfig:
    """A config in which vLLM 0.26 asks for cascade: the V1 runner (the V2 one never does;
    it is the default for dense models where Triton exists) and cascade opted in, in vLLM
    and in fi_backend."""
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    monkeypatch.setenv(CASCADE_ENV, "1")
    config = engine_config(disable_cascade_attn=False)
    # vLLM's CPU platform, standing in for the GPU here, turns cascade off; CUDA keeps it.
    config.model_config.disable_cascade_attn = False
    return config


def cascade_builder(config: VllmConfig, page_size: int = 16, device: str = "cpu"):
    builder = FIMetadataBuilder(spec(page_size), [], config, torch.device(device))
    assert builder.cascade is not None
    return builder


def ask_cascade(builder, common_prefix_len, query_lens, use_alibi=False,
                use_sliding_window=False, use_local_attention=False, dcp_world_size=1):
    """use_cascade_attention called as vLLM 0.26's V1 runner calls it."""
    return builder.use_cascade_attention(
        common_prefix_len=common_prefix_len, query_lens=np.asarray(query_lens, dtype=np.int32),
        num_query_heads=NUM_QO_HEADS, num_kv_heads=NUM_KV_HEADS, use_alibi=use_alibi,
        use_sliding_window=use_sliding_window, use_local_attention=use_local_attention,
        num_sms=132, dcp_world_size=dcp_world_size)


@pytest.mark.parametrize("common_prefix_len, query_lens, flags, expected", [
    (1024, [1] * 64, {}, True),  # the shared-prefix decode step: 64 prefix reads -> 2
    (256, [1] * 8, {}, True),  # the smallest prefix and batch that qualify
    (240, [1] * 64, {}, False),  # prefix too short to pay for a second pass
    (1024, [1] * 7, {}, False),  # too few requests
    (1024, [4] * 16, {}, True),  # speculative decoding rows (1 + 3 drafts)
    (1024, [1] * 60 + [300], {}, True),  # decodes and a prefill: 70 prefix reads -> 12
    (2048, [128] * 8, {}, False),  # prefills fill their tiles either way: 32 reads -> 32
    (512, [16] * 64, {}, False),  # 1024 query tokens, more than the 512 prefix tokens
    (1024, [1] * 64, {"use_alibi": True}, False),
    (1024, [1] * 64, {"use_sliding_window": True}, False),
    (1024, [1] * 64, {"use_local_attention": True}, False),
    (1024, [1] * 64, {"dcp_world_size": 2}, False),
])
def test_use_cascade_attention_decisions(cascade_config, common_prefix_len, query_lens, flags,
                                         expected):
    builder = cascade_builder(cascade_config)
    assert ask_cascade(builder, common_prefix_len, query_lens, **flags) is expected


@pytest.mark.parametrize("prefix_len, q_lens, kv_lens, expected", [
    (1024, [1, 1, 1], [2000, 1500, 1100], 1024),  # every request holds it before its query
    (1030, [1, 1], [2000, 2000], 1024),  # whole pages only
    (1024, [1, 4, 1], [2000, 900, 1100], 896),  # request 1's queries start at token 896
    (1024, [1, 0], [2000, 0], 1024),  # CUDA-graph padding (no queries) bounds nothing
    (0, [1, 1], [2000, 2000], 0),
])
def test_cascade_prefix_len_ends_before_every_query(prefix_len, q_lens, kv_lens, expected):
    qo_indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    assert cascade_prefix_len(prefix_len, qo_indptr, np.asarray(kv_lens, np.int32), 16) == expected


def test_cascade_live_capacity_adds_the_cascade_workspace_to_the_plain_one():
    from fi_backend.metadata.plan_layout import MAX_TILE_ROWS, PlanCapacity

    plain = PlanCapacity.for_engine(256, 8192, 8192, 32, 8, 132)
    live = cascade_live_capacity(plain, 128)
    slots = CASCADE_WORKSPACE_BYTES // (MAX_TILE_ROWS * 129 * 4)
    assert live.max_partial_slots == slots > plain.max_partial_slots
    assert live.max_work_items == max(plain.max_work_items, slots)
    assert live.max_merge_items == 2 * slots and live.num_ctas == 132
    # A plain capacity already larger than the workspace stays as it is.
    big = PlanCapacity(num_ctas=132, max_work_items=10 ** 5, max_merge_items=2 * 10 ** 5,
                       max_partial_slots=10 ** 5)
    assert cascade_live_capacity(big, 128) == big


def test_cascade_planning_exists_only_where_a_step_may_cascade(cascade_config, monkeypatch):
    """No planners, buffers or workspaces for cascade where no step can use it; vLLM asks
    only where it may announce a prefix."""
    from vllm.model_executor.layers.attention import Attention

    def cascade(config, kv_spec, layer_names=()):
        builder = FIMetadataBuilder(kv_spec, list(layer_names), config, torch.device("cpu"))
        return builder.cascade is not None, ask_cascade(builder, 1024, [1] * 64)

    # vLLM's default (V2 runner, cascade off): prefixes the device finds only.
    assert cascade(engine_config(), spec()) == (True, False)
    assert cascade(cascade_config, spec(16, sliding_window=64)) == (False, False)
    # Real vLLM layers with sinks: a sink may enter the softmax only once, after the merge.
    names = [f"model.layers.{i}.self_attn.attn" for i in range(2)]
    with set_current_vllm_config(cascade_config):
        for name in names:
            Attention(NUM_QO_HEADS, HEAD_DIM, HEAD_DIM ** -0.5, NUM_KV_HEADS, prefix=name,
                      attn_backend=FIBackend, sinks=torch.zeros(NUM_QO_HEADS))
    assert cascade(cascade_config, spec(), names) == (False, False)
    assert cascade(cascade_config, spec()) == (True, True)
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")  # the V2 runner never announces
    assert cascade(cascade_config, spec()) == (True, False)
    # vLLM opted in, fi_backend not (its default): vLLM is not asked.
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    monkeypatch.delenv(CASCADE_ENV)
    assert cascade(cascade_config, spec()) == (True, False)
    monkeypatch.setenv(SHARED_PREFIX_ENV, "0")
    assert cascade(cascade_config, spec()) == (False, False)
    assert cascade(engine_config(), spec()) == (False, False)


SHARED_PREFIX_BATCHES = {
    # (prefix tokens, batch): every request's context holds at least the prefix.
    "decode": (512, dict(q_lens=[1] * 12, kv_lens=[513, 514, 528, 529, 600, 700, 777, 800,
                                                    1000, 1024, 1100, 1500])),
    "spec_and_prefill": (256, dict(q_lens=[4] * 9 + [1, 60],
                                   kv_lens=[260, 261, 300, 333, 400, 420, 500, 512, 900, 257,
                                            316])),
    "padded_for_graphs": (320, dict(q_lens=[1] * 9, kv_lens=[321, 330, 400, 640, 641, 700,
                                                             800, 900, 1000],
                                    padded_reqs=3, padded_tokens=5)),
    # A prefix long enough for the prefix level's plan to split it across CTAs and merge.
    "long_prefix": (1536, dict(q_lens=[1] * 10, kv_lens=[1537, 1540, 1600, 1650, 1700, 1800,
                                                         1900, 2000, 2040, 2048])),
}


def shared_prefix_batch(name: str, page_size: int, seed: int = 0) -> tuple[int, Batch]:
    prefix_len, batch_args = SHARED_PREFIX_BATCHES[name]
    assert prefix_len % page_size == 0
    return prefix_len, Batch(page_size=page_size, shared_pages=prefix_len // page_size,
                             seed=seed, **batch_args)


def check_cascade_metadata(batch: Batch, prefix_len: int, metadata, seed: int = 1):
    """One composed plan (metadata/cascade_plan.py) over the batch's own page table: prefix
    items are request 0's over keys below the prefix, suffix items the requests' tiles over
    keys from it, every item writes a partial state; executed by the CPU plan executor it
    equals the oracle over the whole sequences."""
    real = int(batch.qo_indptr[-1])
    assert metadata.cascade_prefix_len == prefix_len and list(metadata.plans) == [NO_WINDOW]
    plan = metadata.plans[NO_WINDOW].as_on_device()
    request, kv_start, kv_end = (plan.section(name) for name in (
        "work_request", "work_kv_start", "work_kv_end"))
    prefix_items = kv_end <= prefix_len
    assert (request[prefix_items] == 0).all() and prefix_items.any()
    assert (kv_start[~prefix_items] >= prefix_len).all()
    assert (plan.section("work_partial_slot") >= 0).all()
    assert (plan.section("merge_extra_num_slots") > 0).all()
    indptr, indices, last = batch.expected_bsr()
    assert metadata.kv.indptr.tolist() == indptr
    assert metadata.kv.indices[:indptr[-1]].tolist() == indices
    assert metadata.kv.last_page_len.tolist() == last

    generator = torch.Generator().manual_seed(seed)
    cache_shape = (batch.num_pages, batch.page_size, NUM_KV_HEADS, HEAD_DIM)
    kv = metadata.kv.with_cache(torch.randn(cache_shape, generator=generator),
                                torch.randn(cache_shape, generator=generator))
    q = torch.randn(batch.num_tokens, NUM_QO_HEADS, HEAD_DIM, generator=generator)
    # Soft-cap and scale act per logit: the same for prefix and suffix items.
    variant = AttentionVariant(causal=True, logits_soft_cap=30.0, sm_scale=0.1)
    o, lse = execute_plan_reference(plan, q, batch.qo_indptr, kv, variant,
                                    torch.tensor(batch.kv_lens, dtype=torch.int32))
    o_ref, lse_ref = reference.batch_attention(q[:real], batch.qo_indptr, kv, variant)
    torch.testing.assert_close(o[:real], o_ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse[:real], lse_ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", SHARED_PREFIX_BATCHES)
@pytest.mark.parametrize("page_size", [16, 64])
def test_build_with_common_prefix_gives_levels_the_oracle_expects(cascade_config, name,
                                                                  page_size):
    builder = cascade_builder(cascade_config, page_size)
    prefix_len, batch = shared_prefix_batch(name, page_size)
    assert ask_cascade(builder, prefix_len, SHARED_PREFIX_BATCHES[name][1]["q_lens"])
    cam = batch.common_attn_metadata()
    metadata = builder.build(prefix_len, cam)
    check_cascade_metadata(batch, prefix_len, metadata)
    assert cam._seq_lens_cpu is None  # host planning read only host data
    if name == "long_prefix":  # the prefix level split its tiles
        assert (metadata.plans[NO_WINDOW].as_on_device().section("merge_extra_num_slots")
                > 1).any()


def test_cascade_with_kv_length_upper_bounds(monkeypatch):
    """Speculative rows whose host KV lengths overshoot (all drafts assumed accepted): the
    suffix level plans from the bounds less the prefix, kernels clamp to the exact lengths."""
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    monkeypatch.setenv(CASCADE_ENV, "1")
    config = engine_config(speculative_config={
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
        "prompt_lookup_min": 2})
    config.model_config.disable_cascade_attn = False
    builder = cascade_builder(config)
    prefix_len, batch = shared_prefix_batch("spec_and_prefill", 16, seed=4)
    check_cascade_metadata(batch, prefix_len,
                           builder.build(prefix_len, batch.common_attn_metadata(3)))


def test_cascade_and_plain_steps_alternate_on_persistent_buffers(cascade_config):
    builder = cascade_builder(cascade_config)
    live_buffer = builder.planners[NO_WINDOW].buffer
    first_len, first = shared_prefix_batch("decode", 16)
    second_len, second = shared_prefix_batch("spec_and_prefill", 16, seed=2)
    a = builder.build(first_len, first.common_attn_metadata())
    check_cascade_metadata(first, first_len, a)
    plain = Batch(**BATCHES["mixed"], page_size=16)
    check_metadata(builder, plain, builder.build(0, plain.common_attn_metadata()))
    b = builder.build(second_len, second.common_attn_metadata())
    check_cascade_metadata(second, second_len, b)
    # Every step's plan, composed or not, is in the live buffer: a CUDA graph captured on any
    # step replays every later one.
    for metadata in (a, b):
        assert metadata.plans[NO_WINDOW].buffer is live_buffer


def test_build_plans_one_level_where_the_prefix_level_cannot_hold_the_queries(cascade_config):
    builder = cascade_builder(cascade_config)
    # 20 requests x 30 query tokens = 600 > a 256-token prefix: the plain plan, still exact.
    batch = Batch(q_lens=[30] * 20, kv_lens=[300 + 7 * b for b in range(20)], page_size=16,
                  shared_pages=16)
    metadata = builder.build(256, batch.common_attn_metadata())
    assert metadata.cascade_prefix_len == 0
    check_metadata(builder, batch, metadata)


@pytest.mark.parametrize("common_prefix_len, composed_len", [
    (264, 256),  # not whole pages: the whole pages within it
    (528, 512),  # reaches into request 0's queries: the tokens before them
])
def test_build_cuts_an_impossible_common_prefix_to_what_the_batch_allows(
        cascade_config, common_prefix_len, composed_len):
    builder = cascade_builder(cascade_config)
    _, batch = shared_prefix_batch("decode", 16)
    metadata = builder.build(common_prefix_len, batch.common_attn_metadata())
    check_cascade_metadata(batch, composed_len, metadata)


def test_prefix_found_on_the_device_cascades_the_next_steps(monkeypatch):
    """vLLM's default runner announces nothing: the step after one whose requests shared
    their pages is composed for that prefix and adopted; a step that no longer shares it
    keeps its plain plan (the host composed for a stale guess), and the one after it is not
    composed at all."""
    monkeypatch.delenv(CASCADE_ENV, raising=False)
    builder = cascade_builder(engine_config())
    prefix_len, batch = shared_prefix_batch("decode", 16)
    first = builder.build(0, batch.common_attn_metadata())
    assert first.cascade_prefix_len == 0  # nothing measured yet
    check_metadata(builder, batch, first)
    second = builder.build(0, batch.common_attn_metadata())
    check_cascade_metadata(batch, prefix_len, second)

    # Same shapes, no shared pages: the guess is stale, the device refuses it.
    unshared = Batch(q_lens=SHARED_PREFIX_BATCHES["decode"][1]["q_lens"],
                     kv_lens=SHARED_PREFIX_BATCHES["decode"][1]["kv_lens"], page_size=16,
                     seed=7)
    third = builder.build(0, unshared.common_attn_metadata())
    assert third.cascade_prefix_len == prefix_len
    on_device = third.plans[NO_WINDOW].as_on_device()
    assert (on_device.section("work_kv_start") == third.plans[NO_WINDOW].section(
        "work_kv_start")).all()  # the plain plan
    check_metadata(builder, unshared, third)
    fourth = builder.build(0, unshared.common_attn_metadata())
    assert fourth.cascade_prefix_len == 0
    check_metadata(builder, unshared, fourth)


@pytest.mark.gpu
@pytest.mark.parametrize("soft_cap", [0.0, 30.0])
@pytest.mark.parametrize("batch_name", SHARED_PREFIX_BATCHES)
def test_forward_with_cascade_matches_plain_and_oracle_on_gpu(cascade_config, batch_name,
                                                              soft_cap):
    """One step three times: plain (nothing measured yet), cascaded for vLLM's announced
    prefix, cascaded for the prefix the device found. Each runs eagerly and by replaying a CUDA
    graph captured on the first (plain) step: the composed plans live in the same buffer."""
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(5)
    builder = cascade_builder(cascade_config, 16, "cuda")
    impl = FIAttentionImpl(NUM_QO_HEADS, HEAD_DIM, HEAD_DIM ** -0.5, NUM_KV_HEADS,
                           logits_soft_cap=soft_cap)
    prefix_len, batch = shared_prefix_batch(batch_name, 16)
    kv_cache = vllm_kv_cache(batch.num_pages, 16).to(device)
    cam = batch.common_attn_metadata()
    for field in ("query_start_loc", "seq_lens", "block_table_tensor", "slot_mapping"):
        setattr(cam, field, getattr(cam, field).to(device))
    k_new, v_new, q = (torch.randn(batch.num_tokens, heads, HEAD_DIM, generator=generator)
                       .to(torch.bfloat16).to(device)
                       for heads in (NUM_KV_HEADS, NUM_KV_HEADS, NUM_QO_HEADS))
    impl.do_kv_cache_update(None, k_new, v_new, kv_cache, cam.slot_mapping)

    graph, graph_output = None, torch.empty_like(q)
    outputs = []
    for announced, composed_for in ((0, 0), (prefix_len, prefix_len), (0, prefix_len)):
        metadata = builder.build(announced, cam)
        assert metadata.cascade_prefix_len == composed_for
        output = torch.full_like(q, float("nan"))
        impl.forward(None, q, k_new, v_new, kv_cache, metadata, output)
        if graph is None:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                impl.forward(None, q, k_new, v_new, kv_cache, metadata, graph_output)
        graph_output.fill_(float("nan"))
        graph.replay()
        outputs.append((output.float().cpu(), graph_output.float().cpu()))

    k_view, v_view = kv_cache.permute(0, 2, 1, 3).split(HEAD_DIM, dim=-1)
    kv = metadata.kv.with_cache(k_view.float(), v_view.float())
    variant = AttentionVariant(causal=True, logits_soft_cap=soft_cap, sm_scale=HEAD_DIM ** -0.5)
    real = int(batch.qo_indptr[-1])
    o_ref, _ = reference.batch_attention(q[:real].float().cpu(), batch.qo_indptr, _to_cpu(kv),
                                         variant)
    plain = outputs[0][0]
    for step in outputs:
        for output in step:
            assert (output[:real] - o_ref).norm() / o_ref.norm() < 1e-2
            assert torch.isnan(output[real:]).all()  # padding rows are left untouched
            assert (output[:real] - plain[:real]).norm() / plain[:real].norm() < 1e-2


