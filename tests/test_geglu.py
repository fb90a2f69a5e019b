"""vidgen.ops.geglu against diffusers' GEGLU module in float64: values and gradients, M/N/K tails of
every tile config, argument errors. Outputs are poisoned (conftest fills ``torch.empty`` with NaN), so
an unwritten output element fails the comparison."""
import pytest
import torch
from diffusers.models.activations import GEGLU

from vidgen.ops import BackendUnavailable, geglu, use_backend
from vidgen.ops.geglu import geglu_unsupported_reason

from oracles import scaled_error  # tests/oracles.py

# Against the float64 oracle, relative to the largest magnitude: fp32 rounds the K-long sums (IEEE
# products); fp16/bf16 round the operands' products into fp32 and the output once.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def module_and_input(shape, inner, dtype, device, seed, bias=True):
    """diffusers' GEGLU(K, inner) with random weights and an x of ``shape`` (..., K)."""
    torch.manual_seed(seed)
    module = GEGLU(shape[-1], inner, bias=bias)
    with torch.no_grad():
        if bias:
            module.proj.bias.normal_()
    x = torch.randn(*shape) * 1.5
    return module.to(device, dtype), x.to(device, dtype)


def oracle(module, x):
    """diffusers' module itself, in float64 on the CPU, and its output for ``x`` (a float64 CPU leaf
    is used as it is, for its gradient)."""
    reference = GEGLU(module.proj.in_features, module.proj.out_features // 2, bias=module.proj.bias is not None)
    reference.load_state_dict({k: v.detach().cpu().double() for k, v in module.state_dict().items()})
    reference = reference.double()
    if not (x.dtype == torch.float64 and x.device.type == "cpu" and x.is_leaf):
        x = x.detach().cpu().double()
    return reference, reference(x)


CASES = [  # x shape (..., K), N (inner), dtype, bias; tiles: tensor 128x128x64 (sm_90 table), fp32 64x64x16
    ((3, 13, 19), 23, torch.float32, True),     # M 39 < 64, N 23 < 64, K 19: one full step and a tail
    ((129, 40), 70, torch.float32, False),      # 3 row tiles (one GROUP_M group, wrapping), 2 column tiles
    ((2, 65, 70), 70, torch.float16, True),     # M 130: a second 128-row tile of 2 rows; K 70: a 6-wide tail
    ((5, 8), 9, torch.bfloat16, False),         # tiny everything
]


@pytest.mark.parametrize("shape,inner,dtype,bias", CASES)
def test_forward_equals_diffusers_geglu(shape, inner, dtype, bias, device):
    module, x = module_and_input(shape, inner, dtype, device, seed=sum(shape) + inner, bias=bias)
    with use_backend("triton"):
        y = geglu(x, module.proj.weight, module.proj.bias)
    _, expected = oracle(module, x)
    assert y.shape == (*shape[:-1], inner) and y.dtype == dtype and y.is_contiguous()
    assert scaled_error(y, expected) <= TOL[dtype]


@pytest.mark.parametrize("shape,inner,dtype,bias", [CASES[0], CASES[3]])
def test_gradients_equal_autograd_of_diffusers_geglu(shape, inner, dtype, bias, device):
    module, x = module_and_input(shape, inner, dtype, device, seed=3 * sum(shape), bias=bias)
    x = x.detach().requires_grad_()
    grad = torch.randn(*shape[:-1], inner, generator=torch.Generator().manual_seed(5)).to(device, dtype)
    with use_backend("triton"):
        geglu(x, module.proj.weight, module.proj.bias).backward(grad)
    x64 = x.detach().cpu().double().requires_grad_()
    reference, expected = oracle(module, x64)
    expected.backward(grad.double().cpu())
    pairs = [("x", x.grad, x64.grad), ("weight", module.proj.weight.grad, reference.proj.weight.grad)]
    if bias:
        pairs.append(("bias", module.proj.bias.grad, reference.proj.bias.grad))
    for name, actual, want in pairs:
        assert actual.dtype == dtype, name
        assert scaled_error(actual, want) <= 2 * TOL[dtype], name


def test_reference_backend_and_float64(device):
    module, x = module_and_input((7, 6), 5, torch.float32, device, seed=1)
    _, expected = oracle(module, x)
    with use_backend("torch"):
        assert scaled_error(geglu(x, module.proj.weight, module.proj.bias), expected) <= TOL[torch.float32]
    module64 = module.double()
    assert scaled_error(geglu(x.double(), module64.proj.weight, module64.proj.bias), expected) <= 1e-12
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="float64"):
        geglu(x.double(), module64.proj.weight, module64.proj.bias)


@pytest.mark.parametrize("args,kind,match", [
    (lambda x, w, b: (x.long(), w, b), TypeError, "^x: expected dtype"),
    (lambda x, w, b: (x[:0], w, b), ValueError, "^x: expected a non-empty"),
    (lambda x, w, b: (x, w[:-1], b[:-1]), ValueError, r"^weight: expected \(2N, K\)"),
    (lambda x, w, b: (x, w[:, :-1], b), ValueError, r"^weight: expected \(2N, K\) = \(2N, 6\)"),
    (lambda x, w, b: (x, w, b[:-2]), ValueError, r"^bias: expected \(10,\)"),
    (lambda x, w, b: (x, w.half(), b), TypeError, "^weight: expected x's dtype"),
    (lambda x, w, b: (x, w, b.half()), TypeError, "^bias: expected x's dtype"),
    (lambda x, w, b: (x, w[None], b), ValueError, "^weight: expected a 2-D tensor"),
])
def test_bad_arguments_are_refused_naming_them(args, kind, match, device):
    module, x = module_and_input((7, 6), 5, torch.float32, device, seed=1)
    with pytest.raises(kind, match=match):
        geglu(*args(x, module.proj.weight.detach(), module.proj.bias.detach()))


def test_unsupported_reason_names_the_dtype():
    assert geglu_unsupported_reason(torch.bfloat16) is None and geglu_unsupported_reason() is None
    assert "float64" in geglu_unsupported_reason(torch.float64)
