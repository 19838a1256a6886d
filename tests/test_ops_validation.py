"""ops.merge_states and _C.merge_states reject bad inputs with a ValueError that names the
value and what is allowed, before anything is launched. CPU tensors suffice: every check but
the device check runs before it."""

import pytest
import torch

from fi_backend import _C, ops

NUM_ROWS, NUM_STATES, NUM_HEADS, HEAD_DIM = 3, 2, 4, 64


def valid_inputs(dtype=torch.float16):
    v = torch.randn(NUM_ROWS, NUM_STATES, NUM_HEADS, HEAD_DIM).to(dtype)
    s = torch.randn(NUM_ROWS, NUM_STATES, NUM_HEADS)
    return v, s


def test_valid_cpu_inputs_fail_only_on_the_device():
    v, s = valid_inputs()
    with pytest.raises(ValueError, match=r"v is on device cpu; only CUDA tensors are supported"):
        ops.merge_states(v, s)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda v, s: (v.numpy(), s), r"v must be a torch.Tensor; got ndarray"),
        (lambda v, s: (v[0], s), r"v must have 4 dimensions \(num_rows, num_states, num_heads, "
                                 r"head_dim\); got shape \(2, 4, 64\)"),
        (lambda v, s: (v.double(), s), r"v has dtype float64; supported: float16, bfloat16, "
                                       r"float32"),
        (lambda v, s: (v.to(torch.int8), s), r"v has dtype int8"),
        (lambda v, s: (v[..., :60], s), r"head_dim 60 \(v.shape\[3\]\) is not supported; "
                                        r"supported: multiples of 8 up to 512"),
        (lambda v, s: (torch.zeros(3, 2, 4, 520, dtype=torch.float16), s),
         r"head_dim 520 .* not supported"),
        (lambda v, s: (torch.zeros(3, 2, 4, 128, dtype=torch.float16)[..., ::2], s),
         r"v has stride 2 along its last dimension; only 1"),
        (lambda v, s: (torch.zeros(v.numel() + 1, dtype=v.dtype)[1:].view(v.shape), s),
         r"v's data pointer 0x[0-9a-f]+ \(storage offset 1 elements\) is not 16-byte aligned"),
        (lambda v, s: (torch.zeros(3, 2, 4, 68, dtype=torch.float16)[..., :64], s),
         r"v has stride 68 elements \(136 bytes\) along dimension 2; strides must be multiples "
         r"of 16 bytes"),
        (lambda v, s: (v, s[:, :, :3]), r"s has shape \(3, 2, 3\); expected \(num_rows, "
                                        r"num_states, num_heads\) = \(3, 2, 4\) \(num_heads is 4,"
                                        r" not 3\)"),
        (lambda v, s: (v, s[:, :1]), r"num_states is 2, not 1"),
        (lambda v, s: (v, s.half()), r"s has dtype float16; supported: float32$"),
    ],
)
def test_bad_inputs_are_named(make_args, message):
    v, s = make_args(*valid_inputs())
    with pytest.raises(ValueError, match=message):
        ops.merge_states(v, s)


@pytest.mark.parametrize(
    "out_kwargs, message",
    [
        (dict(out=torch.zeros(3, 4, 32, dtype=torch.float16)),
         r"out has shape \(3, 4, 32\); expected \(num_rows, num_heads, head_dim\) = "
         r"\(3, 4, 64\) \(head_dim is 64, not 32\)"),
        (dict(out=torch.zeros(3, 4, 64, dtype=torch.float32)),
         r"out has dtype float32; supported: float16$"),
        (dict(out=torch.zeros(3, 64, 4, dtype=torch.float16).transpose(1, 2)),
         r"out has stride 4 along its last dimension"),
        (dict(out_lse=torch.zeros(4, 3)), r"out_lse has shape \(4, 3\); expected \(num_rows, "
                                          r"num_heads\) = \(3, 4\)"),
        (dict(out_lse=torch.zeros(3, 4, dtype=torch.float64)),
         r"out_lse has dtype float64; supported: float32"),
        (dict(out=[0.0]), r"out must be a torch.Tensor; got list"),
    ],
)
def test_bad_outputs_are_named_and_left_untouched(out_kwargs, message):
    v, s = valid_inputs()
    before = {name: t.clone() for name, t in out_kwargs.items() if isinstance(t, torch.Tensor)}
    with pytest.raises(ValueError, match=message):
        ops.merge_states(v, s, **out_kwargs)
    for name, t in before.items():
        assert torch.equal(out_kwargs[name], t)


def c_merge_states_args(**overrides):
    """Arguments of _C.merge_states for an empty problem (num_rows 0): valid ones launch
    nothing, so the extension's own contract checks run without a GPU."""
    args = dict(dtype="float16", v=0, v_strides=(64, 64, 64), s=0, s_strides=(1, 1, 1), o=0,
                o_strides=(64, 64), lse=0, lse_strides=(1, 1), num_rows=0, num_states=2,
                num_heads=4, head_dim=64, stream=0)
    args.update(overrides)
    return args


def test_extension_accepts_an_empty_problem_without_a_gpu():
    assert _C.merge_states(**c_merge_states_args()) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dtype="float64"), r"dtype 'float64' is not supported; supported: float16, "
                                r"bfloat16, float32"),
        (dict(head_dim=72 + 4), r"head_dim 76 is not supported; supported: multiples of 8 up "
                                r"to 512"),
        (dict(head_dim=1024), r"head_dim 1024 is not supported"),
        (dict(v=8), r"16-byte aligned pointers"),
        (dict(o_strides=(64, 4)), r"multiples of 16 bytes"),
        (dict(dtype="float32", v_strides=(64, 6, 64)), r"multiples of 16 bytes"),
        (dict(num_heads=-1), r"num_rows, num_states and num_heads must be >= 0"),
    ],
)
def test_extension_rejects_parameters_outside_its_contract(overrides, message):
    with pytest.raises(ValueError, match=message):
        _C.merge_states(**c_merge_states_args(**overrides))


def test_extension_needs_keyword_arguments():
    with pytest.raises(TypeError):
        _C.merge_states(*c_merge_states_args().values())
