"""The benchmark scripts run: the end-to-end one as a CPU smoke run, the GPU ones refuse cleanly."""
import importlib

import pytest
import torch

GPU_BENCHMARKS = ["bench_noise", "bench_guidance", "bench_frame_attention", "bench_temporal_attention", "bench_e2e",
                  "bench_tune"]


def test_end_to_end_benchmark_smoke_run(capsys):
    """The script's plumbing, on the reference backend (the kernels have their own tests)."""
    from benchmarks import bench_e2e
    from vidgen.ops import use_backend

    with use_backend("torch"):
        assert bench_e2e.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for case in ("animatediff", "tune-a-video", "video-adapter"):
        assert case in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("name", GPU_BENCHMARKS)
def test_gpu_benchmarks_refuse_without_a_gpu(name):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main([])
    assert "GPU" in str(exc.value) or "CUDA" in str(exc.value)
