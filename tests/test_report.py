"""tools/report.py on synthetic result files written by benchmarks/harness.py's own writer.

Rows follow what the benchmark scripts write (the temporal-attention ones come from the
script's own row builder); the expected numbers are computed here from the synthetic timings.
"""
import math
import os
import re
import shutil
import statistics

import pytest

from benchmarks import bench_temporal_attention, harness
from tools import ROOT, report, sanitize_kernels
from tools.gpu_check import deadline, evidence, validation

GPU = "NVIDIA Synthetic-GPU 80GB"   # a dash in the name, as some real GPU names have
COMMIT = "abc1234"
COPY_GBS = 3000.0
NOISE_SHAPES = [(2, 4, 16, 64, 64), (2, 4, 24, 96, 96)]
README_HEAD = ("# project\n\nSome text with unicode: \u00e9\u2192\u00d7.\n\n## Status\n\n"
               f"{report.STATUS_BEGIN_MARKER}\nhand-typed status\n{report.STATUS_END_MARKER}\n\n")
README_TAIL = "\n\n## Layout\n\n| a | b |\n| --- | --- |\n\ntrailing text without a final newline"


@pytest.fixture(scope="module")
def base_environment():
    return harness.environment()  # the writer's real tag schema, on this machine


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    path = tmp_path / "results"
    monkeypatch.setattr(harness, "RESULTS_DIR", str(path))
    return path


def _environment(base, date):
    return {**base, "gpu": GPU, "commit": COMMIT, "date": f"{date}T12:00:00+00:00", "torch": "2.11.0",
            "triton": "3.6.0", "cuda": "12.8"}


def _write_noise(base, date, timings_per_shape):
    """bench_noise's rows: one per implementation and shape, speedups and copy fraction as it computes them."""
    rows = []
    for shape, timings in zip(NOISE_SHAPES, timings_per_shape):
        nbytes = math.prod(shape) * 4
        for impl, ms in timings.items():
            gbs = nbytes / (ms * 1e-3) / 1e9
            rows.append({"op": "correlated_noise", "impl": impl, "shape": "x".join(map(str, shape)), "kind": "mixed",
                         "dtype": "float32", "ms": ms, "ms_p20": ms, "ms_p80": ms, "gbs": gbs,
                         "copy_fraction": gbs / COPY_GBS, "speedup_vs_eager": timings["eager"] / ms,
                         "speedup_vs_compile": timings["torch.compile"] / ms})
    harness.write_results("noise", rows, _environment(base, date), {"copy_gbs": COPY_GBS, "bf16_matmul_tflops": 900.0})


NOISE_TIMINGS = [{"vidgen": 0.10, "eager": 0.40, "torch.compile": 0.15, "vidgen (again)": 0.11},
                 {"vidgen": 0.20, "eager": 0.50, "torch.compile": 0.30, "vidgen (again)": 0.21}]
E2E_RUNS = {  # (case, frames) -> impl -> (seconds, peak GiB)
    ("animatediff", 16): {"diffusers": (10.0, 8.0), "diffusers+compile": (8.0, 8.0), "vidgen": (5.0, 6.0),
                          "vidgen (again)": (5.1, 6.0), "vidgen+compile": (4.0, 6.0)},
    ("tune-a-video", 8): {"reference": (6.0, 10.0), "vidgen": (2.0, 6.0)},
    ("tune-a-video", 24): {"reference": (20.0, 30.0), "vidgen": (8.0, 15.0)},
}
TEMPORAL_LEVELS = [  # (level, C, ours ms or None when it failed, peer ms)
    ("64x64", 320, 0.5, {"sdpa_frame_major": 1.0, "flex_attention": 0.75}),
    ("32x32", 640, 0.2, {"sdpa_frame_major": 0.5, "flex_attention": 0.3}),
    ("16x16", 1280, None, {"sdpa_frame_major": 0.4, "flex_attention": 0.4}),
]


def _write_e2e(base, date):
    rows = [{"case": case, "impl": impl, "frames": frames, "size": 512, "steps": 25, "seconds": seconds,
             "peak_gib": peak, "speedup": impls[next(iter(impls))][0] / seconds}
            for (case, frames), impls in E2E_RUNS.items() for impl, (seconds, peak) in impls.items()]
    harness.write_results("e2e", rows, _environment(base, date), {"copy_gbs": COPY_GBS, "bf16_matmul_tflops": 900.0})


def _write_temporal(base, date):
    rows = []
    for level, channels, ours_ms, peer_ms in TEMPORAL_LEVELS:
        shape = {"level": level, "C": channels, "D": channels // 8, "F": 16, "problems": 1, "dtype": "float16"}
        ours = {"ms": ours_ms, "ms_p20": ours_ms, "ms_p80": ours_ms} if ours_ms else {"ms": None, "error": "boom"}
        peers = {name: {"ms": ms} for name, ms in peer_ms.items()}
        rows.append(bench_temporal_attention._op_row(shape, "fwd", ours, peers, 4 * 2**20, {"copy_gbs": COPY_GBS}))
    harness.write_results("temporal_attention", rows, _environment(base, date), {"copy_gbs": COPY_GBS})


def _write_readme(path, section="\nstale hand-typed numbers\n", newline="\n"):
    text = README_HEAD + report.BEGIN_MARKER + section + report.END_MARKER + README_TAIL
    path.write_bytes(text.replace("\n", newline).encode())


def _table_line(readme_text, label):
    lines = [line for line in readme_text.splitlines() if line.startswith(f"| {label} |")]
    assert len(lines) == 1, f"expected one table line for {label!r} in:\n{readme_text}"
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def _spread(values, unit="x"):
    fmt = (lambda v: f"{v:.2f}x") if unit == "x" else (lambda v: f"{100 * v:.0f}%")
    mean, low, high = fmt(statistics.geometric_mean(values)), fmt(min(values)), fmt(max(values))
    return mean if low == high else f"{mean} ({low}-{high})"


@pytest.fixture
def synthetic_results(results_dir, base_environment):
    _write_noise(base_environment, "2026-03-01", [{k: 10 * v if k.startswith("vidgen") else v for k, v in t.items()}
                                                  for t in NOISE_TIMINGS])  # older run: must be ignored
    _write_noise(base_environment, "2026-03-02", NOISE_TIMINGS)
    _write_e2e(base_environment, "2026-03-02")
    _write_temporal(base_environment, "2026-03-03")
    return results_dir


def test_table_lines_hold_the_numbers_of_the_newest_files(synthetic_results, tmp_path):
    readme = tmp_path / "README.md"
    _write_readme(readme)
    assert report.main(["--results", str(synthetic_results), "--readme", str(readme)]) == 0
    text = readme.read_text()

    noise = _table_line(text, "correlated_noise")
    assert noise[1] == "2"
    eager = [t["eager"] / t["vidgen"] for t in NOISE_TIMINGS]
    compiled = [t["torch.compile"] / t["vidgen"] for t in NOISE_TIMINGS]
    assert noise[2] == f"{_spread(eager)} vs eager; {_spread(compiled)} vs compile"
    copy = [math.prod(s) * 4 / (t["vidgen"] * 1e-3) / 1e9 / COPY_GBS for s, t in zip(NOISE_SHAPES, NOISE_TIMINGS)]
    assert noise[3] == f"{_spread(copy, '%')} of copy bandwidth"
    assert noise[4] == "-"

    animatediff = _table_line(text, "AnimateDiff sampling")
    assert animatediff[2] == "2.00x vs diffusers; 1.60x vs diffusers+compile"
    assert animatediff[4] == "0.75x of diffusers; 0.75x of diffusers+compile"
    assert _table_line(text, "AnimateDiff sampling, compiled")[2] == "2.00x vs diffusers+compile"
    tuneavideo = _table_line(text, "Tune-A-Video sampling")
    runs = [E2E_RUNS[("tune-a-video", f)] for f in (8, 24)]
    assert tuneavideo[1] == "2"
    assert tuneavideo[2] == f"{_spread([r['reference'][0] / r['vidgen'][0] for r in runs])} vs reference"
    assert tuneavideo[4] == f"{_spread([r['vidgen'][1] / r['reference'][1] for r in runs])} of reference"

    temporal = _table_line(text, "temporal_attention fwd")
    assert temporal[1] == "3 (1 failed)"
    ran = [level for level in TEMPORAL_LEVELS if level[2]]
    assert temporal[2] == "; ".join(f"{_spread([lv[3][peer] / lv[2] for lv in ran])} vs {peer}"
                                    for peer in ("sdpa_frame_major", "flex_attention"))
    assert temporal[3] == f"{_spread([4 * 2**20 / (lv[2] * 1e-3) / 1e9 / COPY_GBS for lv in ran], '%')} of copy bandwidth"

    for absent in ("Video Adapter sampling", "guided_step", "frame_attention", "motion module", "add_noise"):
        assert f"| {absent}" not in text  # no rows for them in these files
    assert f"Measured on {GPU}, commit `{COMMIT}`, 2026-03-02 to 2026-03-03" in text
    assert "e2e, noise, temporal_attention." in text
    assert "stale hand-typed numbers" not in text


def test_plot_is_a_png_next_to_the_results_and_linked(synthetic_results, tmp_path):
    import matplotlib.image

    readme = tmp_path / "README.md"
    _write_readme(readme)
    report.main(["--results", str(synthetic_results), "--readme", str(readme)])
    plot = synthetic_results / report.PLOT_NAME
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(plot).shape
    assert height > 100 and width > 100
    assert f"(results/{report.PLOT_NAME})" in readme.read_text()


SECTION_MARKERS = ((report.STATUS_BEGIN_MARKER, report.STATUS_END_MARKER), (report.BEGIN_MARKER, report.END_MARKER))


def _outside_sections(text: bytes) -> bytes:
    """``text`` without what lies between each pair of generated-section markers."""
    for begin, end in SECTION_MARKERS:
        begin, end = begin.encode(), end.encode()
        text = text[:text.index(begin) + len(begin)] + text[text.index(end):]
    return text


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_only_the_sections_between_the_markers_change(synthetic_results, tmp_path, newline):
    readme = tmp_path / "README.md"
    _write_readme(readme, newline=newline)
    before = readme.read_bytes()
    report.main(["--results", str(synthetic_results), "--readme", str(readme)])
    after = readme.read_bytes()
    assert _outside_sections(after) == _outside_sections(before)
    for begin, end in SECTION_MARKERS:
        begin, end = begin.encode(), end.encode()
        section = after[after.index(begin) + len(begin):after.index(end)]
        assert section != before[before.index(begin) + len(begin):before.index(end)]
        assert section.count(b"\n") == section.count(newline.encode())  # the file's own line endings


def test_check_reports_a_stale_section_and_writes_nothing(synthetic_results, tmp_path, base_environment, capsys):
    readme = tmp_path / "README.md"
    _write_readme(readme)
    args = ["--results", str(synthetic_results), "--readme", str(readme)]
    assert report.main(args + ["--check"]) == 1
    assert report.main(args) == 0
    assert report.main(args + ["--check"]) == 0
    generated = readme.read_bytes()
    _write_noise(base_environment, "2026-03-04", [{k: v / 2 if k == "vidgen" else v for k, v in t.items()}
                                                  for t in NOISE_TIMINGS])  # a newer run
    assert report.main(args + ["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert readme.read_bytes() == generated
    assert report.main(args) == 0
    assert report.main(args + ["--check"]) == 0
    faster = [2 * t["eager"] / t["vidgen"] for t in NOISE_TIMINGS]
    assert _table_line(readme.read_text(), "correlated_noise")[2].startswith(f"{_spread(faster)} vs eager")


def test_no_results_says_so_and_draws_nothing(results_dir, tmp_path):
    readme = tmp_path / "README.md"
    _write_readme(readme)
    results_dir.mkdir()
    args = ["--results", str(results_dir), "--readme", str(readme)]
    assert report.main(args) == 0
    text = readme.read_text()
    assert "No GPU results yet" in text and "| benchmark |" not in text
    assert not (results_dir / report.PLOT_NAME).exists()
    assert report.main(args + ["--check"]) == 0


def test_vidgen_bench_report_only_regenerates_the_default_readme(synthetic_results, tmp_path, monkeypatch):
    """``python -m tools.report`` in the checkout, in a process of its own: here a copy of the checkout's
    ``benchmarks/`` and ``tools/`` with the synthetic results in its default folder."""
    from vidgen.commands import bench

    checkout = tmp_path / "checkout"
    for package in ("benchmarks", "tools"):
        shutil.copytree(os.path.join(ROOT, package), checkout / package,
                        ignore=shutil.ignore_patterns("results", "__pycache__"))
    shutil.copytree(synthetic_results, checkout / "benchmarks" / "results")
    readme = checkout / "README.md"
    _write_readme(readme)
    monkeypatch.setattr(bench, "_checkout", lambda: str(checkout))
    assert bench.main(["--report-only"]) == 0
    assert _table_line(readme.read_text(), "correlated_noise")[1] == "2"
    with pytest.raises(SystemExit):
        bench.main(["--report-only", "noise"])


def test_bad_inputs_are_refused_clearly(results_dir, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    results_dir.mkdir()
    assert report.main(["--results", str(results_dir), "--readme", str(readme)]) == 2
    assert report.STATUS_BEGIN_MARKER in capsys.readouterr().err
    readme.write_text(README_HEAD + "no results markers\n")
    assert report.main(["--results", str(results_dir), "--readme", str(readme)]) == 2
    assert report.BEGIN_MARKER in capsys.readouterr().err
    assert readme.read_text() == README_HEAD + "no results markers\n"  # nothing written on either error
    _write_readme(readme)
    (results_dir / "notes.json").write_text('{"rows": []}')
    assert report.main(["--results", str(results_dir), "--readme", str(readme)]) == 2
    assert "notes.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main(["--results", str(tmp_path / "missing"), "--readme", str(readme)])


# ----------------------------------------------------------------------------------------------
# The status section, from make gpu-check's validation reports (written by its own code)
# ----------------------------------------------------------------------------------------------
DRIVER = "999.12"
TEST_FILES = {  # module -> test names, as pytest's JUnit XML names them
    "tests.test_noise": ["test_marginals[triton]", "test_add_noise_is_forward_diffusion[fp16]"],
    "tests.test_cuda_library": ["test_cuda_op_matches_reference[fp16]"],
    "tests.test_guidance": ["test_cfg_and_ddim_step_match_diffusers[default]"],
    "tests.test_frame_attention": ["test_forward_and_gradients[a]", "test_forward_and_gradients[b]"],
    "tests.test_frame_attention_autotune": ["test_each_candidate_matches_the_reference[160]"],
    "tests.test_temporal_attention": ["test_forward_matches_float64_reference[x]"],
    "tests.test_frame_group_norm": ["test_matches_float64_reference[x]"],
    "tests.test_geglu": ["test_matches_float64_reference[x]"],
    "tests.test_linear_residual": ["test_matches_float64_reference[x]"],
    "tests.test_real_shapes": ["test_frame_attention_matches_fp32_reference[sd15-16x16-full-F16-float16]",
                               "test_temporal_attention_matches_fp32_reference[sd15-8x8-F8-bfloat16-image]"],
}


def _junit(path, failing=()):
    cases = []
    for module, names in TEST_FILES.items():
        for name in names:
            failure = '<failure message="boom">trace</failure>' if name in failing else ""
            cases.append(f'<testcase classname="{module}" name="{name}" time="0.1">{failure}</testcase>')
    suite = f'<testsuite name="pytest">{"".join(cases)}</testsuite>'
    path.write_text(f'<?xml version="1.0"?><testsuites>{suite}</testsuites>')
    return str(path)


def _sanitizer_log(findings=None, stop_before=None):
    """compute-sanitizer's output around tools/sanitize_kernels.py's markers."""
    lines = ["========= COMPUTE-SANITIZER"]
    for name in sanitize_kernels.NAMES:
        if name == stop_before:
            break
        lines.append(f"{sanitize_kernels.BEGIN} {name}")
        if name in (findings or {}):
            lines += [f"========= {findings[name]}", "=========     at _forward_kernel+0x1a0"]
        lines.append(f"{sanitize_kernels.END} {name} ok")
    lines.append(f"========= ERROR SUMMARY: {len(findings or {})} errors")
    return "\n".join(lines)


def _write_validation(results_dir, tmp_path, base, date, *, gpu=GPU, failing=(), findings=None, racecheck=True,
                      dry_run=False, tests_phase="ok"):
    """A validation report as tools/gpu_check makes one: its JUnit reader, its sanitizer-log
    reader, its kernel statuses and its writer."""
    runner = deadline.Runner(540, str(tmp_path / f"work-{date}-{gpu[-3:]}"), dry_run)
    runner.record(deadline.Phase("tests", tests_phase))
    runner.close()
    junit = evidence.read_junit(_junit(tmp_path / f"tests-{date}.xml", failing))
    logs = {"memcheck": _sanitizer_log(findings)} | ({"racecheck": _sanitizer_log()} if racecheck else {})
    sanitizer = {tool: evidence.read_sanitizer_log(text, sanitize_kernels.NAMES) for tool, text in logs.items()}
    environment = {**base, "gpu": gpu, "driver": DRIVER, "commit": COMMIT, "date": f"{date}T12:00:00+00:00",
                   "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0"}
    return validation.write_report(validation.validation_report(environment, runner, junit, sanitizer), str(results_dir))


def _status(readme_text):
    return readme_text[readme_text.index(report.STATUS_BEGIN_MARKER):readme_text.index(report.STATUS_END_MARKER)]


def test_status_without_a_validation_report_says_no_kernel_is_validated(results_dir, synthetic_results, tmp_path):
    readme = tmp_path / "README.md"
    _write_readme(readme)
    empty = tmp_path / "empty"
    empty.mkdir()
    report.main(["--results", str(empty), "--readme", str(readme)])
    status = _status(readme.read_text())
    assert "No kernel has been validated on a GPU yet" in status and "hand-typed status" not in status
    assert "no speed is claimed" in status  # and no result files either
    report.main(["--results", str(synthetic_results), "--readme", str(readme)])
    status = _status(readme.read_text())
    assert "No kernel has been validated on a GPU yet" in status and "no speed is claimed" not in status


def test_status_names_the_kernels_gpu_toolchain_and_date_of_the_newest_report(synthetic_results, tmp_path,
                                                                             base_environment):
    _write_validation(synthetic_results, tmp_path, base_environment, "2026-03-04", gpu="NVIDIA Older-GPU",
                      failing=["test_forward_and_gradients[a]"])
    newest = _write_validation(synthetic_results, tmp_path, base_environment, "2026-03-05")
    _write_validation(synthetic_results, tmp_path, base_environment, "2026-03-06", gpu="NVIDIA Dry-GPU", dry_run=True)
    readme = tmp_path / "README.md"
    _write_readme(readme)
    assert report.main(["--results", str(synthetic_results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    status = _status(text)
    assert (f"on {GPU} (driver {DRIVER}; torch 2.11.0, triton 3.6.0, CUDA 13.0), commit `{COMMIT}`, 2026-03-05 "
            f"([report](results/{newest.rsplit('/', 1)[1]}))") in status
    assert "Older-GPU" not in status and "Dry-GPU" not in status
    for kernel, (_, patterns) in evidence.KERNELS.items():
        entries = [n for n in sanitize_kernels.NAMES if any(re.search(p, n) for p in patterns)]
        cells = _table_line(status, kernel)
        assert cells[1] == "correct on GPU" and cells[3] == cells[4] == f"clean ({len(entries)})"
    assert _table_line(status, "frame_attention (Triton, fwd+bwd)")[2] == "4 / 0"  # 2 + 1 + the real-shape one
    assert _table_line(status, "correlated_noise (Triton)")[2] == "1 / 0"         # not the add_noise test
    assert "13 passed, 0 failed, 0 errors, 0 skipped" in status
    assert _table_line(text, "correlated_noise")[1] == "2"  # the benchmark results still read alongside


def test_status_shows_failures_and_missing_evidence(results_dir, tmp_path, base_environment):
    results_dir.mkdir()
    _write_validation(results_dir, tmp_path, base_environment, "2026-03-05",
                      failing=["test_add_noise_is_forward_diffusion[fp16]"],
                      findings={"frame_attention_full_d160": "Invalid __global__ read of size 16 bytes"},
                      racecheck=False)
    readme = tmp_path / "README.md"
    _write_readme(readme)
    report.main(["--results", str(results_dir), "--readme", str(readme)])
    status = _status(readme.read_text())
    frame = _table_line(status, "frame_attention (Triton, fwd+bwd)")
    assert frame[1] == "failed" and frame[3] == "8/9 clean; frame_attention_full_d160: errors" and frame[4] == "not run"
    assert _table_line(status, "add_noise (Triton)")[1:3] == ["failed", "0 / 1"]
    assert _table_line(status, "correlated_noise (Triton)")[1] == "not run"  # passed, but no racecheck run
    assert _table_line(status, "temporal_attention (Triton, fwd+bwd)")[1] == "not run"


def test_no_kernel_is_correct_after_a_test_phase_stopped_at_its_cap(results_dir, tmp_path, base_environment):
    """Its tests that ran passed, but the ones the cap cut off may not have."""
    results_dir.mkdir()
    _write_validation(results_dir, tmp_path, base_environment, "2026-03-05", tests_phase="timed out")
    readme = tmp_path / "README.md"
    _write_readme(readme)
    report.main(["--results", str(results_dir), "--readme", str(readme)])
    status = _status(readme.read_text())
    assert "correct on GPU |" not in status
    assert _table_line(status, "frame_attention (Triton, fwd+bwd)")[1:3] == ["not run", "4 / 0"]


def test_check_reports_a_stale_status_section(results_dir, tmp_path, base_environment, capsys):
    results_dir.mkdir()
    readme = tmp_path / "README.md"
    _write_readme(readme)
    args = ["--results", str(results_dir), "--readme", str(readme)]
    assert report.main(args) == 0
    assert report.main(args + ["--check"]) == 0
    generated = readme.read_bytes()
    _write_validation(results_dir, tmp_path, base_environment, "2026-03-05")
    assert report.main(args + ["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert readme.read_bytes() == generated
    assert report.main(args) == 0 and report.main(args + ["--check"]) == 0
    assert "correct on GPU" in _status(readme.read_text())


def test_the_committed_readme_is_what_the_committed_results_give(capsys):
    """The repository's own README sections match benchmarks/results/ (a new result file without a
    table line, or a prediction not tagged as one, makes this fail)."""
    assert report.main(["--check"]) == 0, capsys.readouterr().out + capsys.readouterr().err
