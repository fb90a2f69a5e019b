"""benchmarks/bench_e2e.py on a CPU: what each command line measures, how variants are run,
compared and skipped (stand-in variants), and the latents comparison of a tiny-model run."""
import pytest
import torch

import vidgen
from benchmarks import bench_e2e


def plan(*argv):
    return bench_e2e.plan_from_args(bench_e2e.parse_args(list(argv)))


def test_full_run_is_the_issue_s_configuration():
    full = plan()
    assert full.cases == bench_e2e.CASES
    assert (full.arch, full.dtype, full.size, full.device) == ("sd15", torch.float16, 512, "cuda")
    assert (full.animatediff_frames, full.tuneavideo_frames, full.adapter_frames) == (16, (8, 24), 8)
    assert full.free_noise == (64, 16, 4)  # AnimateDiff+FreeNoise: 64 frames in windows of 16, stride 4
    assert (full.animatediff_steps, full.tuneavideo_steps) == (25, 50)
    assert full.compile and full.repeats == 2 and full.write


def test_quick_is_eager_with_fewer_steps_unless_compile_is_asked_for():
    quick = plan("--quick")
    assert (quick.animatediff_steps, quick.tuneavideo_steps, quick.repeats) == (10, 10, 1)
    assert not quick.compile
    assert quick.tuneavideo_frames == (8, 24)  # the memory goal is at 24 frames: --quick keeps it
    assert plan("--quick", "--compile").compile
    assert not plan("--no-compile").compile


def test_gpu_check_s_command_line_still_parses():
    """tools/gpu_check runs ``bench_e2e --quick --cases tune-a-video``."""
    from tools.gpu_check import phases

    [e2e] = [bench for bench in phases.BENCHES if bench.name == "bench-e2e"]
    argv = e2e.argv[1:]
    assert e2e.argv[0] == "benchmarks.bench_e2e"
    assert plan(*argv).cases == ("tune-a-video",)


def test_overrides_and_refusals():
    assert plan("--steps", "3").animatediff_steps == plan("--steps", "3").tuneavideo_steps == 3
    smoke = plan("--smoke")
    assert (smoke.arch, smoke.animatediff_steps, smoke.compile, smoke.write) == ("tiny", 2, False, False)
    for bad in (["--steps", "0"], ["--repeats", "0"], ["--compile-budget-s", "-1"], ["--cases", "nope"]):
        with pytest.raises(SystemExit):
            bench_e2e.parse_args(bad)


def test_sides_run_the_default_eager_first_and_compile_only_when_asked():
    assert bench_e2e._sides("tune-a-video", False) == [("reference", False, False), ("vidgen", True, False),
                                                       ("vidgen (again)", True, False)]
    with_compile = bench_e2e._sides("animatediff", True)
    assert with_compile[0] == ("diffusers", False, False)
    assert [impl for impl, _, compiled in with_compile if compiled] == ["diffusers+compile", "vidgen+compile"]


def test_relative_l2():
    reference = torch.ones(2, 4, 3, dtype=torch.float16)
    assert bench_e2e.relative_l2(reference, reference) == 0.0
    assert bench_e2e.relative_l2(reference * 1.5, reference) == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(ValueError, match="shape"):
        bench_e2e.relative_l2(torch.ones(3), reference)


def stand_in(impl, compiled=False, result=None, fails=False, log=None):
    """A variant that returns ``result`` (or raises) and logs its enter/leave calls."""
    log = log if log is not None else []

    def run():
        if fails:
            raise RuntimeError("compiler said no")
        return result

    return bench_e2e.Variant(impl, compiled, lambda: log.append(("enter", impl)), lambda: log.append(("leave", impl)),
                             run, lambda: [], lambda: [])


def test_run_variants_compares_reports_failures_and_keeps_the_compile_budget():
    reference = torch.ones(8)
    log = []
    variants = [stand_in("diffusers", result=reference, log=log),
                stand_in("diffusers+compile", compiled=True, fails=True, log=log),
                stand_in("vidgen", result=reference * 1.25, log=log),
                stand_in("vidgen+compile", compiled=True, result=reference, log=log)]
    smoke = plan("--smoke", "--compile")
    rows = bench_e2e.run_variants("animatediff", 4, 64, 2, variants, torch.device("cpu"), smoke, {"spent_s": 0.0})
    by_impl = {row["impl"]: row for row in rows}
    assert by_impl["diffusers"]["rel_l2"] == 0.0
    assert by_impl["vidgen"]["rel_l2"] == pytest.approx(0.25)
    assert "compiler said no" in by_impl["diffusers+compile"]["error"]
    assert by_impl["diffusers+compile"]["seconds"] is None  # report.py counts such a row as a failed case
    assert by_impl["vidgen+compile"]["seconds"] > 0 and "compile_seconds" in by_impl["vidgen+compile"]
    assert log.count(("leave", "diffusers+compile")) == 1  # a failed variant still restores the models

    spent = {"spent_s": smoke.compile_budget_s}
    rows = bench_e2e.run_variants("animatediff", 4, 64, 2, variants[2:], torch.device("cpu"), smoke, spent)
    assert "budget" in rows[1]["skipped"] and rows[1]["seconds"] is None
    assert rows[0]["seconds"] > 0  # eager variants never wait on the budget


def test_speedups_are_against_the_default_eager_row_of_the_same_frames():
    rows = [{"case": "tune-a-video", "impl": "reference", "frames": 8, "seconds": 2.0},
            {"case": "tune-a-video", "impl": "vidgen", "frames": 8, "seconds": 1.0},
            {"case": "tune-a-video", "impl": "reference", "frames": 24, "seconds": 6.0},
            {"case": "tune-a-video", "impl": "vidgen+compile", "frames": 24, "seconds": None}]
    bench_e2e.add_speedups(rows)
    assert [row["speedup"] for row in rows] == [1.0, 2.0, 1.0, None]


def test_role_fields_are_plain_names():
    assert bench_e2e.role_field("temporal attention") == "role_peak_gib_temporal_attention"
    assert bench_e2e.role_field("attention (unscoped)") == "role_peak_gib_attention_unscoped"


def test_host_time_per_call_is_in_microseconds_per_call():
    import time

    from benchmarks import harness

    calls = []
    per_call = harness.host_us_per_call(lambda: (calls.append(1), time.sleep(0.002)), calls=5)
    assert len(calls) == 10 + 5  # the warm-up calls are not timed
    assert 2000 <= per_call < 50000


def test_svd_case_is_svd_and_svd_xt_at_576x1024_and_runs_on_the_tiny_model():
    full = plan()
    assert (full.svd_arch, full.svd_frames, full.svd_size, full.svd_steps) == ("svd", (14, 25), (576, 1024), 25)
    smoke = plan("--smoke", "--cases", "svd")
    with vidgen.ops.use_backend("torch"), torch.no_grad():  # the plumbing; the kernels have their own tests
        rows = bench_e2e.svd_rows(torch.device("cpu"), smoke, {"spent_s": 0.0})
    assert [(r["impl"], r["frames"]) for r in rows] == [("diffusers", 3), ("vidgen", 3)]
    assert all(r["seconds"] > 0 and "error" not in r for r in rows), rows
    assert rows[0]["rel_l2"] == 0.0 and rows[1]["rel_l2"] < 1e-4  # fp32: the same latents
