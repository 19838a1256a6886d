"""ops.append_kv: input checks (CPU) and the kernel against reference.append_kv (GPU)."""

import pytest
import torch

from fi_backend import ops, reference
from fi_backend.metadata.block_sparse import split_kv_cache

NUM_KV_HEADS, HEAD_DIM = 4, 64


def packed_cache(num_blocks, block_size, head_dim=HEAD_DIM, device="cpu", dtype=torch.bfloat16):
    """vLLM 0.26's packed cache: physical (blocks, block_size, heads, 2*head_dim), viewed as
    the logical (blocks, heads, block_size, 2*head_dim)."""
    physical = torch.randn(num_blocks, block_size, NUM_KV_HEADS, 2 * head_dim).to(dtype)
    return physical.to(device).permute(0, 2, 1, 3)


def new_rows(num_tokens, device="cpu", dtype=torch.bfloat16, head_dim=HEAD_DIM):
    return (torch.randn(num_tokens, NUM_KV_HEADS, head_dim).to(dtype).to(device)
            for _ in range(2))


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(key=a["key"].float()), "key has dtype float32"),
    (lambda a: a.update(value=a["value"][:, :2]), "value has shape"),
    (lambda a: a.update(slot_mapping=a["slot_mapping"].int()), "slot_mapping has dtype int32"),
    (lambda a: a.update(slot_mapping=torch.zeros(9, dtype=torch.int64)), "num_slots <= num_tokens"),
    (lambda a: a.update(k_cache=a["k_cache"].to(torch.float16)), "k_cache has dtype float16"),
    (lambda a: a.update(key=torch.randn(8, NUM_KV_HEADS, 2 * HEAD_DIM).to(torch.bfloat16)
                        [..., ::2]), "key has stride 2 along its last dimension"),
    (lambda a: None, "only CUDA tensors are supported"),
])
def test_append_kv_rejects_bad_inputs_before_writing(change, message):
    kv_cache = packed_cache(3, 16)
    before = kv_cache.clone()
    k_cache, v_cache = split_kv_cache(kv_cache, "vllm_packed")
    key, value = new_rows(8)
    args = dict(key=key, value=value, k_cache=k_cache, v_cache=v_cache,
                slot_mapping=torch.tensor([1, 2, -1], dtype=torch.int64))
    change(args)
    with pytest.raises(ValueError, match=message):
        ops.append_kv(**args)
    assert torch.equal(kv_cache, before)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout, block_size, head_dim", [("vllm_packed", 16, 128),
                                                          ("vllm_packed", 1, 64),
                                                          ("paged_5d", 32, 256)])
def test_append_kv_matches_reference(dtype, layout, block_size, head_dim):
    num_tokens = 40
    num_blocks = max(9, 2 * num_tokens // block_size)  # more slots than tokens
    if layout == "vllm_packed":
        kv_cache = packed_cache(num_blocks, block_size, head_dim, "cuda", dtype)
    else:
        kv_cache = torch.randn(num_blocks, 2, block_size, NUM_KV_HEADS, head_dim,
                               device="cuda").to(dtype)
    expected = kv_cache.clone()
    num_slots = num_blocks * block_size
    # Distinct real slots, padded tokens (-1), one slot past the cache (skipped), and two
    # key rows past len(slot_mapping) (CUDA-graph padding, ignored).
    slots = torch.randperm(num_slots)[:num_tokens - 2]
    slots[::7] = -1
    slots[3] = num_slots
    slot_mapping = slots.to("cuda")
    key, value = new_rows(num_tokens, "cuda", dtype, head_dim)

    ops.append_kv(key, value, *split_kv_cache(kv_cache, layout), slot_mapping)
    reference.append_kv(key, value, *split_kv_cache(expected, layout), slot_mapping)
    torch.cuda.synchronize()
    assert torch.equal(kv_cache, expected)
    written = (slots >= 0) & (slots < num_slots)
    assert written.sum() > 20  # the check above compared real writes, not an idle kernel
