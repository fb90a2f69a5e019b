"""The CUDA library (csrc/, C ABI + ctypes): it builds wherever nvcc is, loads on a machine without a
GPU, and a call there is a clear Python error, never a crash. Its Philox, compiled for the host,
draws Triton's streams. With a GPU, the CUDA op is checked against the reference and the Triton op.
"""
import ast
import ctypes
import inspect
import itertools
import os
import re
import shutil

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import vidgen
from vidgen.ops import _cuda_lib
from vidgen.kernels import noise as noise_kernels
from vidgen.kernels.guidance import DDIMStep, Guidance, guided_step_reference
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
    args = dict(out=fake, sample=fake, eps_cond=fake, batch=2, pre=4, frames=16, post=64, level_t=0.5, level_p=0.6,
                level_t_stride=-1, level_p_stride=-1, guidance_scale=7.5, clip_range=float("inf"), coef_new=1.0)
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
    (dict(level_t_stride=1), "a noise-level stride >= 0 needs its values pointer"),
    (dict(rule=2), "unknown step rule"),
    (dict(rule=1, noise_mode=1, noise=1 << 20), "the Euler step takes no noise, clipping or inversion"),
    (dict(rule=1, clip_range=1.0), "the Euler step takes no noise, clipping or inversion"),
    (dict(guidance_scales=1 << 20), "per-frame guidance scales need scale_frames > 0 and scale_post > 0"),
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


# ---- The noise stream: csrc's copy pinned to the Triton helpers (source; no library needed) ----------
CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def _csrc(name: str) -> str:
    with open(os.path.join(CSRC, name), encoding="utf-8") as f:
        return f.read()


def _one(pattern: str, text: str, what: str) -> re.Match:
    found = re.findall(pattern, text)
    assert len(found) == 1, f"csrc: expected one {what} ({pattern!r}), found {len(found)}: update the pin with the code"
    return re.search(pattern, text)


def _triton_function(name: str) -> ast.FunctionDef:
    [fn] = [node for node in ast.parse(inspect.getsource(noise_kernels)).body
            if isinstance(node, ast.FunctionDef) and node.name == name]
    return fn


def _assigned(fn: ast.FunctionDef, name: str) -> list[ast.expr]:
    """The values assigned to ``name`` in ``fn``, in order (nested blocks included)."""
    return [node.value for node in ast.walk(fn) if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)]


def _python(c_expr: str, **names: str) -> str:
    """A C expression of guided_step.cu as Python: struct fields bare (renamed by ``names``), a
    Normals4 lane as the draw, fmaf(x, y, z) as x * y + z, integer division."""
    expr = re.sub(r"\ba\.(\w+)", lambda m: names.get(m.group(1), m.group(1)), c_expr.strip())
    expr = re.sub(r"\b(\w+)\.z\[\w+\]", r"\1", expr)
    expr = re.sub(r"^fmaf\(([^,]+),([^,]+),(.+)\)$", r"(\1) * (\2) + (\3)", expr)
    return expr.replace("/", "//")


def _equal_everywhere(triton_expr: str, cuda_expr: str, **ranges) -> None:
    names = sorted(ranges)
    for values in itertools.product(*(ranges[n] for n in names)):
        env = {"cdiv": lambda a, b: -(-a // b), **dict(zip(names, values))}
        assert eval(triton_expr, env) == eval(cuda_expr, env), (triton_expr, cuda_expr, env)


def test_cuda_noise_stream_is_the_triton_helpers_stream():
    """csrc/guided_step.cu draws in-kernel noise as kernels/noise.py's helpers do (the one definition,
    which both Triton kernels call): the same Philox key and counters, the same shared draw, the same
    correlation of each kind. Each fact is read from both sources and compared by evaluating it."""
    cu = _csrc("guided_step.cu")
    origin, normals, shared, correlate = (_triton_function(n) for n in
                                          ("philox_origin", "frame_normals", "shared_normal", "correlate"))
    plan = _triton_function("launch_plan")
    # counters: one seed for the batch starts video b at b * num_groups * cols; one per video at 0
    batch_counter, video_counter = (ast.unparse(v) for v in _assigned(origin, "counter"))
    num_groups = ast.unparse(_assigned(plan, "num_groups")[0])
    cuda_counter = _one(r"counter = \(a\.seeds != nullptr \? 0 : (.+?)\) \+ col;", cu, "counter").group(1)
    cuda_groups = _one(r"philox_groups = (\(a\.frames \+ 4\) / 4);", cu, "Philox groups").group(1)
    assert video_counter == "col" and num_groups == "cdiv(F + 1, 4)"
    cuda_groups = _python(cuda_groups, frames="F")
    _equal_everywhere(batch_counter.replace("num_groups", f"({num_groups})"),
                      f"{_python(cuda_counter)} + col".replace("philox_groups", f"({cuda_groups})"),
                      video=range(4), F=range(1, 14), cols=(1, 7, 64), col=(0, 5))
    _one(r"key = a\.seeds != nullptr \? static_cast<uint64_t>\(a\.seeds\[video\]\) : a\.seed;", cu, "Philox key")
    assert [ast.unparse(v) for v in _assigned(origin, "key")][1] == "tl.load(seeds_ptr + video)"
    # draws: frames 4g..4g+3 at counter + g * cols; the shared draw is index F (lane F % 4 of group F // 4)
    [draw] = [n for n in ast.walk(normals) if isinstance(n, ast.Call) and ast.unparse(n.func) == "tl.randn4x"]
    group_counter = ast.unparse(draw.args[1])
    for name in ("group", "g"):
        _one(rf"randn4x\(key, ctr \+ {name} \* cols\)", cu, f"draw of frame group {name}")
    _equal_everywhere(group_counter, "counter + group * cols", counter=(0, 9), group=range(4), cols=(1, 7))
    [shared_call] = [n for n in ast.walk(shared) if isinstance(n, ast.Call) and ast.unparse(n.func) == "frame_normals"]
    [lane_call] = [n for n in ast.walk(shared) if isinstance(n, ast.Call) and ast.unparse(n.func) == "pick_lane"]
    cuda_shared = _one(r"randn4x\(key, ctr \+ (\(a\.frames / 4\) \* cols)\)", cu, "shared draw").group(1)
    cuda_lane = _one(r"lane = static_cast<int>\((a\.frames % 4)\);", cu, "shared lane").group(1)
    _equal_everywhere(group_counter.replace("group", f"({ast.unparse(shared_call.args[2])})"),
                      f"counter + {_python(cuda_shared, frames='num_frames')}", counter=(0, 9),
                      num_frames=range(1, 14), cols=(1, 7))
    _equal_everywhere(ast.unparse(lane_call.args[4]), _python(cuda_lane, frames="num_frames"),
                      num_frames=range(1, 14))
    # correlation: kind ids, and each kind's value from the draw z (keep/new: mixing_coefficients)
    kinds = dict(re.findall(r"VIDGEN_NOISE_(IID|MIXED|PROGRESSIVE) = (\d)", _csrc("vidgen_cuda.h")))
    assert {k.lower(): int(v) for k, v in kinds.items()} == {"iid": 0, "mixed": 1, "progressive": 2}
    assert noise_kernels.KINDS == ("iid", "mixed", "progressive")
    returned = ast.unparse(next(n for n in ast.walk(correlate) if isinstance(n, ast.Return)).value)
    assert returned == "tl.where(kind == 1, mixed, tl.where(kind == 2, progressive, z))"
    [mixed], [progressive] = _assigned(correlate, "mixed"), _assigned(correlate, "progressive")
    first, later = (ast.unparse(a) for a in progressive.args[1:])
    assert ast.unparse(progressive.args[0]) == "f == 0" and first == "z"
    cuda_mixed = _one(r"value = (fmaf\(a\.coef_keep, shared, .+?\));", cu, "mixed value").group(1)
    cuda_later = _one(r"\(group > 0 \|\| lane > 0\)\) \{\s*value = (fmaf\(.+?\));", cu, "progressive value").group(1)
    cuda_replay = _one(r"prev = \(g == 0 && lane == 0\) \? z\.z\[0\] : (fmaf\(.+?\));", cu, "replayed value").group(1)
    values = dict(coef_keep=(0.0, 0.7071, 0.8944), coef_new=(1.0, 0.7071, 0.4472), z=(-1.3, 0.25),
                  shared=(0.0, 2.1), prev=(-0.6, 1.7))
    _equal_everywhere(ast.unparse(mixed), _python(cuda_mixed), **values)
    _equal_everywhere(later, _python(cuda_later), **values)
    _equal_everywhere(later, _python(cuda_replay), **values)


def test_cuda_philox_is_tritons_philox_in_the_source():
    """The constants of csrc/philox.cuh are those of triton.language.random (the host-build test
    above checks the words bit for bit where the library is built; this holds everywhere)."""
    cuh, triton_random = _csrc("philox.cuh"), inspect.getsource(tl.random)
    constants = dict(re.findall(r"(PHILOX_\w+): tl\.constexpr = (0x[0-9A-F]{8})\b", triton_random))
    assert _one(r"k0 \+= (0x[0-9A-F]+)u;", cuh, "key step A").group(1) == constants["PHILOX_KEY_A"]
    assert _one(r"k1 \+= (0x[0-9A-F]+)u;", cuh, "key step B").group(1) == constants["PHILOX_KEY_B"]
    assert _one(r"c0 = mulhi32\((0x[0-9A-F]+)u, old2\)", cuh, "round B").group(1) == constants["PHILOX_ROUND_B"]
    assert _one(r"c2 = mulhi32\((0x[0-9A-F]+)u, old0\)", cuh, "round A").group(1) == constants["PHILOX_ROUND_A"]
    assert int(_one(r"round < (\d+);", cuh, "round count").group(1)) == tl.random.N_ROUNDS_DEFAULT.value
    scale = _one(r"\* ([0-9.e-]+)f;", cuh, "uniform scale").group(1)
    assert scale in triton_random and "x = x < 0 ? ~x : x;" in cuh
    for constant in (_one(r"fmaxf\(([0-9.e-]+)f, u1\)", cuh, "Box-Muller floor").group(1),
                     _one(r"theta = ([0-9.]+)f \* u2", cuh, "Box-Muller angle").group(1)):
        assert re.search(rf"\b{re.escape(constant)}\b", triton_random), constant


def test_cuda_launcher_packs_every_setting_into_the_abi_struct():
    """The ctypes struct the CUDA launcher passes, for the three kinds of z (none, given, drawn)."""
    from vidgen.kernels.guidance import NOISE_GENERATED, NOISE_GIVEN, NOISE_NONE, RULE_DDIM, NoiseDraw

    x, cond, uncond, prior, z, out, x0 = (torch.randn(2, 3, 5, 4, 6) for _ in range(7))
    a_t, partials = torch.tensor([0.3, 0.4]), torch.empty(2, _cuda_lib.NUM_PARTIALS, 4)
    guidance = Guidance(scale=7.5, prior_strength=0.2, rescale=0.7)
    step = DDIMStep(a_t, 0.6, eta=0.5, prediction_type="v_prediction", clip_sample_range=1.5,
                    use_clipped_model_output=True)
    args = _cuda_lib.guided_step_args(out, x0, x, cond, uncond, prior, partials, guidance, step, z)
    assert (args.out, args.pred_original, args.sample, args.eps_cond, args.eps_uncond, args.prior_cond,
            args.noise, args.partials, args.level_t_values) == tuple(
        t.data_ptr() for t in (out, x0, x, cond, uncond, prior, z, partials, a_t))
    assert (args.level_p_values, args.seeds, args.guidance_scales) == (None, None, None)
    assert (args.batch, args.pre, args.frames, args.post) == (2, 1, 1, 3 * 5 * 4 * 6)
    assert (args.level_t_stride, args.level_p_stride, args.level_p) == (1, -1, pytest.approx(0.6))
    assert (args.guidance_scale, args.prior_strength, args.guidance_rescale, args.eta, args.clip_range) == \
        pytest.approx((7.5, 0.2, 0.7, 0.5, 1.5))
    assert (args.dtype, args.rule, args.prediction, args.use_clipped, args.inverse, args.noise_mode) == \
        (0, RULE_DDIM, 1, 1, 0, NOISE_GIVEN)
    assert (args.scale_frames, args.scale_post) == (0, 1)

    seeds = torch.tensor([5, 9])
    drawn = _cuda_lib.guided_step_args(out, None, x, cond, None, None, None, Guidance(), DDIMStep(0.3, 0.6, eta=1.0),
                                       NoiseDraw("mixed", 1.0, seeds=seeds))
    assert (drawn.noise_mode, drawn.noise_kind, drawn.noise, drawn.seeds) == (NOISE_GENERATED, 1, None,
                                                                              seeds.data_ptr())
    assert (drawn.batch, drawn.pre, drawn.frames, drawn.post) == (2, 3, 5, 4 * 6)  # frames on dim 2
    assert (drawn.coef_keep, drawn.coef_new) == pytest.approx(noise_kernels.mixing_coefficients("mixed", 1.0))
    assert (drawn.pred_original, drawn.eps_uncond, drawn.partials, drawn.clip_range) == (None, None, None,
                                                                                         float("inf"))
    batch_seed = _cuda_lib.guided_step_args(out, None, x, cond, None, None, None, Guidance(),
                                            DDIMStep(0.3, 0.6, eta=1.0), NoiseDraw("progressive", 2.0, seed=2**40 + 3))
    assert (batch_seed.seed, batch_seed.seeds, batch_seed.noise_kind) == (2**40 + 3, None, 2)
    inverse = _cuda_lib.guided_step_args(out, None, x, cond, None, None, None, Guidance(),
                                         DDIMStep(0.3, 0.6, inverse=True), None)
    assert (inverse.noise_mode, inverse.inverse, inverse.eta) == (NOISE_NONE, 1, 0.0)


def test_cuda_launcher_packs_an_euler_step_with_per_frame_guidance():
    """SVD's step: Euler between two sigmas (device tensors), a guidance scale per frame on dim 1."""
    from vidgen.kernels.guidance import NOISE_NONE, RULE_EULER, EulerStep

    x, cond, uncond, out = (torch.randn(2, 5, 3, 4, 6) for _ in range(4))  # (B, F, C, h, w)
    sigmas, scales = torch.tensor([7.0, 3.5]), torch.linspace(1.0, 3.0, 5)
    step = EulerStep(sigmas[0:1], sigmas[1:2], prediction_type="v_prediction")
    args = _cuda_lib.guided_step_args(out, None, x, cond, uncond, None, None, Guidance(scales, frame_dim=1), step, None)
    assert (args.rule, args.prediction, args.noise_mode, args.eta, args.inverse, args.use_clipped) == \
        (RULE_EULER, 1, NOISE_NONE, 0.0, 0, 0)
    assert (args.level_t_values, args.level_p_values, args.level_t_stride, args.level_p_stride) == \
        (sigmas.data_ptr(), sigmas.data_ptr() + 4, 0, 0)
    assert (args.guidance_scales, args.scale_frames, args.scale_post) == (scales.data_ptr(), 5, 3 * 4 * 6)
    assert args.clip_range == float("inf") and (args.pre, args.frames, args.post) == (1, 1, 5 * 3 * 4 * 6)
    floats = _cuda_lib.guided_step_args(out, None, x, cond, uncond, None, None, Guidance(2.5),
                                        EulerStep(7.0, 0.0), None)
    assert (floats.level_t, floats.level_p, floats.level_t_stride, floats.guidance_scale, floats.prediction) == \
        (7.0, 0.0, -1, 2.5, 0)


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
        ref, ref_x0 = guided_step_reference(
            x.double(), cond.double(), uncond.double(), prior.double(),
            Guidance(scale=5.0, prior_strength=0.1, rescale=kwargs["guidance_rescale"]),
            DDIMStep(a_t, 0.8, eta=kwargs["eta"], prediction_type=kwargs["prediction_type"],
                     clip_sample_range=kwargs["clip_sample_range"]), z.double())
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
