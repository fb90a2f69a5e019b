"""The FP8 frame-attention forward (``precision="fp8"``): the kernel against its PyTorch emulation
(the same per-token e4m3 quantisation, exact otherwise), and the emulation's error against the
float64 reference, which is what the user trades for the speed.

Through the interpreter on CPU (conftest rounds its fp32 -> e4m3 casts as the GPU does), outputs
NaN-poisoned; on a GPU run (``VIDGEN_TEST_DEVICE=cuda``) compiled on sm_90.
"""
import pytest
import torch

from vidgen import ops
from vidgen.kernels import frame_attention as K
from vidgen.kernels import frame_attention_fp8 as fp8

# (B, F, N, M, H, D): odd sizes, every padded width (32, 64, 128, 256), several key blocks.
SHAPES = [(1, 3, 37, 37, 2, 24), (2, 2, 70, 45, 1, 40), (1, 2, 129, 66, 2, 64), (1, 3, 20, 20, 1, 80),
          (1, 2, 9, 70, 1, 160)]
# fp32 accumulation of exact e4m3 products: the kernel differs from its emulation by the rounding
# of P to the inputs' dtype before P V (as in every fused attention) and summation order.
EMULATION_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
FP8_ERROR_BOUND = 0.08  # relative L2 of the fp8 result against float64, random normal inputs (~0.03-0.04)


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def _inputs(shape, dtype, device, seed=0):
    B, F, N, M, H, D = shape
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*size, generator=gen).to(device, dtype)
            for size in ((B, F, N, H, D), (B, F, M, H, D), (B, F, M, H, D))]


def _skip_without_fp8(device):
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (9, 0):
        pytest.skip("e4m3 tensor cores need sm_90")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{s[0]}F{s[1]}N{s[2]}M{s[3]}H{s[4]}D{s[5]}" for s in SHAPES])
def test_fp8_kernel_matches_its_emulation(shape, dtype, device):
    _skip_without_fp8(device)
    q, k, v = _inputs(shape, dtype, device)
    key_frames = K.sparse_causal_key_frames(shape[1])
    table, counts = K.prepare_key_table(torch.tensor(key_frames, device=device))
    scale = shape[-1] ** -0.5
    out, lse = fp8.frame_attention_forward_fp8_triton(q, k, v, table, counts, scale)
    expected, expected_lse = fp8.frame_attention_fp8_reference(q.cpu(), k.cpu(), v.cpu(), key_frames, scale)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _relative_l2(out, expected) < EMULATION_TOLERANCE[dtype]
    torch.testing.assert_close(lse.cpu(), expected_lse.float(), rtol=0, atol=1e-3)
    # ... and the price of fp8: its error against float64 attention
    exact, _ = K.frame_attention_reference(q.cpu().double(), k.cpu().double(), v.cpu().double(), key_frames, scale)
    assert 1e-3 < _relative_l2(out, exact) < FP8_ERROR_BOUND  # > 1e-3: the scores really were rounded


def test_fp8_quantisation_gives_every_row_the_whole_e4m3_range():
    x = torch.tensor([[0.5, -3.0, 7.0], [0.001, 0.002, -0.004]])  # each row's amax maps to 448
    assert torch.equal(fp8.fp8_roundtrip(x), x)   # all exactly representable after their row's scaling
    y = torch.tensor([[7.9375, 1.0]])
    # 1.0 * 448 / 7.9375 = 56.44 -> 56 (e4m3 steps of 4 between 32 and 64) -> 56 * 7.9375 / 448
    assert fp8.fp8_roundtrip(y).tolist() == [[7.9375, 0.9921875]]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_op_precision_fp8_runs_the_fp8_path_and_refuses_what_it_cannot(backend, device):
    _skip_without_fp8(device)
    shape = (1, 3, 37, 37, 2, 40)
    q, k, v = _inputs(shape, torch.float16, device, seed=4)
    key_frames = K.sparse_causal_key_frames(3)
    expected, _ = fp8.frame_attention_fp8_reference(q.cpu(), k.cpu(), v.cpu(), key_frames, 40 ** -0.5)
    with ops.use_backend(backend), torch.no_grad():
        out = ops.frame_attention(q, k, v, key_frames, precision="fp8")
        default = ops.frame_attention(q, k, v, key_frames)
    assert _relative_l2(out, expected) < EMULATION_TOLERANCE[torch.float16]
    assert _relative_l2(out, default) > 1e-3  # not the fp16 path
    with pytest.raises(ValueError, match="precision: expected one of 'auto', 'fp8', got 'int8'"):
        ops.frame_attention(q, k, v, key_frames, precision="int8")
    with pytest.raises(TypeError, match="precision: 'fp8' takes fp16 or bf16"):
        ops.frame_attention(q.float(), k.float(), v.float(), key_frames, precision="fp8")
    with pytest.raises(ValueError, match="precision: 'fp8' is a forward for inference"):
        ops.frame_attention(q.requires_grad_(), k, v, key_frames, precision="fp8")


def test_fp8_op_is_opaque_to_torch_compile(device):
    _skip_without_fp8(device)
    q, k, v = _inputs((1, 2, 16, 16, 1, 32), torch.float16, device, seed=2)
    key_frames = K.first_frame_key_frames(2)
    with ops.use_backend("torch"), torch.no_grad():
        eager = ops.frame_attention(q, k, v, key_frames, precision="fp8")
        compiled = torch.compile(lambda a, b, c: ops.frame_attention(a, b, c, key_frames, precision="fp8"),
                                 backend="eager", fullgraph=True)(q, k, v)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_processor_at_fp8_runs_what_fp8_cannot_serve_in_the_activations_precision(device):
    from diffusers.models.attention_processor import Attention

    from vidgen.integration.processors import FrameAttnProcessor
    from vidgen.ops._fallback import FallbackWarning, forget_warnings

    forget_warnings()
    torch.manual_seed(0)
    attn = Attention(query_dim=64, heads=2, dim_head=32).to(device)
    hidden = torch.randn(2 * 3, 10, 64, device=device)  # fp32, autograd on: neither is fp8's
    attn.set_processor(FrameAttnProcessor("sparse_causal", num_frames=3, precision="fp8"))
    with ops.use_backend("torch"), pytest.warns(FallbackWarning, match="precision='fp8'.*fp16/bf16"):
        fp8_asked = attn(hidden)
    attn.set_processor(FrameAttnProcessor("sparse_causal", num_frames=3))
    with ops.use_backend("torch"):
        torch.testing.assert_close(fp8_asked, attn(hidden), rtol=0, atol=0)
    with pytest.raises(ValueError, match="precision: expected one of 'auto', 'fp8'"):
        FrameAttnProcessor(precision="e5m2")
