"""vidgen.ops.frame_group_norm against diffusers' modules in float64: nn.GroupNorm on the 5-D video
(+ nn.SiLU), values and gradients, both passes on their own, partial statistics combined, errors."""
import pytest
import torch
from torch import nn

from vidgen.ops import frame_group_norm, frame_group_norm_apply, frame_group_norm_statistics, use_backend

from oracles import scaled_error  # tests/oracles.py

# Against the float64 oracle: fp32 is exact up to rounding; fp16/bf16 round the output (and the
# gradients) once, relative to the largest magnitude.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def oracle(x, num_frames, num_groups, weight, bias, eps, silu):
    """diffusers' formulation in float64: nn.GroupNorm (a module, as the motion modules and
    Tune-A-Video's ResNets hold it) of the 5-D (B, C, F, h, w) video, then nn.SiLU."""
    batch_frames, channels = x.shape[:2]
    norm = nn.GroupNorm(num_groups, channels, eps=eps, affine=weight is not None).double()
    if weight is not None:
        norm.weight = nn.Parameter(weight.detach().double(), requires_grad=weight.requires_grad)
        norm.bias = nn.Parameter(bias.detach().double(), requires_grad=bias.requires_grad)
    video = x.view(batch_frames // num_frames, num_frames, channels, *x.shape[2:]).transpose(1, 2)
    out = norm(video)
    if silu:
        out = nn.SiLU()(out)
    return out.transpose(1, 2).reshape(x.shape), norm


def inputs(shape, num_frames, dtype, device, seed, parameter_dtype=None, affine=True):
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    # an offset mean and a spread like a UNet activation's, so the statistics matter
    x = (torch.randn(*shape, generator=g) * 2.5 + 0.7).to(device, dtype)
    if not affine:
        return x, None, None
    parameter_dtype = parameter_dtype or dtype
    weight = (torch.randn(channels, generator=g) + 1).to(device, parameter_dtype)
    bias = torch.randn(channels, generator=g).to(device, parameter_dtype)
    return x, weight, bias


CASES = [  # (B*F, C, spatial...), F, G, dtype, silu
    ((6, 6, 5, 7), 3, 3, torch.float32, False),        # odd sizes, two videos of three frames
    ((6, 6, 5, 7), 3, 3, torch.float32, True),
    ((4, 8, 24, 24), 2, 2, torch.float16, True),       # a wide map: the (4, 512) tile, two pixel blocks
    ((3, 40, 3, 3), 3, 1, torch.bfloat16, True),       # 40 channels in one group: two channel blocks
    ((5, 4, 9), 1, 4, torch.float16, False),           # one frame per video (a plain GroupNorm), (B*F, C, N)
    ((2, 2, 1, 1), 2, 2, torch.float32, True),         # one pixel, one channel per group
]


@pytest.mark.parametrize("shape,num_frames,num_groups,dtype,silu", CASES)
def test_forward_equals_5d_group_norm_and_silu(shape, num_frames, num_groups, dtype, silu, device):
    x, weight, bias = inputs(shape, num_frames, dtype, device, seed=sum(shape))
    with use_backend("triton"):
        y = frame_group_norm(x, num_frames, num_groups, weight, bias, 1e-6, silu=silu)
    expected, _ = oracle(x.double(), num_frames, num_groups, weight, bias, 1e-6, silu)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    assert scaled_error(y, expected) <= TOL[dtype]


@pytest.mark.parametrize("shape,num_frames,num_groups,dtype,silu", [CASES[0], CASES[3], CASES[4]])
def test_gradients_equal_autograd_of_the_5d_modules(shape, num_frames, num_groups, dtype, silu, device):
    x, weight, bias = inputs(shape, num_frames, dtype, device, seed=7 * sum(shape))
    x, weight, bias = (t.detach().requires_grad_() for t in (x, weight, bias))
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    with use_backend("triton"):
        frame_group_norm(x, num_frames, num_groups, weight, bias, 1e-5, silu=silu).backward(grad)

    x64 = x.detach().double().cpu().requires_grad_()
    expected, norm = oracle(x64, num_frames, num_groups, weight.cpu(), bias.cpu(), 1e-5, silu)
    expected.backward(grad.double().cpu())
    for name, actual, want in (("x", x.grad, x64.grad), ("weight", weight.grad, norm.weight.grad),
                               ("bias", bias.grad, norm.bias.grad)):
        assert actual.dtype == dtype, name
        assert scaled_error(actual, want) <= 2 * TOL[dtype], name


def test_fp32_parameters_with_half_activations_and_no_affine(device):
    # Mixed precision keeps the norm's parameters in fp32; a non-affine GroupNorm has none.
    x, weight, bias = inputs((6, 8, 4, 5), 3, torch.float16, device, seed=1, parameter_dtype=torch.float32)
    with use_backend("triton"):
        y = frame_group_norm(x, 3, 4, weight, bias, silu=True)
        plain = frame_group_norm(x, 3, 4)
    assert scaled_error(y, oracle(x.double(), 3, 4, weight, bias, 1e-5, True)[0]) <= TOL[torch.float16]
    assert scaled_error(plain, oracle(x.double(), 3, 4, None, None, 1e-5, False)[0]) <= TOL[torch.float16]


def test_the_passes_alone_and_partial_statistics_combined(device):
    # Frame-parallel sampling: two processes each hold some frames of every video; each adds up its
    # own partials, the sums are all-reduced (here: added), and each applies them to its frames.
    shape, num_frames, num_groups = (2 * 5, 6, 3, 4), 5, 2
    x, weight, bias = inputs(shape, num_frames, torch.float32, device, seed=11)
    videos = x.view(2, num_frames, *shape[1:])
    shards = videos[:, :3].reshape(-1, *shape[1:]), videos[:, 3:].reshape(-1, *shape[1:])
    with use_backend("triton"):
        full = frame_group_norm(x, num_frames, num_groups, weight, bias, silu=True)
        statistics = frame_group_norm_statistics(x, num_frames, num_groups)
        two_pass = frame_group_norm_apply(x, statistics, num_frames, weight, bias, silu=True)
        local = [frame_group_norm_statistics(s, f, num_groups).sum(1, keepdim=True) for s, f in zip(shards, (3, 2))]
        reduced = local[0] + local[1]  # the all-reduce
        parts = [frame_group_norm_apply(s, reduced, f, weight, bias, silu=True) for s, f in zip(shards, (3, 2))]
    assert statistics.shape == (2, num_frames, num_groups, 3) and statistics.dtype == torch.float32
    torch.testing.assert_close(statistics[..., 0], torch.full((2, 5, 2), 3.0 * 3 * 4, device=device))  # C/G x h x w
    torch.testing.assert_close(two_pass, full, rtol=0, atol=0)
    rebuilt = torch.cat([parts[0].view(2, 3, *shape[1:]), parts[1].view(2, 2, *shape[1:])], 1).view(shape)
    torch.testing.assert_close(rebuilt, full, rtol=1e-5, atol=1e-5)


def test_pytorch_reference_backend_and_float64(device):
    x, weight, bias = inputs((4, 6, 3, 3), 2, torch.float32, device, seed=5)
    expected = oracle(x.double(), 2, 3, weight, bias, 1e-5, True)[0]
    with use_backend("torch"):
        assert scaled_error(frame_group_norm(x, 2, 3, weight, bias, silu=True), expected) <= TOL[torch.float32]
    y64 = frame_group_norm(x.double(), 2, 3, weight.double(), bias.double(), silu=True)  # fp64: the reference
    torch.testing.assert_close(y64.cpu(), expected.cpu(), rtol=1e-12, atol=1e-12)


def test_bad_arguments_are_refused_by_name(device):
    x = torch.randn(6, 4, 3, 3, device=device)
    with pytest.raises(ValueError, match="num_frames=4 does not divide x's 6 frames"):
        frame_group_norm(x, 4, 2)
    with pytest.raises(ValueError, match="num_groups: expected a positive int dividing the 4 channels"):
        frame_group_norm(x, 3, 3)
    with pytest.raises(ValueError, match="weight: expected \\(4,\\)"):
        frame_group_norm(x, 3, 2, torch.ones(5, device=device))
    with pytest.raises(TypeError, match="bias: expected x's dtype"):
        frame_group_norm(x, 3, 2, torch.ones(4, device=device), torch.zeros(4, device=device, dtype=torch.float16))
    with pytest.raises(ValueError, match="x: expected a non-empty"):
        frame_group_norm(x[:, :, 0, 0], 3, 2)
    with pytest.raises(ValueError, match="eps: expected a finite value >= 0"):
        frame_group_norm(x, 3, 2, eps=-1.0)
    with pytest.raises(ValueError, match="statistics: expected \\(2, S, G, 3\\)"):
        frame_group_norm_apply(x, torch.zeros(1, 3, 2, 3, device=device), 3)
    with pytest.raises(TypeError, match="statistics: expected dtype"):
        frame_group_norm_apply(x, torch.zeros(2, 3, 2, 3, device=device, dtype=torch.float64), 3)
