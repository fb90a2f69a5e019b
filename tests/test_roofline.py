"""benchmarks/roofline*.py on a CPU: the FLOP formulas of vidgen's ops against brute-force counts,
the bytes and launches of small known graphs, the fusion grouping, the ceilings' source, and the
whole pipeline on tiny models (meta tensors: no weights, no kernels run)."""
import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import harness, roofline
from tools import report
from benchmarks.roofline_cost import (H200_2026_11_30, Ceilings, Costing, Totals, elementwise, inductor,
                                      load_ceilings, never, partition)
from benchmarks.roofline_fusions import Fusion, combined_under_compile, geglu, group_norm_silu, residual_epilogue
from benchmarks.roofline_trace import MATMUL, NORMALISATION, POINTWISE, recording
from vidgen.ops.frame_attention import frame_attention, frame_attention_reference, key_frames_for
from vidgen.ops.temporal_attention import temporal_attention

META = torch.device("meta")
HALF = torch.float16
# round numbers, so the expected times below are exact
CEILINGS = Ceilings(matmul_tflops=1.0, vector_tflops=1.0, copy_gbs=1.0, launch_us=0.0, source="test")


def _meta(*shape, dtype=HALF):
    return torch.empty(shape, device=META, dtype=dtype)


def _record(fn, models=()):
    with recording(models) as recorder:
        keep = fn()  # noqa: F841  (what the block returns outlives it: the step's outputs)
    return recorder.graph(models)


# ----------------------------------------------------------------------------------------------
# FLOPs of vidgen's ops
# ----------------------------------------------------------------------------------------------
def _brute_force_frame_attention(B, F_, N, M, H, D, rows) -> int:
    """Count every multiply and add: each (video, query, head) takes a dot product of width D with
    every key token of each distinct key frame (2D FLOPs), then adds that key's value row, scaled
    (2D FLOPs)."""
    flops = 0
    for _b, f, _n, _h in itertools.product(range(B), range(F_), range(N), range(H)):
        for _g in set(rows[f]):
            for _m in range(M):
                flops += 2 * D + 2 * D
    return flops


@pytest.mark.parametrize("rows", [
    key_frames_for("sparse_causal", 5), key_frames_for("first_frame", 5), key_frames_for("full", 5),
    [[0, 0, 3], [1], [4, 2], [2, 2], [0, 1, 2, 3, 4]],  # ragged, with repeats: each distinct frame once
], ids=["sparse_causal", "first_frame", "full", "ragged"])
def test_frame_attention_flops_match_brute_force_and_the_reference(rows):
    B, F_, N, M, H, D = 2, 5, 3, 4, 2, 8
    rows = [list(r) for r in rows]
    graph = _record(lambda: frame_attention(_meta(B, F_, N, H, D), _meta(B, F_, M, H, D), _meta(B, F_, M, H, D), rows))
    (op,) = [op for op in graph.ops if op.name == "vidgen::frame_attention_fwd"]
    assert op.kind == MATMUL
    assert op.matmul_flops == _brute_force_frame_attention(B, F_, N, M, H, D, rows)
    # an independent count: torch's flop counter over the reference implementation's matmuls
    q, k, v = (torch.randn(B, F_, n, H, D) for n in (N, M, M))
    with FlopCounterMode(display=False) as counter:
        frame_attention_reference(q, k, v, rows, D ** -0.5)
    assert op.matmul_flops == counter.get_total_flops()


def test_temporal_attention_flops_match_brute_force_and_the_reference():
    from vidgen.ops.temporal_attention import temporal_attention_reference

    B, F_, N, H, D = 2, 5, 3, 2, 8
    graph = _record(lambda: temporal_attention(*(_meta(B, F_, N, H, D) for _ in range(3))))
    (op,) = [op for op in graph.ops if op.name == "vidgen::temporal_attention_fwd"]
    brute = sum(2 * D + 2 * D for _ in itertools.product(range(B), range(N), range(H), range(F_), range(F_)))
    assert op.matmul_flops == brute
    with FlopCounterMode(display=False) as counter:
        temporal_attention_reference(*(torch.randn(B, F_, N, H, D) for _ in range(3)), D ** -0.5)
    assert op.matmul_flops == counter.get_total_flops()


def test_a_vidgen_op_without_a_formula_is_an_error_not_zero_flops(monkeypatch):
    import benchmarks.roofline_trace as trace

    monkeypatch.delitem(trace.VIDGEN_FLOPS, "vidgen::temporal_attention_fwd")
    with pytest.raises(NotImplementedError, match="no FLOP formula"):
        _record(lambda: temporal_attention(*(_meta(1, 2, 3, 1, 8) for _ in range(3))))


def test_frame_group_norm_is_one_normalisation_whose_group_spans_the_frames():
    from vidgen.ops.frame_group_norm import frame_group_norm

    small, big = _meta(2 * 3, 8, 4, 4), _meta(2 * 16, 32, 32, 32)  # groups of 3 x 2 x 16 x 2 B and 16 x 8 x 1024 x 2 B
    weight = _meta(8)
    graph = _record(lambda: (frame_group_norm(small, 3, 4, weight, weight, silu=True),
                             frame_group_norm(big, 16, 4, silu=False)))
    assert [op.name for op in graph.ops].count("vidgen::frame_group_norm_fwd") == 2
    fits, too_big = [op for op in graph.ops if op.name == "vidgen::frame_group_norm_fwd"]
    assert fits.kind == too_big.kind == NORMALISATION
    assert (fits.group_bytes, too_big.group_bytes) == (3 * 2 * 16 * 2, 16 * 8 * 1024 * 2)
    assert (fits.two_pass, too_big.two_pass) == (False, True)
    assert (fits.vector_flops, too_big.vector_flops) == (8 * small.numel(), 4 * big.numel())
    costing = Costing(graph)
    statistics = 2 * 4 * 3 * 3 * 4  # (B, F, G, 3) fp32, written once
    assert costing.kernel([fits.index]).read_bytes == small.numel() * 2 + 8 * 2  # weight is bias here: read once
    assert costing.kernel([fits.index]).write_bytes == small.numel() * 2 + statistics
    assert (costing.kernel([too_big.index]).read_bytes, costing.kernel([too_big.index]).launches) == \
        (2 * (big.numel() + 2 * 32) * 2, 2)  # x, weight and bias (ones and zeros here) read by both passes
    assert inductor(fits)  # under torch.compile the op is its ATen ops, which Inductor fuses


def test_geglu_is_one_matmul_with_the_projections_flops_and_writes_only_its_output():
    from diffusers.models.activations import GEGLU

    from vidgen.integration.feed_forward import patch_geglu
    from vidgen.ops.geglu import geglu

    x, weight, bias = _meta(2, 5, 12), _meta(2 * 7, 12), _meta(2 * 7)
    graph = _record(lambda: geglu(x, weight, bias))
    (op,) = graph.ops
    assert (op.name, op.kind) == ("vidgen::geglu_fwd", MATMUL)
    # an independent count: torch's flop counter over diffusers' module
    module = GEGLU(12, 7)
    with FlopCounterMode(display=False) as counter:
        module(torch.randn(2, 5, 12))
    assert op.matmul_flops == counter.get_total_flops() == 2 * 10 * 12 * 14
    kernel = Costing(graph).kernel([op.index])
    assert kernel.write_bytes == 10 * 7 * 2  # (M, N) once: the (M, 2N) projection never
    assert kernel.read_bytes == (x.numel() + weight.numel() + bias.numel()) * 2
    patched = patch_geglu(GEGLU(12, 7).to(META, HALF))  # what patch(feed_forward=True) records
    assert [op.name for op in _record(lambda: patched(x), [patched]).ops] == ["vidgen::geglu_fwd"]


def test_linear_residual_is_one_matmul_and_a_fused_block_runs_three():
    from diffusers.models.attention import BasicTransformerBlock

    from vidgen.integration.residual_adds import patch_residual_adds
    from vidgen.ops.linear_residual import linear_residual

    x, weight, bias, residual = _meta(2, 5, 12), _meta(7, 12), _meta(7), _meta(2, 5, 7)
    graph = _record(lambda: linear_residual(x, weight, bias, residual))
    (op,) = graph.ops
    assert (op.name, op.kind) == ("vidgen::linear_residual_fwd", MATMUL)
    with FlopCounterMode(display=False) as counter:
        F.linear(torch.randn(2, 5, 12), torch.randn(7, 12))
    assert op.matmul_flops == counter.get_total_flops() == 2 * 10 * 12 * 7
    kernel = Costing(graph).kernel([op.index])
    assert kernel.write_bytes == 10 * 7 * 2  # the sum once: the projection never
    assert kernel.read_bytes == (x.numel() + weight.numel() + bias.numel() + residual.numel()) * 2
    block = BasicTransformerBlock(16, 2, 8, cross_attention_dim=12, activation_fn="geglu").to(META, HALF).eval()
    patch_residual_adds(block)  # what patch(residual_adds=True) records
    names = [op.name for op in _record(lambda: block(_meta(2, 5, 16), encoder_hidden_states=_meta(2, 3, 12)),
                                       [block]).ops]
    assert names.count("vidgen::linear_residual_fwd") == 3 and "aten::add" not in names


def test_attention_runs_as_cudas_fused_kernel_with_its_flops():
    q = _meta(2, 3, 64, 40)
    graph = _record(lambda: F.scaled_dot_product_attention(q, q, q))
    assert [op.name for op in graph.ops] == ["aten::_scaled_dot_product_flash_attention"]  # no score matrix
    assert graph.ops[0].matmul_flops == 4 * 2 * 3 * 64 * 64 * 40
    graph = _record(lambda: F.scaled_dot_product_attention(*(_meta(2, 3, 64, 40, dtype=torch.float32),) * 3))
    assert [op.name for op in graph.ops] == ["aten::_scaled_dot_product_efficient_attention"]


# ----------------------------------------------------------------------------------------------
# Bytes and launches
# ----------------------------------------------------------------------------------------------
def test_views_are_free_and_every_tensor_is_read_and_written_once():
    a = _meta(4, 6)  # 48 bytes, made before the step

    def step():
        transposed = a.t().view(6, 4)                # views: no kernel
        copied = transposed.contiguous()             # one kernel: read 48, write 48
        doubled = copied * copied                    # one region read once
        doubled.add_(copied)                         # in place: reads both, writes doubled
        out = torch.empty(6, 4, device=META, dtype=HALF)  # an allocation: no kernel
        out.copy_(doubled)                           # overwritten, not read
        broadcast = a[:1].expand(5, 6) + 1           # stride 0: 6 stored elements read
        return out, broadcast

    graph = _record(step)
    assert [op.name for op in graph.ops] == ["aten::clone", "aten::mul", "aten::add_", "aten::copy_", "aten::add"]
    assert [(op.read_bytes, op.write_bytes) for op in graph.ops] == [(48, 48), (48, 48), (96, 48), (48, 48), (12, 60)]
    clone, mul, add_, copy, _ = graph.ops
    assert {a.writer for a in add_.reads} == {clone.index, mul.index}  # dependencies: who wrote what it reads
    assert [a.writer for a in copy.reads] == [add_.index]
    assert all(op.kind == POINTWISE for op in graph.ops)
    kernels = partition(Costing(graph), never)
    assert sum(k.launches for k in kernels) == 5
    assert Totals.of(kernels, CEILINGS).seconds == pytest.approx((96 + 96 + 144 + 96 + 72) * 1e-9)  # bandwidth-bound


def test_a_normalisation_reads_twice_only_when_its_group_does_not_fit_on_chip():
    small, big = _meta(1, 64, 32, 32), _meta(1, 4, 256, 256)  # groups of 4 KiB and of 256 KiB

    graph = _record(lambda: (F.group_norm(small, 16), F.group_norm(big, 1)))
    fits, too_big = graph.ops
    assert fits.kind == too_big.kind == NORMALISATION
    assert (fits.two_pass, too_big.two_pass) == (False, True)
    costing = Costing(graph)
    assert costing.kernel([fits.index]).read_bytes == small.numel() * 2
    assert costing.kernel([too_big.index]).read_bytes == 2 * big.numel() * 2
    assert costing.kernel([too_big.index]).launches == 2


# ----------------------------------------------------------------------------------------------
# Fusion
# ----------------------------------------------------------------------------------------------
def _chain():
    x, w, r = _meta(64, 32), _meta(32, 16), _meta(64, 16)  # 4096, 1024, 2048 bytes

    def step():
        y = x * 2
        z = y + 1
        act = F.silu(z)
        out = act @ w + r     # mm, then a residual add
        return out, y * 3     # y is read again after the mm: it must be written

    return _record(step)


def test_ideal_elementwise_fusion_costs_only_the_ends_of_each_chain():
    graph = _chain()
    assert [op.name for op in graph.ops] == ["aten::mul", "aten::add", "aten::silu", "aten::mm", "aten::add",
                                             "aten::mul"]
    costing = Costing(graph)
    eager, fused = partition(costing, never), partition(costing, elementwise)
    assert len(eager) == 6
    assert [k.ops for k in fused] == [(0, 1, 2), (3,), (4,), (5,)]
    chain = fused[0]
    # reads x once; writes act (read by the mm) and y (read by the last mul), never z
    assert (chain.read_bytes, chain.write_bytes) == (4096, 4096 + 4096)
    assert sum(k.nbytes for k in fused) < sum(k.nbytes for k in eager)
    assert Totals.of(fused, CEILINGS).launches == 4


def test_compile_fuses_norms_and_units_are_opaque_and_disjoint():
    x, w = _meta(8, 320), _meta(320, 320)

    def step():
        h = F.layer_norm(x + 1, (320,))
        return F.gelu(h @ w) * 2

    graph = _record(step)
    costing = Costing(graph)
    assert [k.ops for k in partition(costing, elementwise)] == [(0,), (1,), (2,), (3, 4)]
    assert [k.ops for k in partition(costing, inductor)] == [(0, 1), (2,), (3, 4)]
    assert [k.ops for k in partition(costing, inductor, [{2, 3}])] == [(0, 1), (2, 3), (4,)]
    with pytest.raises(ValueError, match="two units"):
        partition(costing, never, [{0, 1}, {1, 2}])


def test_the_combined_fusions_under_compile_keep_only_those_that_pay():
    x, w = _meta(4096, 320), _meta(320, 1280)

    def step():
        h = F.layer_norm(x + 1, (320,))
        return F.gelu(h @ w) * 2

    costing = Costing(_record(step))
    ceilings = Ceilings(matmul_tflops=600.0, vector_tflops=60.0, copy_gbs=3000.0, launch_us=3.0, source="test")
    epilogue = Fusion("matmul + GELU + scale", lambda c: [frozenset({2, 3, 4})], "one kernel")
    lone_gelu = Fusion("GELU alone", lambda c: [frozenset({3})], "splits Inductor's GELU-scale kernel")
    compiled = Totals.of(partition(costing, inductor), ceilings).seconds
    assert Totals.of(partition(costing, inductor, [frozenset({3})]), ceilings).seconds > compiled
    assert combined_under_compile(costing, ceilings, [lone_gelu, epilogue]) == [frozenset({2, 3, 4})]
    assert combined_under_compile(costing, ceilings, [lone_gelu]) == []


def test_fusion_candidates_find_their_patterns_in_diffusers_modules():
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    block = ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=None, groups=8).to(META, HALF).eval()
    ff = FeedForward(32, activation_fn="geglu").to(META, HALF).eval()
    x, tokens = _meta(2, 32, 8, 8), _meta(2, 16, 32)
    graph = _record(lambda: (block(x, None), ff(tokens)), [block, ff])
    costing = Costing(graph)
    names = lambda units: [sorted(graph.ops[i].name for i in unit) for unit in units]  # noqa: E731
    assert names(group_norm_silu(costing)) == [["aten::native_group_norm", "aten::silu"]] * 2
    # conv2 + the residual add + diffusers' "/ output_scale_factor"; the feed-forward's output has no residual
    assert names(residual_epilogue(costing)) == [["aten::add", "aten::convolution", "aten::div"]]
    assert names(geglu(costing)) == [["aten::addmm", "aten::gelu", "aten::mul"]]


# ----------------------------------------------------------------------------------------------
# Ceilings, measured profiles, the whole pipeline
# ----------------------------------------------------------------------------------------------
def _result(path, benchmark, env, ceilings=None, rows=()):
    path.write_text(json.dumps({"benchmark": benchmark, "environment": env, "ceilings": ceilings, "rows": list(rows)}))


def test_ceilings_come_from_the_newest_measurement_never_from_a_prediction(tmp_path):
    assert load_ceilings(str(tmp_path)).matmul_tflops == H200_2026_11_30["bf16_matmul_tflops"]
    assert "2026-11-30" in load_ceilings(str(tmp_path)).source
    _result(tmp_path / "e2e-H100-2027-01-01.json", "e2e", {"date": "2027-01-01T00:00:00", "gpu": "H100"},
            {"copy_gbs": 3000.0, "bf16_matmul_tflops": 600.0})
    _result(tmp_path / "roofline-model-2027-02-01.json", "roofline", {"date": "2027-02-01T00:00:00", "gpu": "model",
            "prediction": True}, {"copy_gbs": 1.0, "bf16_matmul_tflops": 1.0})
    ceilings = load_ceilings(str(tmp_path), launch_us=5.0)
    assert (ceilings.matmul_tflops, ceilings.copy_gbs, ceilings.launch_us) == (600.0, 3000.0, 5.0)
    assert "H100" in ceilings.source


def test_the_tiny_pipeline_writes_predictions_that_no_reader_takes_for_measurements(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{roofline.BEGIN_MARKER}\nold\n{roofline.END_MARKER}\n\nafter\n")
    _result(tmp_path / "profile_step-H200-2027-01-01.json", "profile_step", {"date": "2027-01-01T00:00:00",
            "gpu": "H200"}, rows=[{"kind": "role", "case": "tune-a-video", "side": "vidgen", "frames": 3, "size": 512,
                                   "role": "convolution", "ms": 1.0}])
    assert roofline.main(["--tiny", "--cases", "tune-a-video", "svd", "--out", str(tmp_path), "--results", str(tmp_path),
                          "--readme", str(readme)]) == 0
    printed = capsys.readouterr().out
    assert "vidgen patched + torch.compile" in printed and "H200 of 2026-11-30" in printed
    (written,) = tmp_path.glob("roofline-model-*.json")
    data = json.loads(written.read_text())
    assert harness.is_prediction(data) and data["environment"]["gpu"] == "model"
    configs = {(r["case"], r["config"]): r for r in data["rows"] if r["kind"] == "config"}
    assert set(configs) == {(case, c) for case in ("tune-a-video-3", "svd-3") for c in roofline.CONFIGS}
    for (case, config), row in configs.items():
        assert row["ms"] > 0 and row["launches"] > 0 and row["gb"] > 0
        assert row["speedup"] == pytest.approx(configs[(case, "eager")]["ms"] / row["ms"])
    # vidgen's kernels replace Tune-A-Video's attention and SVD's temporal blocks: fewer bytes, a faster step
    for case in ("tune-a-video-3", "svd-3"):
        assert configs[(case, "patched")]["gb"] < configs[(case, "eager")]["gb"]
        assert configs[(case, "patched")]["ms"] < configs[(case, "eager")]["ms"]
        assert not configs[(case, "patched")]["patch_note"]
    assert any(r["kind"] == "fusion" for r in data["rows"])
    assert (tmp_path / written.name.replace(".json", ".png")).stat().st_size > 0
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{roofline.END_MARKER}\n\nafter\n")
    assert "| Tune-A-Video, 3 frames, 128x128 |" in text and "(no vidgen patch yet: patched = eager)" not in text
    # the report generator reads measurements only; the profile above is one, the prediction is not
    assert [r.benchmark for r in report.newest_results(str(tmp_path))] == ["profile_step"]


def test_measured_profiles_are_read_per_role(tmp_path):
    rows = [{"kind": "role", "case": "animatediff", "side": side, "frames": 16, "size": 512, "role": "norm", "ms": ms}
            for side, ms in (("default", 2.0), ("vidgen", 1.5))]
    _result(tmp_path / "profile_step-cpu-2027-01-01.json", "profile_step", {"date": "2027-01-01T00:00:00", "gpu": None},
            rows=rows)
    assert roofline.measured_profile(str(tmp_path)) is None  # a CPU run measures no GPU
    _result(tmp_path / "profile_step-H200-2027-01-02.json", "profile_step", {"date": "2027-01-02T00:00:00",
            "gpu": "H200"}, rows=rows)
    source, roles = roofline.measured_profile(str(tmp_path))
    assert "H200" in source
    assert roles == {("animatediff-16", "eager"): {"norm": 2.0}, ("animatediff-16", "patched"): {"norm": 1.5}}


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(SystemExit):
        roofline.main(["--launch-us", "-1"])
    with pytest.raises(SystemExit):
        roofline.main(["--tiny", "--readme"])  # the repository's README: not for tiny predictions
