"""The CUDA library (csrc/, C ABI + ctypes): it builds wherever nvcc is, loads on a machine without a
GPU, and a call there is a clear Python error, never a crash. Its Philox, compiled for the host,
draws Triton's streams. With a GPU, the CUDA op is checked against the reference and the Triton op.
"""
import ctypes
import os
import shutil

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import vidgen
from vidgen.ops import _cuda_lib
from vidgen.kernels.guidance import guided_step_reference
from vidgen.ops import guided_step, use_backend

HAS_GPU = torch.cuda.is_available()


def nvcc_present() -> bool:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(home, "bin", "nvcc"))


@pytest.fixture(scope="module")
def lib():
    lib, reason = _cuda_lib._load()
    if lib is None:
        if nvcc_present() and os.environ.get("VIDGEN_SKIP_CUDA_BUILD") != "1":
            pytest.fail(f"nvcc is present but the CUDA library did not load: {reason}")
        pytest.skip(f"CUDA library not built here: {reason}")
    return lib


def test_library_loads_with_matching_abi(lib):
    assert lib.vidgen_abi_version() == _cuda_lib.ABI_VERSION
    assert lib.vidgen_guided_step_args_size() == ctypes.sizeof(_cuda_lib.GuidedStepArgs)


def valid_args(**overrides) -> _cuda_lib.GuidedStepArgs:
    """Arguments that pass the library's checks; the pointers are never dereferenced by these tests."""
    fake = 1 << 20
    args = dict(out=fake, sample=fake, eps_cond=fake, batch=2, pre=4, frames=16, post=64, alpha_t=0.5, alpha_p=0.6,
                alpha_t_stride=-1, alpha_p_stride=-1, guidance_scale=7.5, clip_range=float("inf"), coef_new=1.0)
    args.update(overrides)
    return _cuda_lib.GuidedStepArgs(**args)


def call(lib, args):
    _cuda_lib.check(lib.vidgen_guided_step(ctypes.byref(args), None), "guided_step")


@pytest.mark.parametrize("overrides,match", [
    (dict(out=None), "out, sample and eps_cond are required"),
    (dict(batch=0), "every dimension must be positive"),
    (dict(batch=70000), "batch exceeds 65535"),
    (dict(dtype=5), "dtype must be"),
    (dict(prediction=3), "unknown prediction type"),
    (dict(noise_mode=1), "noise_mode GIVEN needs a noise tensor"),
    (dict(alpha_t_stride=1), "an alpha stride >= 0 needs its values pointer"),
    (dict(partials=1 << 20), r"rescale \(partials\) needs eps_uncond"),
])
def test_invalid_arguments_are_an_error_message(lib, overrides, match):
    with pytest.raises(RuntimeError, match=f"guided_step failed: guided_step: {match}"):
        call(lib, valid_args(**overrides))


@pytest.mark.skipif(HAS_GPU, reason="checks the behaviour on a machine without a GPU")
def test_call_without_a_gpu_is_a_clear_python_error(lib):
    with pytest.raises(RuntimeError, match="vidgen CUDA library: guided_step failed: cudaSetDevice: "):
        call(lib, valid_args())
    count = ctypes.c_int(-1)
    assert lib.vidgen_device_count(ctypes.byref(count)) != 0 and count.value == 0


# ---- Philox: the library's (host build) against Triton's -----------------------------------------
@triton.jit
def _philox_kernel(words_ptr, normals_ptr, counters_ptr, seed, N: tl.constexpr):
    i = tl.arange(0, N)
    counter = tl.load(counters_ptr + i)
    w0, w1, w2, w3 = tl.randint4x(seed, counter)
    z0, z1, z2, z3 = tl.randn4x(seed, counter)
    for k, (w, z) in enumerate(((w0, z0), (w1, z1), (w2, z2), (w3, z3))):
        tl.store(words_ptr + 4 * i + k, w.to(tl.int32, bitcast=True))
        tl.store(normals_ptr + 4 * i + k, z)


def host_philox(lib, seed, counters):
    counters = np.ascontiguousarray(counters, dtype=np.uint64)
    words = np.empty((len(counters), 4), dtype=np.uint32)
    normals = np.empty((len(counters), 4), dtype=np.float32)
    status = lib.vidgen_philox_randn4x_host(seed, counters.ctypes.data, len(counters), words.ctypes.data,
                                            normals.ctypes.data)
    _cuda_lib.check(status, "philox_randn4x_host")
    return words, normals


def normals_tolerance(device: torch.device) -> float:
    """Host libm against Triton's Box-Muller normals: numpy's rounding in the interpreter (CPU
    run); compiled (GPU run), the device's math (``tl.sqrt`` is the fast square root), a few ulp."""
    return 2e-6 if device.type == "cpu" else 1e-5


@pytest.mark.parametrize("seed", [0, 123456789, 2**40 + 17])
def test_host_philox_is_tritons_philox(lib, seed, device):
    counters = torch.tensor([0, 1, 2, 3, 1000, 2**31 - 1, 2**31 + 5, 2**33 + 7], dtype=torch.int64)
    words = torch.empty((len(counters), 4), dtype=torch.int32, device=device)
    normals = torch.empty((len(counters), 4), dtype=torch.float32, device=device)
    _philox_kernel[(1,)](words, normals, counters.to(device), seed, N=len(counters))
    host_words, host_normals = host_philox(lib, seed, counters.numpy())
    np.testing.assert_array_equal(host_words.view(np.int32), words.cpu().numpy())  # bit for bit
    tol = normals_tolerance(device)
    np.testing.assert_allclose(host_normals, normals.cpu().numpy(), rtol=tol, atol=tol)


def test_host_normals_reproduce_correlated_noise_counters(lib, device):
    """vidgen.kernels.noise's layout: video b, frame f, column col -> lane f % 4 of
    counter (b * groups + f // 4) * cols + col. The Triton kernel draws the noise: through the
    interpreter on a CPU run, compiled on a GPU run (the reference backend draws other numbers)."""
    B, C, F, P, seed = 2, 3, 6, 5, 99
    with use_backend("triton"):
        noise = vidgen.ops.correlated_noise((B, C, F, P), kind="iid", alpha=0.0, seed=seed, device=device)
    cols, groups = C * P, (F + 1 + 3) // 4
    b, c, f, p = np.meshgrid(*(np.arange(n) for n in (B, C, F, P)), indexing="ij")
    counters = (b * groups + f // 4) * cols + c * P + p
    _, normals = host_philox(lib, seed, counters.reshape(-1))
    expected = normals[np.arange(counters.size), (f % 4).reshape(-1)].reshape(B, C, F, P)
    tol = normals_tolerance(device)
    np.testing.assert_allclose(expected, noise.cpu().numpy(), rtol=tol, atol=tol)


# ---- On a GPU: the CUDA op ------------------------------------------------------------------------
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


def cuda_randn(shape, dtype, seed, misaligned=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    flat = torch.randn(int(np.prod(shape)) + 1, device="cuda", generator=g).to(dtype)
    return (flat[1:] if misaligned else flat[:-1]).view(shape)  # misaligned: 16-byte vectors impossible


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,misaligned", [((2, 4, 16, 32, 32), False), ((3, 4, 5, 7, 9), False),
                                              ((2, 4, 16, 32, 32), True)])
def test_cuda_op_matches_reference(lib, dtype, shape, misaligned):
    x, cond, uncond, prior, z = (cuda_randn(shape, dtype, s, misaligned) for s in range(5))
    a_t = torch.tensor([0.3, 0.5, 0.7][:shape[0]], device="cuda")
    for kwargs in (dict(eta=0.0, prediction_type="epsilon", guidance_rescale=0.7, clip_sample_range=None),
                   dict(eta=0.6, prediction_type="v_prediction", guidance_rescale=0.0, clip_sample_range=1.0)):
        with use_backend("cuda"):
            out, x0 = guided_step(x, cond, uncond, prior, guidance_scale=5.0, prior_strength=0.1, alpha_prod_t=a_t,
                                  alpha_prod_prev=0.8, noise=z if kwargs["eta"] > 0 else None,
                                  return_pred_original=True, **kwargs)
        ref, ref_x0 = guided_step_reference(x.double(), cond.double(), uncond.double(), prior.double(), 5.0, 0.1,
                                            kwargs["guidance_rescale"], a_t, 0.8, kwargs["eta"], z.double(),
                                            kwargs["prediction_type"], kwargs["clip_sample_range"], False, False)
        tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
        torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol)
        torch.testing.assert_close(x0.double(), ref_x0.double(), rtol=tol, atol=tol)


@gpu
@pytest.mark.parametrize("kind", ["iid", "mixed", "progressive"])
def test_cuda_in_kernel_noise_matches_triton(lib, kind):
    x, cond = (cuda_randn((2, 4, 9, 8, 8), torch.float32, s) for s in range(2))
    args = dict(alpha_prod_t=0.3, alpha_prod_prev=0.5, eta=1.0, noise_kind=kind, noise_alpha=1.5, seed=1234)
    with use_backend("cuda"):
        cuda = guided_step(x, cond, **args)
    with use_backend("triton"):
        triton_out = guided_step(x, cond, **args)
    torch.testing.assert_close(cuda, triton_out, rtol=1e-5, atol=1e-5)


@gpu
def test_cuda_graph_replays_with_new_timesteps(lib):
    x, cond, uncond = (cuda_randn((2, 4, 8, 16, 16), torch.float16, s) for s in range(3))
    a_t, a_p = torch.tensor([0.3, 0.4], device="cuda"), torch.tensor([0.5, 0.6], device="cuda")
    with use_backend("cuda"):
        guided_step(x, cond, uncond, guidance_scale=7.5, alpha_prod_t=a_t, alpha_prod_prev=a_p)  # warm up
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = guided_step(x, cond, uncond, guidance_scale=7.5, alpha_prod_t=a_t, alpha_prod_prev=a_p)
        a_t.copy_(torch.tensor([0.6, 0.7])), a_p.copy_(torch.tensor([0.8, 0.9]))
        graph.replay()
        expected = guided_step(x, cond, uncond, guidance_scale=7.5, alpha_prod_t=a_t, alpha_prod_prev=a_p)
    torch.testing.assert_close(out, expected)
