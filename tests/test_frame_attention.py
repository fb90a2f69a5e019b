"""Frame-sparse attention: forward and all three gradients against the float64 reference.

Runs the Triton kernels through the interpreter on CPU (conftest), outputs NaN-poisoned.
Shapes are small and odd; the cases pick a subset of F x N x D x mode x layout x dtype that
covers every value of each (F in 1, 2, 3, 8, 17; N in 1, 77, 256; D in 8, 40, 64, 80, 160;
contiguous and strided; the three named modes and a random table).
"""
import importlib

import pytest
import torch
import torch.nn.functional as F_

from vidgen import ops
from vidgen.kernels import frame_attention as K

fa_module = importlib.import_module("vidgen.ops.frame_attention")  # the module, not the function

# Error relative to the largest reference magnitude. fp16/bf16 round P to the input dtype before
# the P V product (as every fused attention does), so they sit near their epsilon.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _tables(mode: str, frames: int, seed: int = 0):
    if mode == "sparse_causal":
        return K.sparse_causal_key_frames(frames)
    if mode == "first_frame":
        return K.first_frame_key_frames(frames)
    if mode == "full":
        return K.full_key_frames(frames)
    gen = torch.Generator().manual_seed(seed)  # random, with repeats: 3 picks per row
    return torch.randint(0, frames, (frames, 3), generator=gen).tolist()


def _inputs(B, F, N, M, H, D, dtype, layout, device, seed=0):
    """q, k, v (B, F, N|M, H, D): contiguous, views of a fused projection, or frame-major + padded."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen).to(device, dtype)  # noqa: E731  (then view)
    if layout == "contiguous":
        return randn(B, F, N, H, D), randn(B, F, M, H, D), randn(B, F, M, H, D)
    if layout == "projection":  # (B*F, N, 3*H*D) split and viewed: no copy, row stride 3*H*D
        assert N == M
        q, k, v = (t.view(B, F, N, H, D) for t in randn(B * F, N, 3 * H * D).split(H * D, dim=-1))
    else:  # "strided": frames outermost, heads padded (stride H*(D+3)), k and v interleaved
        q = randn(F, B, N, H, D + 3)[..., :D].transpose(0, 1)
        kv = randn(F, B, M, H, 2, D).transpose(0, 1)
        k, v = kv[..., 0, :], kv[..., 1, :]
    assert not any(t.is_contiguous() for t in (q, k, v)) or F == 1
    return q, k, v


def _float64_reference(q, k, v, dout, rows, scale):
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out, lse = K.frame_attention_reference(*leaves, rows, scale)
    grads = torch.autograd.grad(out, leaves, dout.double())
    return out.detach(), lse, grads


def _assert_close(name, actual, expected, dtype):
    assert actual.shape == expected.shape, name
    assert torch.isfinite(actual).all(), f"{name}: non-finite values (an unwritten output element?)"
    err = (actual.double().cpu() - expected.cpu()).abs().max().item()
    scale = expected.abs().max().item() + 1e-6
    assert err <= TOLERANCE[dtype] * scale, f"{name}: max error {err:.3g} vs max |ref| {scale:.3g}"


# (mode, B, F, N, M, H, D, dtype, layout): every F, N, D, mode and layout appears at least once.
CASES = [
    ("sparse_causal", 2, 17, 1, 1, 1, 8, torch.float32, "contiguous"),
    ("sparse_causal", 1, 3, 77, 77, 2, 40, torch.float16, "projection"),
    ("sparse_causal", 1, 8, 1, 1, 2, 160, torch.float32, "strided"),
    ("first_frame", 1, 8, 77, 77, 1, 80, torch.bfloat16, "strided"),
    ("first_frame", 1, 2, 256, 256, 1, 64, torch.float16, "contiguous"),
    ("full", 2, 3, 1, 77, 1, 64, torch.float32, "strided"),
    ("full", 1, 1, 77, 77, 2, 8, torch.float16, "projection"),
    ("random", 1, 8, 77, 77, 1, 40, torch.float32, "projection"),
    ("random", 1, 17, 1, 1, 1, 80, torch.bfloat16, "contiguous"),
    ("random", 1, 2, 256, 9, 1, 160, torch.float16, "strided"),
]


@pytest.mark.parametrize("mode,B,F,N,M,H,D,dtype,layout", CASES,
                         ids=[f"{c[0]}-F{c[2]}-N{c[3]}-M{c[4]}-D{c[6]}-{str(c[7])[6:]}-{c[8]}" for c in CASES])
def test_forward_and_gradients_match_float64_reference(mode, B, F, N, M, H, D, dtype, layout, device):
    q, k, v = _inputs(B, F, N, M, H, D, dtype, layout, device)
    rows = _tables(mode, F)
    scale = D ** -0.5
    dout = torch.randn(B, F, N, H, D, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    ref_out, ref_lse, ref_grads = _float64_reference(q, k, v, dout, rows, scale)

    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    if layout == "projection":  # keep the views: differentiate through the fused projection output
        qkv = torch.cat([t.detach().reshape(B * F, N, H * D) for t in (q, k, v)], -1).requires_grad_(True)
        leaves = [t.view(B, F, N, H, D) for t in qkv.split(H * D, dim=-1)]
        assert leaves[1].data_ptr() - leaves[0].data_ptr() == H * D * qkv.element_size()
    out = ops.frame_attention(*leaves, rows, scale=scale)
    assert out.is_contiguous() and out.dtype == dtype and out.shape == (B, F, N, H, D)
    _assert_close("out", out, ref_out, dtype)

    out.backward(dout)
    if layout == "projection":
        grads = [g.view(B, F, N, H, D) for g in qkv.grad.split(H * D, dim=-1)]
    else:
        grads = [t.grad for t in leaves]
    for name, grad, ref in zip(("dq", "dk", "dv"), grads, ref_grads):
        _assert_close(name, grad, ref, dtype)


@pytest.mark.parametrize("D", [16, 24, 56, 96, 200, 256])
def test_other_head_dims_use_masked_blocks(D, device):
    """D outside the overlapped blockings: one column-masked power-of-two block (16 exact)."""
    q, k, v = (t.requires_grad_(True) for t in _inputs(1, 2, 5, 7, 1, D, torch.float32, "contiguous", device))
    rows = [[1], [0, 1]]
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device)
    ref_out, _, ref_grads = _float64_reference(q, k, v, dout, rows, D ** -0.5)
    out = ops.frame_attention(q, k, v, rows)
    _assert_close("out", out, ref_out, torch.float32)
    for name, grad, ref in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), dout), ref_grads):
        _assert_close(name, grad, ref, torch.float32)


def test_forward_saves_the_log_sum_exp(device):
    q, k, v = _inputs(1, 3, 77, 77, 2, 40, torch.float32, "contiguous", device)
    table, counts = K.prepare_key_table(torch.tensor(K.sparse_causal_key_frames(3)))
    readers, reader_counts = K.reverse_key_table(table, counts)
    args = [t.to(device) for t in (table, counts, readers, reader_counts)]
    out, lse = fa_module._frame_attention_forward(q, k, v, *args, 0.3)
    ref_out, ref_lse = K.frame_attention_reference(q.double(), k.double(), v.double(), table, 0.3)
    assert lse.shape == (1, 3, 2, 77) and lse.dtype == torch.float32
    _assert_close("lse", lse, ref_lse, torch.float32)
    _assert_close("out", out, ref_out, torch.float32)


def test_sparse_causal_is_tune_a_video_gather_concat_sdpa(device):
    """Tune-A-Video materialises cat([k[:, [0] * F], k[:, prev]]) and runs dense attention."""
    B, F, N, H, D = 2, 5, 77, 2, 40
    q, k, v = _inputs(B, F, N, N, H, D, torch.float32, "projection", device)
    prev = [max(f - 1, 0) for f in range(F)]
    keys = torch.cat([k[:, [0] * F], k[:, prev]], dim=2)      # (B, F, 2N, H, D)
    values = torch.cat([v[:, [0] * F], v[:, prev]], dim=2)
    heads_first = lambda t: t.permute(0, 1, 3, 2, 4)  # noqa: E731
    expected = heads_first(F_.scaled_dot_product_attention(heads_first(q), heads_first(keys), heads_first(values)))
    _assert_close("out", ops.sparse_causal_attention(q, k, v), expected.double(), torch.float32)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_keys_of_more_frames_than_queries_for_a_frame_parallel_shard(backend, device):
    """A shard's queries (frames 2..4 of 5) read its own keys and frames 0 and 1 received from other
    processes, appended after its own: the table indexes that key tensor (inference only)."""
    B, F, N, H, D = 1, 5, 7, 2, 8
    q, k, v = _inputs(B, F, N, N, H, D, torch.float32, "contiguous", device)
    whole = ops.sparse_causal_attention(q, k, v)
    order = [2, 3, 4, 0, 1]  # local frames first, then the received ones
    with ops.use_backend(backend):
        part = ops.frame_attention(q[:, 2:], k[:, order], v[:, order], [[3, 4], [3, 0], [3, 1]])
    _assert_close("out", part, whole[:, 2:].double(), torch.float32)
    with pytest.raises(ValueError, match="row 0 lists frame"):
        ops.frame_attention(q[:, 2:], k[:, order], v[:, order], [[5], [0], [1]])
    with pytest.raises(ValueError, match="has no backward"):
        ops.frame_attention(q[:, 2:].requires_grad_(), k[:, order], v[:, order], [[3], [3], [3]])


def test_presets_and_duplicate_rows(device):
    B, F, N, H, D = 1, 4, 9, 1, 16
    q, k, v = _inputs(B, F, N, N, H, D, torch.float32, "contiguous", device)
    assert torch.equal(ops.first_frame_attention(q, k, v), ops.frame_attention(q, k, v, [[0, 0, 0]] * F))
    assert torch.equal(ops.full_frame_attention(q, k, v), ops.frame_attention(q, k, v, [[3, 2, 1, 0]] * F))
    table = torch.tensor([[0, 0], [0, 0], [1, 0], [2, 0]])
    assert torch.equal(ops.sparse_causal_attention(q, k, v), ops.frame_attention(q, k, v, table))
    assert torch.equal(ops.sparse_causal_attention(q, k, v), ops.frame_attention(q, k, v, [[0], [0], [0, 1], [2, 0]]))


def test_key_table_is_deduplicated_before_any_kernel():
    table, counts = K.prepare_key_table(torch.tensor([[2, 0, 2, 0], [1, 1, 1, 1], [0, 1, 2, 3], [3, 2, 3, 0]]))
    assert counts.tolist() == [2, 1, 4, 3]
    assert [row[:n] for row, n in zip(table.tolist(), counts.tolist())] == [[0, 2], [1], [0, 1, 2, 3], [0, 2, 3]]
    readers, reader_counts = K.reverse_key_table(table, counts)
    assert reader_counts.tolist() == [3, 2, 3, 2]
    listed = [row[:n] for row, n in zip(readers.tolist(), reader_counts.tolist())]
    assert listed == [[0, 2, 3], [1, 2], [0, 2, 3], [2, 3]]


def test_head_blocks_are_tight_for_sd_head_dims():
    assert K.head_blocks(40) == (32, 16, False)   # 48 columns of work, not 64
    assert K.head_blocks(80) == (64, 16, False)   # exact
    assert K.head_blocks(160) == (128, 32, False)  # exact
    assert K.head_blocks(64) == (64, 0, True)
    for d in range(K.MIN_HEAD_DIM, K.MAX_HEAD_DIM + 1):
        d0, d1, _ = K.head_blocks(d)
        assert d0 + d1 >= d and d1 <= d0 and (d1 == 0 or d0 + d1 - d < d1), d
        assert d0 + d1 <= max(16, 1 << (d - 1).bit_length()), d  # never worse than padding


def test_row_alignment_hint_only_when_every_row_is_a_whole_vector(device):
    # SD1.5's D = 40 in fp16/bf16: rows are 80 bytes apart, whole 16-byte vectors, so the kernels are
    # told (ALIGN = 8); any tensor whose rows are not (an odd offset, a padded head) runs unhinted.
    def align(*tensors):
        d0, d1, _ = K.head_blocks(tensors[0].shape[-1])
        return K.vector_align(d0, d1, *tensors)

    q, k, v = _inputs(1, 3, 5, 5, 2, 40, torch.float16, "projection", device)
    assert align(q, k, v) == 8
    assert align(*_inputs(1, 3, 5, 7, 2, 40, torch.bfloat16, "contiguous", device)) == 8
    assert align(*_inputs(1, 3, 5, 7, 2, 40, torch.float32, "contiguous", device)) == 1  # fp32: not hinted
    assert align(*_inputs(1, 3, 5, 7, 2, 40, torch.float16, "strided", device)) == 1    # head stride 43
    assert align(*_inputs(1, 3, 5, 7, 2, 64, torch.float16, "contiguous", device)) == 1  # Triton's own 16
    shifted = torch.randn(1 + 1 * 3 * 5 * 2 * 40).to(device, torch.float16)[1:].view(1, 3, 5, 2, 40)
    assert align(shifted, k, v) == 1  # base pointer 2 bytes past a vector boundary
    odd_rows = torch.randn(1, 3, 5, 2, 44).to(device, torch.float16)[..., :40]
    assert align(odd_rows, k, v) == 1  # head stride 44: rows 88 bytes apart


def test_gradcheck_float64_reference_path(device):
    q, k, v = (t.double().requires_grad_(True) for t in _inputs(1, 3, 2, 3, 1, 8, torch.float32, "contiguous", device))
    rows = [[0, 2], [1, 1], [2, 0]]
    with ops.use_backend("torch"):
        assert torch.autograd.gradcheck(lambda a, b, c: ops.frame_attention(a, b, c, rows), (q, k, v))


def test_backward_is_bit_deterministic(device):
    q, k, v = (t.requires_grad_(True) for t in _inputs(1, 8, 33, 33, 1, 40, torch.float16, "contiguous", device))
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(2)).to(device, q.dtype)
    grads = []
    for _ in range(2):
        out = ops.first_frame_attention(q, k, v)
        grads.append(torch.autograd.grad(out, (q, k, v), dout))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_custom_op_registration_passes_opcheck(device):
    q, k, v = _inputs(1, 2, 5, 5, 1, 16, torch.float32, "contiguous", device)
    table, counts = K.prepare_key_table(torch.tensor([[0, 1], [0, 0]]))
    readers, reader_counts = K.reverse_key_table(table, counts)
    args = (q.requires_grad_(True), k, v, *(t.to(device) for t in (table, counts, readers, reader_counts)), 0.25)
    torch.library.opcheck(fa_module._frame_attention_forward, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("bad,error,match", [
    (lambda q, k, v: (q, k[:, :, :, :1], v[:, :, :, :1], [[0]] * 3), ValueError, r"k: expected \(B, Fk, M, H, D\)"),
    (lambda q, k, v: (q, k, v[:, :, :4], [[0]] * 3), ValueError, "v: expected the shape of k"),
    (lambda q, k, v: (q[0], k, v, [[0]] * 3), ValueError, "q: expected a 5-D tensor"),
    (lambda q, k, v: (q, k, v, [[0], [1], [3]]), ValueError, r"row 2 lists frame\(s\) \[3\]"),
    (lambda q, k, v: (q, k, v, [[0], [-1], [0]]), ValueError, r"expected indices in \[0, 3\)"),
    (lambda q, k, v: (q, k, v, [[0], [1]]), ValueError, "one row per frame"),
    (lambda q, k, v: (q, k, v, [[0], [], [0]]), ValueError, "row 1 is empty"),
    (lambda q, k, v: (q, k, v, torch.zeros(3, 1)), TypeError, "key_frames: expected an integer tensor"),
    (lambda q, k, v: (q, k, v, [[0.5]] * 3), TypeError, "integer frame indices"),
    (lambda q, k, v: (q.to(torch.int32), k, v, [[0]] * 3), TypeError, "q: expected dtype"),
    (lambda q, k, v: (q, k.half(), v, [[0]] * 3), TypeError, "one dtype"),
    (lambda q, k, v: (q.new_ones(1, 3, 4, 2, 264), k.new_ones(1, 3, 5, 2, 264), v.new_ones(1, 3, 5, 2, 264),
                      [[0]] * 3), ValueError, "head dim D=264"),
    (lambda q, k, v: (q[..., :4], k[..., :4], v[..., :4], [[0]] * 3), ValueError, "head dim D=4"),
    (lambda q, k, v: (q, k.to("meta"), v, [[0]] * 3), ValueError, "one device"),
])
def test_bad_input_raises_before_launch(bad, error, match, device):
    q = torch.randn(1, 3, 4, 2, 8, device=device)
    k = torch.randn(1, 3, 5, 2, 8, device=device)
    args = bad(q, k, k.clone())
    with pytest.raises(error, match=match):
        ops.frame_attention(*args)


def test_float64_needs_the_reference_backend(device):
    q = torch.randn(1, 2, 3, 1, 8, dtype=torch.float64, device=device)
    with ops.use_backend("triton"), pytest.raises(ops.BackendUnavailable, match="float64"):
        ops.sparse_causal_attention(q, q, q)


def test_works_under_torch_compile_fullgraph(device):
    """The op is opaque to dynamo/AOTAutograd (fake impls give shapes); key tables trace in-graph."""
    q, k, v = (t.requires_grad_(True) for t in _inputs(1, 3, 5, 5, 2, 16, torch.float32, "contiguous", device))
    compiled = torch.compile(lambda a, b, c: ops.sparse_causal_attention(a, b, c).square().sum(),
                             backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    expected = ops.sparse_causal_attention(q, k, v).square().sum()
    expected_grads = torch.autograd.grad(expected, (q, k, v))
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_these_tests_exercise_the_triton_kernels(device):
    from vidgen.ops import _backend

    assert _backend.select(fa_module.FRAME_ATTENTION, device) == "triton"


def test_kernels_allocate_only_their_outputs_and_never_gather(device):
    """No gathered, concatenated or contiguous copy of q/k/v in forward or backward: the only
    tensors the launchers create are out, lse, delta, dq, dk, dv (the interpreter's own host
    round trips show up as copy_/set_ into existing storage, never as new tensors)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordAllocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.created, self.names = [], set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            self.names.add(name)
            if name in ("empty", "empty_strided", "zeros", "empty_like", "new_empty") and out.numel():
                self.created.append(tuple(out.shape))
            return out

    B, F, N, H, D = 1, 3, 7, 2, 40
    q, k, v = _inputs(B, F, N, N, H, D, torch.float32, "projection", device)
    table, counts = K.prepare_key_table(torch.tensor(K.sparse_causal_key_frames(F)))
    readers, reader_counts = K.reverse_key_table(table, counts)
    tables = [t.to(device) for t in (table, counts, readers, reader_counts)]
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device)
    with RecordAllocations() as record:
        out, lse = K.frame_attention_forward_triton(q, k, v, *tables[:2], 0.2)
        K.frame_attention_backward_triton(dout, q, k, v, out, lse, *tables, 0.2)
    assert sorted(record.created) == sorted([(B, F, N, H, D)] * 4 + [(B, F, H, N)] * 2)
    assert not record.names & {"cat", "stack", "index", "index_select", "gather", "clone", "_to_copy"}
