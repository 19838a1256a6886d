"""The merge_states CUDA kernel equals the float32 oracle (fi_backend.reference.merge_states)
on fresh random inputs. Outputs are poisoned with NaN first, so an element the kernel does
not write fails the comparison; empty partials (LSE -inf) hold NaN values, which the kernel
must never read into the result."""

import math

import pytest
import torch

from fi_backend import ops, reference

pytestmark = pytest.mark.gpu

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Output rounding of each dtype at values of magnitude ~1 (the merge itself runs in float32).
OUTPUT_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}
LSE_TOLERANCE = 1e-5


def random_states(shape, dtype, seed, lse_scale=4.0, empty_fraction=0.2):
    """(v, s, empty): partial outputs (num_rows, num_states, num_heads, head_dim), their
    natural-log LSEs, and the mask of empty partials (LSE -inf, v NaN). The (row 0, head 0)
    partials are all empty."""
    num_rows, num_states, num_heads, head_dim = shape
    gen = torch.Generator(device="cuda").manual_seed(seed)
    v = torch.randn(shape, generator=gen, device="cuda").to(dtype)
    s = torch.randn(shape[:3], generator=gen, device="cuda") * lse_scale
    empty = torch.rand(shape[:3], generator=gen, device="cuda") < empty_fraction
    if num_rows and num_heads:
        empty[0, :, 0] = True
    s[empty] = -math.inf
    v[empty] = math.nan
    return v, s, empty


def oracle(v, s, empty):
    """The oracle's merge; empty partials contribute nothing, so their NaN is zeroed here."""
    return reference.merge_states(v.masked_fill(empty.unsqueeze(-1), 0), s)


def assert_matches_oracle(o, lse, v, s, empty, output_tolerance=None):
    expected_o, expected_lse = oracle(v, s, empty)
    tol = output_tolerance or OUTPUT_TOLERANCE[v.dtype]
    assert o.dtype == v.dtype and lse.dtype == torch.float32
    torch.testing.assert_close(o.float(), expected_o, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, expected_lse, atol=LSE_TOLERANCE, rtol=LSE_TOLERANCE)


def nan_like(shape, dtype):
    return torch.full(shape, math.nan, dtype=dtype, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_states", [1, 2, 7, 19])
@pytest.mark.parametrize("head_dim", [8, 64, 72, 128, 256, 512])
def test_matches_oracle_and_writes_every_element(dtype, num_states, head_dim):
    num_rows, num_heads = 37, 5  # 185 (row, head) pairs: the last block is partly idle
    v, s, empty = random_states((num_rows, num_states, num_heads, head_dim), dtype,
                                seed=1000 * num_states + head_dim)
    out = nan_like((num_rows, num_heads, head_dim), dtype)
    out_lse = nan_like((num_rows, num_heads), torch.float32)
    o, lse = ops.merge_states(v, s, out=out, out_lse=out_lse)
    assert o is out and lse is out_lse
    assert_matches_oracle(o, lse, v, s, empty)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_views_are_read_and_written_in_place(dtype):
    num_rows, num_states, num_heads, head_dim = 9, 7, 6, 128
    v_dense, s_dense, empty = random_states((num_rows, num_states, num_heads, head_dim), dtype,
                                            seed=7)
    # v: a window into a larger buffer (padded states, every other head, offset columns).
    v_buffer = nan_like((num_rows, num_states + 3, 2 * num_heads, head_dim + 32), dtype)
    v = v_buffer[:, 2:2 + num_states, ::2, 16:16 + head_dim]
    v.copy_(v_dense)
    # s: head-major storage seen as (num_rows, num_states, num_heads).
    s = s_dense.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    out_buffer = nan_like((num_rows, 3 * num_heads, head_dim + 8), dtype)
    out = out_buffer[:, 1::3, 8:]
    out_lse_buffer = nan_like((num_heads, 2 * num_rows), torch.float32)
    out_lse = out_lse_buffer[:, ::2].t()
    assert not (v.is_contiguous() or s.is_contiguous() or out.is_contiguous()
                or out_lse.is_contiguous())

    o, lse = ops.merge_states(v, s, out=out, out_lse=out_lse)
    assert_matches_oracle(o, lse, v_dense, s_dense, empty)
    # Nothing outside the views was written.
    written = torch.zeros_like(out_buffer, dtype=torch.bool)
    written[:, 1::3, 8:] = True
    assert out_buffer[~written].isnan().all()
    written_lse = torch.zeros_like(out_lse_buffer, dtype=torch.bool)
    written_lse[:, ::2] = True
    assert out_lse_buffer[~written_lse].isnan().all()


def test_wide_lse_range_is_merged_without_overflow():
    # exp(+-600) over/underflows float32, so only a max-shifted merge gets these right.
    # A float32 LSE near 600 is itself only known to its ulp (6e-5), which the softmax
    # weights inherit as a relative error in kernel and oracle alike: hence 1e-4.
    v, s, empty = random_states((16, 5, 8, 128), torch.float32, seed=3, lse_scale=300.0)
    o, lse = ops.merge_states(v, s)
    assert_matches_oracle(o, lse, v, s, empty, output_tolerance=1e-4)
    assert lse.abs().max() > 100


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_empty_partials_give_zero_output_and_minus_inf_lse(dtype):
    v = nan_like((4, 3, 2, 64), dtype)
    s = torch.full((4, 3, 2), -math.inf, device="cuda")
    o, lse = ops.merge_states(v, s, out=nan_like((4, 2, 64), dtype))
    assert torch.equal(o, torch.zeros_like(o))
    assert torch.equal(lse, torch.full_like(lse, -math.inf))


def test_zero_states_and_zero_rows():
    o, lse = ops.merge_states(torch.empty(3, 0, 2, 64, device="cuda"),
                              torch.empty(3, 0, 2, device="cuda"))
    assert torch.equal(o, torch.zeros(3, 2, 64, device="cuda"))
    assert torch.equal(lse, torch.full((3, 2), -math.inf, device="cuda"))
    o, lse = ops.merge_states(torch.empty(0, 4, 2, 64, device="cuda"),
                              torch.empty(0, 4, 2, device="cuda"))
    assert o.shape == (0, 2, 64) and lse.shape == (0, 2)


def test_runs_on_the_current_stream():
    v, s, empty = random_states((64, 4, 8, 128), torch.bfloat16, seed=11)
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        o, lse = ops.merge_states(v, s)
    torch.cuda.current_stream().wait_stream(side_stream)
    assert_matches_oracle(o, lse, v, s, empty)
