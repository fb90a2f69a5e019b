"""vidgen.ops.linear_residual against diffusers' Linear + add in float64: values and gradients, M/N/K
tails of every tile config, dtypes, argument errors. Outputs are poisoned (conftest fills
``torch.empty`` with NaN), so an unwritten output element fails the comparison."""
import pytest
import torch
from torch import nn

from vidgen.ops import BackendUnavailable, linear_residual, use_backend
from vidgen.ops.linear_residual import linear_residual_unsupported_reason

from oracles import scaled_error  # tests/oracles.py

# Against the float64 oracle, relative to the largest magnitude: fp32 rounds the K-long sums (IEEE
# products); fp16/bf16 round the operands' products into fp32 and the output once.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def linear_and_inputs(shape, n, dtype, device, seed, bias=True):
    """nn.Linear(K, n) with random weights, an x of ``shape`` (..., K) and a residual (..., n)."""
    torch.manual_seed(seed)
    linear = nn.Linear(shape[-1], n, bias=bias)
    with torch.no_grad():
        if bias:
            linear.bias.normal_()
    x = torch.randn(*shape) * 1.5
    residual = torch.randn(*shape[:-1], n) * 2
    return linear.to(device, dtype), x.to(device, dtype), residual.to(device, dtype)


def oracle(linear, x, residual):
    """diffusers' pattern ``linear(x) + residual`` in float64 on the CPU, with the Linear's float64 copy."""
    reference = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None).double()
    reference.load_state_dict({k: v.detach().cpu().double() for k, v in linear.state_dict().items()})
    return reference, reference(x) + residual


def as_leaf64(t):
    return t.detach().cpu().double().requires_grad_()


CASES = [  # x shape (..., K), N, dtype, bias; tiles: tensor 128x256x64 (sm_90 table), fp32 64x128x16
    ((3, 13, 19), 23, torch.float32, True),     # M 39 < 64, N 23 < 128, K 19: one full step and a tail
    ((129, 40), 130, torch.float32, False),     # 3 row tiles (one GROUP_M group, wrapping), 2 column tiles
    ((2, 65, 70), 70, torch.float16, True),     # M 130: a second 128-row tile of 2 rows; K 70: a 6-wide tail
    ((5, 8), 9, torch.bfloat16, False),         # tiny everything
]


@pytest.mark.parametrize("shape,n,dtype,bias", CASES)
def test_forward_equals_linear_plus_residual(shape, n, dtype, bias, device):
    linear, x, residual = linear_and_inputs(shape, n, dtype, device, seed=sum(shape) + n, bias=bias)
    with use_backend("triton"):
        y = linear_residual(x, linear.weight, linear.bias, residual)
    _, expected = oracle(linear, x.cpu().double(), residual.cpu().double())
    assert y.shape == (*shape[:-1], n) and y.dtype == dtype and y.is_contiguous()
    assert scaled_error(y, expected) <= TOL[dtype]


def test_strided_residual_and_x(device):
    """A residual with a row stride (a column slice) and a transposed x are read where they lie."""
    linear, x, _ = linear_and_inputs((33, 17), 21, torch.float32, device, seed=7)
    residual = torch.randn(33, 42, device=device)[:, :21]  # stride (42, 1)
    x_t = x.t().contiguous().t()                          # stride (1, 33)
    with use_backend("triton"):
        y = linear_residual(x_t, linear.weight, linear.bias, residual)
    _, expected = oracle(linear, x.cpu().double(), residual.cpu().double())
    assert scaled_error(y, expected) <= TOL[torch.float32]


@pytest.mark.parametrize("shape,n,dtype,bias", [CASES[0], CASES[3]])
def test_gradients_equal_autograd_of_linear_plus_residual(shape, n, dtype, bias, device):
    linear, x, residual = linear_and_inputs(shape, n, dtype, device, seed=3 * sum(shape), bias=bias)
    x, residual = x.detach().requires_grad_(), residual.detach().requires_grad_()
    grad = torch.randn(*shape[:-1], n, generator=torch.Generator().manual_seed(5)).to(device, dtype)
    with use_backend("triton"):
        linear_residual(x, linear.weight, linear.bias, residual).backward(grad)
    x64, residual64 = as_leaf64(x), as_leaf64(residual)
    reference, expected = oracle(linear, x64, residual64)
    expected.backward(grad.double().cpu())
    pairs = [("x", x.grad, x64.grad), ("residual", residual.grad, residual64.grad),
             ("weight", linear.weight.grad, reference.weight.grad)]
    if bias:
        pairs.append(("bias", linear.bias.grad, reference.bias.grad))
    for name, actual, want in pairs:
        assert actual.dtype == dtype, name
        assert scaled_error(actual, want) <= 2 * TOL[dtype], name


def test_reference_backend_and_float64(device):
    linear, x, residual = linear_and_inputs((7, 6), 5, torch.float32, device, seed=1)
    _, expected = oracle(linear, x.cpu().double(), residual.cpu().double())
    with use_backend("torch"):
        assert scaled_error(linear_residual(x, linear.weight, linear.bias, residual), expected) <= TOL[torch.float32]
    linear64 = linear.double()
    y64 = linear_residual(x.double(), linear64.weight, linear64.bias, residual.double())
    assert scaled_error(y64, expected) <= 1e-12
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="float64"):
        linear_residual(x.double(), linear64.weight, linear64.bias, residual.double())


@pytest.mark.parametrize("args,kind,match", [
    (lambda x, w, b, r: (x.long(), w, b, r), TypeError, "^x: expected dtype"),
    (lambda x, w, b, r: (x[:0], w, b, r[:0]), ValueError, "^x: expected a non-empty"),
    (lambda x, w, b, r: (x, w[:, :-1], b, r), ValueError, r"^weight: expected \(N, K\) = \(N, 6\)"),
    (lambda x, w, b, r: (x, w, b[:-2], r), ValueError, r"^bias: expected \(5,\)"),
    (lambda x, w, b, r: (x, w, b, r[:, :-1]), ValueError, r"^residual: expected the output's shape \(7, 5\)"),
    (lambda x, w, b, r: (x, w.half(), b, r), TypeError, "^weight: expected x's dtype"),
    (lambda x, w, b, r: (x, w, b.half(), r), TypeError, "^bias: expected x's dtype"),
    (lambda x, w, b, r: (x, w, b, r.half()), TypeError, "^residual: expected x's dtype"),
    (lambda x, w, b, r: (x, w[None], b, r), ValueError, "^weight: expected a 2-D tensor"),
])
def test_bad_arguments_are_refused_naming_them(args, kind, match, device):
    linear, x, residual = linear_and_inputs((7, 6), 5, torch.float32, device, seed=1)
    with pytest.raises(kind, match=match):
        linear_residual(*args(x, linear.weight.detach(), linear.bias.detach(), residual))


def test_unsupported_reason_names_the_dtype():
    assert linear_residual_unsupported_reason(torch.bfloat16) is None and linear_residual_unsupported_reason() is None
    assert "float64" in linear_residual_unsupported_reason(torch.float64)
