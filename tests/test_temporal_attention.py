"""vidgen.ops.temporal_attention against the float64 reference: forward, LSE, gradients, layouts, errors."""
import pytest
import torch

from vidgen.kernels import temporal_attention as kernels
from vidgen.ops import temporal_attention, use_backend
from vidgen.ops.temporal_attention import _temporal_attention_forward

# Tolerances against the float64 reference: fp32 math is exact up to rounding; fp16/bf16 are
# dominated by the rounding of the inputs to the probabilities before the P @ V product.
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


def make_qkv(B, F, N, H, D, layout, dtype, device, generator):
    """Three (B, F, N, H, D) views in one of the layouts a UNet produces (or a random strided one)."""
    def one():
        if layout == "image":        # (B*F, N, H*D) projection output
            base = torch.randn(B * F, N, H * D, generator=generator).to(device, dtype)
            return base.view(B, F, N, H, D)
        if layout == "frame_major":  # (B*N, F, H*D) projection output
            base = torch.randn(B * N, F, H * D, generator=generator).to(device, dtype)
            return base.view(B, N, F, H, D).transpose(1, 2)
        # strided: padded head dim, permuted axes, a slice of a fused qkv-like buffer
        base = torch.randn(N, B, H, F, 2 * D + 3, generator=generator).to(device, dtype)
        return base[..., 1:2 * D + 1:2].permute(1, 3, 0, 2, 4)
    return one(), one(), one()


def reference64(q, k, v, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return kernels.temporal_attention_reference(q.double(), k.double(), v.double(), scale)


CASES = [  # B, F, N, H, D, layout, dtype
    (1, 1, 3, 2, 8, "image", torch.float32),
    (2, 2, 5, 1, 40, "frame_major", torch.float32),
    (1, 16, 3, 2, 40, "image", torch.float16),
    (1, 17, 5, 1, 80, "strided", torch.bfloat16),
    (2, 24, 3, 1, 40, "frame_major", torch.float16),
    (1, 33, 3, 1, 160, "image", torch.float32),
    (1, 128, 1, 1, 8, "frame_major", torch.float32),   # two frame tiles: online softmax
    (1, 128, 1, 1, 40, "strided", torch.float16),
]


@pytest.mark.parametrize("B,F,N,H,D,layout,dtype", CASES)
def test_forward_matches_float64_reference(B, F, N, H, D, layout, dtype, device):
    g = torch.Generator().manual_seed(F * 1000 + D)
    q, k, v = make_qkv(B, F, N, H, D, layout, dtype, device, g)
    q = q * 2.0  # sharper softmax than unit scores

    out, lse = _temporal_attention_forward(q, k, v, D ** -0.5)
    ref_out, ref_lse = reference64(q, k, v)

    assert out.shape == (B, F, N, H, D) and out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_out.double(), atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4 if dtype == torch.float32 else 2e-2, rtol=1e-4)


GRAD_CASES = [
    (1, 1, 3, 1, 8, "image", torch.float32),
    (2, 2, 3, 2, 40, "frame_major", torch.float32),
    (1, 17, 3, 1, 80, "strided", torch.float32),
    (1, 24, 3, 1, 160, "image", torch.float16),      # BLOCK_D=256: dq in its own kernel
    (1, 16, 5, 2, 40, "image", torch.bfloat16),      # 16-byte aligned rows (ALIGN=8)
    (1, 33, 3, 1, 40, "frame_major", torch.float16),
    (1, 70, 1, 1, 16, "frame_major", torch.float32),  # two frame tiles: dk/dv and dq kernels
    (1, 128, 1, 1, 8, "strided", torch.float32),
]


@pytest.mark.parametrize("B,F,N,H,D,layout,dtype", GRAD_CASES)
def test_gradients_match_float64_autograd(B, F, N, H, D, layout, dtype, device):
    g = torch.Generator().manual_seed(7 * F + D)
    q, k, v = (t.detach().requires_grad_() for t in make_qkv(B, F, N, H, D, layout, dtype, device, g))
    grad_out = torch.randn(B, F, N, H, D, generator=g).to(device, dtype)

    temporal_attention(q, k, v).backward(grad_out)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    reference64(q64, k64, v64)[0].backward(grad_out.double())
    tol = {torch.float32: 5e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    for name, got, want in (("dq", q.grad, q64.grad), ("dk", k.grad, k64.grad), ("dv", v.grad, v64.grad)):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


def test_gradient_with_expanded_grad_out_and_custom_scale(device):
    """``out.sum().backward()`` hands the backward a stride-0 gradient; scale must flow into dq/dk."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (t.detach().requires_grad_() for t in make_qkv(1, 6, 3, 2, 16, "image", torch.float32, device, g))
    (temporal_attention(q, k, v, scale=0.7) * 1.0).sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    reference64(q64, k64, v64, 0.7)[0].sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=5e-5)


def test_output_is_a_free_view_in_both_unet_layouts(device):
    B, F, N, H, D = 2, 5, 3, 2, 8
    g = torch.Generator().manual_seed(0)
    image = torch.randn(B * F, N, H * D, generator=g).to(device)
    out = temporal_attention(*(image.view(B, F, N, H, D),) * 3)
    assert out.view(B * F, N, H * D).shape == image.shape  # .view raises if a copy were needed

    frames = torch.randn(B * N, F, H * D, generator=g).to(device)
    as_video = frames.view(B, N, F, H, D).transpose(1, 2)
    out = temporal_attention(as_video, as_video, as_video)
    assert out.stride() == as_video.stride()
    assert out.transpose(1, 2).view(B * N, F, H * D).shape == frames.shape


def test_triton_and_torch_backends_agree(device):
    g = torch.Generator().manual_seed(1)
    q, k, v = make_qkv(1, 9, 5, 2, 24, "strided", torch.float32, device, g)
    with use_backend("torch"):
        want = temporal_attention(q, k, v)
    torch.testing.assert_close(temporal_attention(q, k, v), want, atol=2e-5, rtol=2e-5)
    assert want.stride() == torch.empty_like(q).stride()


def test_more_than_65535_problems_in_one_launch(device):
    """B*N*H = 2 * 4097 * 8 = 65,552 problems (past xformers' and mem-efficient SDPA's grid limit)."""
    if device.type == "cpu":
        pytest.skip("2,048 programs take minutes in the interpreter; the launch math is checked by "
                    "test_launch_plan_covers_every_problem_and_frame, this runs on the GPU")
    B, F, N, H, D = 2, 16, 64 * 64 + 1, 8, 40
    g = torch.Generator().manual_seed(2)
    q, k, v = make_qkv(B, F, N, H, D, "image", torch.float32, device, g)
    torch.testing.assert_close(temporal_attention(q, k, v).double(), reference64(q, k, v)[0], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("B,F,N,H", [
    (2, 16, 64 * 64, 8),         # SD1.5 512x512 top level: 65,536 problems
    (4, 32, 128 * 128, 8),       # 524,288 problems, 2^28 q elements at D=40... and more
    (16, 24, 128 * 128, 16),     # 4.2M problems: 2.6e9 elements at D=40, past 2^31
    (1, 200, 3, 1),              # F > 64: four frame tiles of 64 (the last partial)
])
def test_launch_plan_covers_every_problem_and_frame(B, F, N, H):
    """Pure shape logic (no device): 1-D grid, every (problem, frame) owned by exactly one row."""
    plan = kernels.launch_plan(B, F, N, H)
    P, slot, per_group, tiles = plan.num_problems, plan.slot, plan.per_group, plan.num_tiles
    (programs,) = plan.grid
    assert P == B * N * H and programs <= 2**31 - 1
    assert slot * per_group <= kernels.BLOCK_M and slot * tiles >= F and slot * (tiles - 1) < F
    groups = programs // tiles
    assert programs == groups * tiles and (groups - 1) * per_group < P <= groups * per_group
    # The kernel's row decode, replayed for the last program (the one that sees the ragged edge).
    rows = torch.arange(kernels.BLOCK_M, dtype=torch.int64)
    last = programs - 1
    member, frame = rows // slot, (last % tiles) * slot + rows % slot
    problem = (last // tiles) * per_group + member
    valid = (member < per_group) & (frame < F) & (problem < P)
    assert int(problem[valid].max()) == P - 1 and int(frame[valid].max()) == F - 1


def test_launch_plan_refuses_more_programs_than_a_grid_holds():
    with pytest.raises(ValueError, match="2\\*\\*31"):
        kernels.launch_plan(2**20, 128, 2**20, 8)


@pytest.mark.parametrize("mutate,error,match", [
    (lambda q, k, v: (q.to(torch.int32), k, v), TypeError, "q: expected dtype"),
    (lambda q, k, v: (q, k.half(), v), TypeError, "one dtype"),
    (lambda q, k, v: (q, k[:, :3], v), ValueError, "k: expected shape"),
    (lambda q, k, v: (q.flatten(-2), k, v), ValueError, "q: expected a 5-D"),
    (lambda q, k, v: (q.new_zeros(1, 2, 3, 1, 264),) * 3, ValueError, "D=264"),
])
def test_bad_input_raises_a_clear_error(mutate, error, match, device):
    q, k, v = make_qkv(1, 4, 3, 2, 8, "image", torch.float32, device, torch.Generator().manual_seed(0))
    with pytest.raises(error, match=match):
        temporal_attention(*mutate(q, k, v))


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_bad_scale_raises(scale, device):
    q, k, v = make_qkv(1, 4, 3, 2, 8, "image", torch.float32, device, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="scale"):
        temporal_attention(q, k, v, scale=scale)


def test_custom_op_registration_passes_opcheck(device):
    """Fake impl, schema and autograd registration agree with the real op (torch.compile-ready)."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (t.detach().requires_grad_() for t in make_qkv(1, 3, 3, 1, 8, "frame_major", torch.float32, device, g))
    torch.library.opcheck(_temporal_attention_forward, (q, k, v, 0.35))


def test_vector_align_only_when_every_row_starts_on_16_bytes():
    B, F, N, H = 1, 4, 3, 2
    image = torch.empty(B * F, N, H * 40, dtype=torch.float16).view(B, F, N, H, 40)
    assert kernels.vector_align(40, image, image) == 8
    frame_major = torch.empty(B * N, F, H * 40, dtype=torch.bfloat16).view(B, N, F, H, 40).transpose(1, 2)
    assert kernels.vector_align(40, frame_major, image) == 8
    odd_dim = torch.empty(B * F, N, H * 36, dtype=torch.float16).view(B, F, N, H, 36)
    assert kernels.vector_align(36, odd_dim) == 1
    shifted = torch.empty(B * F * N * H * 40 + 1, dtype=torch.float16)[1:].view(B, F, N, H, 40)
    assert kernels.vector_align(40, image, shifted) == 1
    strided = torch.empty(B, F, N, H, 80, dtype=torch.float16)[..., ::2]
    assert kernels.vector_align(40, strided) == 1
    assert kernels.vector_align(40, image.float()) == 1  # fp32 keeps scalar access


def test_aligned_and_unaligned_launches_agree(device):
    """The same fp16 values through the 16-byte-aligned config and through a shifted (unaligned) copy."""
    g = torch.Generator().manual_seed(11)
    B, F, N, H, D = 1, 12, 5, 2, 40
    q, k, v = make_qkv(B, F, N, H, D, "image", torch.float16, device, g)
    assert kernels.vector_align(D, q, k, v) == 8
    buffer = torch.empty(q.numel() + 1, dtype=q.dtype, device=device)
    shifted = buffer[1:].view_as(q).copy_(q)
    assert kernels.vector_align(D, shifted) == 1
    torch.testing.assert_close(temporal_attention(shifted, k, v), temporal_attention(q, k, v), atol=0, rtol=0)


def test_traces_into_one_graph_under_torch_compile(device):
    """fullgraph capture through the fake impls, forward and backward (aot_eager: no codegen)."""
    g = torch.Generator().manual_seed(9)
    q, k, v = (t.detach().requires_grad_() for t in make_qkv(1, 5, 3, 2, 8, "image", torch.float32, device, g))

    @torch.compile(backend="aot_eager", fullgraph=True)
    def attend_and_project(q, k, v):
        return (temporal_attention(q, k, v) * 2.0).flatten(-2).sum(-1)

    out = attend_and_project(q, k, v)
    out.sum().backward()
    want = (reference64(q, k, v)[0] * 2.0).flatten(-2).sum(-1)
    torch.testing.assert_close(out.double(), want, atol=5e-5, rtol=5e-5)
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("D,dtype", [(40, torch.float16), (80, torch.bfloat16), (160, torch.float16),
                                     (40, torch.float32), (160, torch.float32)])
def test_both_arch_tables_match_the_float64_reference(D, dtype, arch, monkeypatch, device):
    """Each arch's row counts, warps and dq fusion (the sm_80 table runs here through the interpreter;
    on a GPU only the table of its own arch launches). F = 24 packs one problem per 32-row program and
    leaves rows empty; F = 40 takes two frame tiles at 32 rows, one at 64."""
    if device.type == "cuda" and kernels.device_arch(device) != arch:
        pytest.skip(f"the sm_{arch} table launches on sm_{arch} only")
    monkeypatch.setattr(kernels, "device_arch", lambda device_: arch)
    for F in (24, 40):
        g = torch.Generator().manual_seed(F + D + arch)
        q, k, v = make_qkv(1, F, 3, 1, D, "frame_major", dtype, device, g)
        grad = torch.randn(q.shape, generator=g).to(device, dtype)
        out, lse = kernels.temporal_attention_forward_triton(q, k, v, D ** -0.5)
        ref_out, ref_lse = reference64(q, k, v)
        torch.testing.assert_close(out.double(), ref_out.double(), atol=TOL[dtype], rtol=TOL[dtype])
        grads = kernels.temporal_attention_backward_triton(grad, q, k, v, out, lse, D ** -0.5)
        ref_grads = kernels.temporal_attention_backward_reference(grad.double(), q.double(), k.double(), v.double(),
                                                                  ref_lse, D ** -0.5)
        for name, actual, expected in zip(("dq", "dk", "dv"), grads, ref_grads):
            scale = expected.abs().max().item() + 1e-6
            err = (actual.double() - expected).abs().max().item()
            assert err <= 4 * TOL[dtype] * scale, f"F={F} {name}: max error {err:.3g}"
