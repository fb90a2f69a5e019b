"""The benchmark scripts run: the end-to-end one as a CPU smoke run, the GPU ones refuse cleanly."""
import importlib

import pytest
import torch

GPU_BENCHMARKS = ["bench_noise", "bench_guidance", "bench_frame_attention", "bench_temporal_attention", "bench_e2e",
                  "bench_tune", "profile_step", "bench_frame_group_norm"]


def test_end_to_end_benchmark_smoke_run(capsys, monkeypatch):
    """The script's plumbing, on the reference backend (the kernels have their own tests); the
    latents of every vidgen variant are compared with the default side's, and in fp32 on the
    reference backend they agree to rounding."""
    from benchmarks import bench_e2e
    from vidgen.ops import use_backend

    measured = []
    run_benchmark = bench_e2e.run_benchmark
    monkeypatch.setattr(bench_e2e, "run_benchmark", lambda plan: measured.extend(run_benchmark(plan)) or measured)
    with use_backend("torch"):
        assert bench_e2e.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for case in bench_e2e.CASES:
        assert case in out
        rows = [row for row in measured if row["case"] == case]
        assert rows[0]["impl"] == bench_e2e.DEFAULT_LABEL[case] and rows[0]["rel_l2"] == 0.0
        vidgen_rows = [row for row in rows if row["impl"].startswith("vidgen")]
        # exactly 0 would mean the vidgen variants ran the default side's code
        assert vidgen_rows and all(0 < row["rel_l2"] < 1e-4 and row["seconds"] > 0 for row in vidgen_rows)
        assert not any(row.get("error") for row in rows)


def test_fused_norm_benchmark_smoke_run(capsys, monkeypatch):
    """Every case and pass of the fusions' microbenchmark (GroupNorm over frames, GEGLU, residual Linear) runs each peer
    and compares vidgen's output with diffusers' way (reference backend: the kernels have their own tests)."""
    from benchmarks import bench_frame_group_norm as bench
    from vidgen.ops import use_backend

    measured = []
    measure_peers = bench.measure_peers
    monkeypatch.setattr(bench, "measure_peers",
                        lambda *args, **kwargs: measured.extend(measure_peers(*args, **kwargs)) or measured)
    with use_backend("torch"):
        assert bench.main(["--smoke", "--dtype", "fp32"]) == 0
    assert "nothing written" in capsys.readouterr().out
    cases = [case.name for case in bench.NORM_CASES] + [case[0] for case in bench.SMOKE_GEGLU_CASES] \
        + [case[0] for case in bench.SMOKE_LINEAR_RESIDUAL_CASES]
    assert {(row["case"], row["pass"]) for row in measured} == {
        (case, direction) for case in cases for direction in bench.PASSES}
    assert all(row["vidgen_matmul_fraction"] > 0 for row in measured if row["bench"] in ("geglu", "linear_residual"))
    for row in measured:
        assert row["vidgen_ms"] > 0 and row["torch_eager_ms"] > 0 and row["speedup_vs_torch_eager"] > 0
        assert not any(key.endswith("_error") for key in row)
        if row["pass"] == "fwd":
            assert row["rel_l2_vs_torch_eager"] < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("name", GPU_BENCHMARKS)
def test_gpu_benchmarks_refuse_without_a_gpu(name):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main([])
    assert "GPU" in str(exc.value) or "CUDA" in str(exc.value)


def test_parallel_model_counts_what_each_collective_moves():
    from benchmarks.parallel_model import bytes_per_step

    # one motion module (2 videos, 16 frames, 64 positions, 8 channels) and its GroupNorm (4 groups), 4 ranks
    layers = [{"kind": "temporal_attention", "videos": 2, "frames": 16, "positions": 64, "channels": 8, "blocks": 1},
              {"kind": "group_norm", "videos": 2, "groups": 4},
              {"kind": "halo", "videos": 2, "frame_elements": 100}]
    counted = bytes_per_step(layers, (2, 4, 16, 8, 8), ranks=4)
    activation = 2 * 16 * 64 * 8 * 2  # fp16 bytes
    assert counted["bytes"]["all_to_all"] == 2 * activation / 4 * 3 / 4  # a shard's 3/4, there and back
    assert counted["bytes"]["all_reduce"] == 3 * 2 * 4 * 8 * 2 * 3 / 4  # ring all-reduce of float64 moments
    assert counted["bytes"]["halo"] == 2 * 2 * 100 * 2
    assert counted["bytes"]["all_gather"] == 2 * 2 * 4 * 16 * 8 * 8 / 4 * 3 + 9 * 8 * 3
    assert counted["collectives"] == {"all_to_all": 2, "all_reduce": 1, "halo": 1, "all_gather": 2}
