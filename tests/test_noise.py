"""Correlated noise (PYoCo): statistics against the formulas, determinism, layouts, dtypes, errors.

Statistical bounds are 5 standard errors of the estimator at the test's sample size, so a
correct generator fails about once in a million runs and a wrong coefficient fails always.
"""
import math

import pytest
import torch

from vidgen.kernels import noise as noise_kernels
from vidgen.ops import BackendUnavailable, add_noise, correlated_noise, use_backend

BACKENDS = ["triton", "torch"]
SHAPE = (6, 4, 5, 24, 24)  # (B, C, F, h, w): 13,824 independent columns per frame


def lag_correlation(x: torch.Tensor, i: int, j: int, frame_dim: int = 2) -> tuple[float, int]:
    a, b = x.select(frame_dim, i).double().flatten(), x.select(frame_dim, j).double().flatten()
    return float((a * b).mean() / (a.square().mean() * b.square().mean()).sqrt()), a.numel()


def expected_correlation(kind: str, alpha: float, i: int, j: int) -> float:
    if i == j:
        return 1.0
    if kind == "mixed":
        return alpha**2 / (1 + alpha**2)
    if kind == "progressive":
        return (alpha / math.sqrt(1 + alpha**2)) ** abs(i - j)
    return 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,alpha", [("iid", 0.0), ("mixed", 1.0), ("progressive", 2.0), ("progressive", 0.5)])
def test_per_frame_marginals_and_pairwise_correlation(device, backend, kind, alpha):
    with use_backend(backend):
        x = correlated_noise(SHAPE, kind=kind, alpha=alpha, seed=1234, device=device)
    assert x.shape == SHAPE and x.dtype == torch.float32 and torch.isfinite(x).all()
    frames = x.transpose(0, 2).reshape(SHAPE[2], -1).double()
    n = frames.shape[1]
    assert frames.mean(1).abs().max() < 5 / math.sqrt(n)
    assert (frames.var(1) - 1).abs().max() < 5 * math.sqrt(2 / n)
    for i, j in [(0, 1), (1, 2), (0, 2), (0, 4), (3, 4)]:
        rho = expected_correlation(kind, alpha, i, j)
        measured, n = lag_correlation(x, i, j)
        assert abs(measured - rho) < 5 * max(1 - rho**2, 0.05) / math.sqrt(n), (i, j, measured, rho)


@pytest.mark.parametrize("backend", BACKENDS)
def test_independent_across_videos_and_channels(device, backend):
    with use_backend(backend):
        x = correlated_noise(SHAPE, kind="mixed", alpha=3.0, seed=7, device=device).double()
    n = x[0, 0].numel()
    bound = 5 / math.sqrt(n)
    assert abs((x[0, 0] * x[1, 0]).mean()) < bound  # two videos, same position
    assert abs((x[0, 0] * x[0, 1]).mean()) < bound  # two channels, same video


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_is_bit_identical_and_another_seed_differs(device, backend):
    with use_backend(backend):
        a = correlated_noise((2, 3, 17, 5, 13), seed=99, device=device)
        b = correlated_noise((2, 3, 17, 5, 13), seed=99, device=device)
        c = correlated_noise((2, 3, 17, 5, 13), seed=100, device=device)
    assert torch.equal(a, b)
    assert not torch.isclose(a, c).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_seed_per_video_is_reproducible_whatever_the_batch(device, backend):
    shape = (3, 2, 6, 4, 7)
    with use_backend(backend):
        batch = correlated_noise(shape, kind="progressive", seed=torch.tensor([11, 22, 11]), device=device)
        alone = correlated_noise((1, *shape[1:]), kind="progressive", seed=torch.tensor([22]), device=device)
    assert torch.equal(batch[1:2], alone)
    assert torch.equal(batch[0], batch[2])  # same seed, same video
    assert not torch.isclose(batch[0], batch[1]).any()


def test_large_seeds_use_every_bit(device):
    a = correlated_noise((1, 2, 3, 4, 4), seed=2**40 + 5, device=device)
    b = correlated_noise((1, 2, 3, 4, 4), seed=5, device=device)
    c = correlated_noise((1, 2, 3, 4, 4), seed=2**40 + 5, device=device)
    assert torch.equal(a, c) and not torch.isclose(a, b).any()


def test_seed_none_follows_torch_manual_seed(device):
    torch.manual_seed(5)
    a = correlated_noise((1, 2, 3, 4, 4), device=device)
    torch.manual_seed(5)
    b = correlated_noise((1, 2, 3, 4, 4), device=device)
    g = torch.Generator().manual_seed(5)
    c = correlated_noise((1, 2, 3, 4, 4), generator=g, device=device)
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_output_is_the_fp32_statistics_rounded_once(device, dtype):
    """Within one ulp: Triton's interpreter converts by truncation, compiled code rounds to nearest."""
    full = correlated_noise((2, 3, 9, 5, 7), kind="progressive", seed=3, device=device)
    low = correlated_noise((2, 3, 9, 5, 7), kind="progressive", seed=3, device=device, dtype=dtype)
    assert low.dtype == dtype
    torch.testing.assert_close(low.float(), full, rtol=torch.finfo(dtype).eps, atol=1e-6)


@pytest.mark.parametrize("shape,frame_dim", [
    ((2, 3, 1, 4, 5), 2),     # F = 1
    ((2, 3, 17, 5, 13), 2),   # F = 17 (not a multiple of 4), w = 13
    ((2, 5, 3, 17, 4), 3),
    ((2, 3, 5, 4, 17), 4),
    ((2, 17, 3, 4, 5), 1),
])
def test_every_frame_dim_indexes_the_same_noise(device, shape, frame_dim):
    """Moving the frame axis moves the noise: the kernel's column numbering is layout-independent."""
    for kind in ("mixed", "progressive"):
        x = correlated_noise(shape, kind=kind, alpha=1.5, seed=42, frame_dim=frame_dim, device=device)
        canonical_shape = list(shape)
        canonical_shape.insert(2, canonical_shape.pop(frame_dim))
        ref = correlated_noise(canonical_shape, kind=kind, alpha=1.5, seed=42, frame_dim=2, device=device)
        assert torch.equal(x.movedim(frame_dim, 2), ref)


def test_frame_dim_zero_is_one_video(device):
    x = correlated_noise((7, 3, 4, 5), kind="progressive", seed=8, frame_dim=0, device=device)
    ref = correlated_noise((1, 3, 7, 4, 5), kind="progressive", seed=8, frame_dim=2, device=device)
    assert torch.equal(x, ref[0].movedim(1, 0))


def test_progressive_follows_its_recurrence_on_the_same_draws(device):
    """iid and progressive with one seed share the draws z: progressive must be the AR(1) of them."""
    z = correlated_noise((2, 3, 6, 4, 4), kind="iid", seed=17, device=device).double()
    x = correlated_noise((2, 3, 6, 4, 4), kind="progressive", alpha=2.0, seed=17, device=device).double()
    keep, new = noise_kernels.mixing_coefficients("progressive", 2.0)
    ref = [z[:, :, 0]]
    for f in range(1, 6):
        ref.append(keep * ref[-1] + new * z[:, :, f])
    torch.testing.assert_close(x, torch.stack(ref, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_noise_is_forward_diffusion_with_the_same_noise(device, backend, dtype):
    x0 = torch.randn(3, 4, 5, 6, 7, device=device).to(dtype)
    alphas_cumprod = torch.linspace(0.9991, 0.0047, 1000, device=device)
    timesteps = torch.tensor([0, 500, 999], device=device)
    with use_backend(backend):
        xt, eps = add_noise(x0, timesteps, alphas_cumprod, kind="mixed", alpha=1.0, seed=21)
        ref_eps = correlated_noise(x0.shape, kind="mixed", alpha=1.0, seed=21, device=device, dtype=dtype)
    assert torch.equal(eps, ref_eps)
    a = alphas_cumprod.double()[timesteps].view(-1, 1, 1, 1, 1)
    expected = a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(xt.double(), expected, rtol=tol, atol=tol)


def test_add_noise_reads_strided_x0(device):
    x0 = torch.randn(2, 5, 4, 6, 3, device=device).transpose(1, 2)  # (B, C=4, F=5, h, w), not contiguous
    ac = torch.linspace(0.99, 0.01, 10, device=device)
    xt, eps = add_noise(x0, torch.tensor([2, 7], device=device), ac, kind="iid", seed=0)
    a = ac[[2, 7]].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps)


def test_compiles_fullgraph(device):
    def fn(x0, timesteps, ac):
        xt, eps = add_noise(x0, timesteps, ac, kind="progressive", alpha=2.0, seed=4)
        return xt + correlated_noise(x0.shape, kind="mixed", alpha=1.0, seed=5, device=x0.device)

    x0 = torch.randn(2, 3, 4, 5, 5, device=device)
    t = torch.tensor([3, 9], device=device)
    ac = torch.linspace(0.99, 0.01, 10, device=device)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x0, t, ac), fn(x0, t, ac))


def test_custom_op_registration_passes_opcheck(device):
    x0 = torch.randn(2, 3, 4, 5, device=device)
    args = (x0, torch.tensor([1, 2], device=device), torch.linspace(0.9, 0.1, 5, device=device), "mixed", 1.0, 2, 3, None)
    torch.library.opcheck(torch.ops.vidgen.add_noise.default, args)
    torch.library.opcheck(torch.ops.vidgen.correlated_noise.default, ([2, 3, 4, 5], "progressive", 2.0, 2, 3, None,
                                                                     torch.float32, device))


def test_launch_plan_switches_to_int64_and_refuses_what_a_grid_cannot_cover():
    small = noise_kernels.launch_plan((2, 4, 16, 64, 64), 2)
    assert not small.int64 and small.grid == (2 * 16,)
    big = noise_kernels.launch_plan((2, 4, 16, 2**12, 2**12), 2)  # 2**31 elements
    assert big.int64 and big.grid == (2 * 4 * 2**24 // 1024,)
    with pytest.raises(ValueError, match="programs"):
        noise_kernels.launch_plan((2**22, 4, 2, 2**10, 2**10), 2)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(alpha=float("nan")), ValueError, "alpha"),
    (dict(kind="pink"), ValueError, "kind"),
    (dict(frame_dim=5), ValueError, "frame_dim"),
    (dict(dtype=torch.int32), TypeError, "dtype"),
    (dict(seed=-3), ValueError, "seed"),
    (dict(seed=2**62), ValueError, "seed"),
    (dict(seed=torch.tensor([1, 2, 3])), ValueError, "seed"),
    (dict(seed=torch.tensor([1.0, 2.0])), TypeError, "seed"),
])
def test_bad_arguments_are_refused_by_name(device, kwargs, error, match):
    with pytest.raises(error, match=match):
        correlated_noise((2, 3, 4, 5, 5), device=device, **{"seed": 0, **kwargs})


@pytest.mark.parametrize("shape", [(), (2, 0, 4)])
def test_empty_shapes_are_refused(device, shape):
    with pytest.raises(ValueError, match="shape"):
        correlated_noise(shape, device=device, seed=0)


def test_add_noise_bad_arguments(device):
    x0 = torch.randn(2, 3, 4, 5, device=device)
    ac = torch.linspace(0.9, 0.1, 5, device=device)
    with pytest.raises(ValueError, match="timesteps"):
        add_noise(x0, torch.tensor([1, 2, 3], device=device), ac, seed=0)
    with pytest.raises(TypeError, match="timesteps"):
        add_noise(x0, torch.tensor([1.0, 2.0], device=device), ac, seed=0)
    with pytest.raises(TypeError, match="x0"):
        add_noise(x0.long(), torch.tensor([1, 2], device=device), ac, seed=0)


def test_a_forced_backend_that_cannot_run_says_why(device):
    if device.type != "cpu":
        pytest.skip("the CUDA backend is only unavailable for CPU tensors")
    with use_backend("cuda"), pytest.raises(BackendUnavailable, match="no cuda implementation"):
        correlated_noise((1, 2, 3, 4), seed=0, device=device)
    with pytest.raises(BackendUnavailable, match="VIDGEN_BACKEND"):
        with use_backend("gpu"):
            pass
