"""tools/gpu_check's plumbing on a CPU: caps and the deadline, the readers of what its
phases leave (JUnit XML, compute-sanitizer output), the rerun after a stopped sanitizer process,
and a dry run of a few phases end to end. The GPU run itself is ``make gpu-check`` on a GPU machine."""
import dataclasses
import json
import sys
import time

import pytest

from tools import sanitize_kernels
from tools.gpu_check import cli, deadline, evidence, phases

STOPS_AT = "frame_attention_full_d80"
FAKE_DRIVER = f"""
import sys
names = sys.argv[sys.argv.index("--kernel") + 1:]
for name in names:
    print("{sanitize_kernels.BEGIN}", name, flush=True)
    if name == "{STOPS_AT}":
        print("========= Invalid __global__ write of size 4 bytes", flush=True)
        sys.exit({sanitize_kernels.EXIT_CUDA_ERROR})  # the context is gone: the driver stops here
    print("{sanitize_kernels.END}", name, "ok", flush=True)
"""


def test_junit_counts_per_file_and_names_failures(tmp_path):
    xml = tmp_path / "tests.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite name="pytest">
      <testcase classname="tests.test_noise" name="test_a[triton]"/>
      <testcase classname="tests.test_noise" name="test_b"><failure message="x"/></testcase>
      <testcase classname="tests.test_noise" name="test_c"><skipped message="no GPU"/></testcase>
      <testcase classname="tests.test_video_unet.TestLoading" name="test_d"><error message="y"/></testcase>
      <testcase classname="" name="tests.test_broken"><error message="collection failed"/></testcase>
    </testsuite></testsuites>""")
    junit = evidence.read_junit(str(xml))
    assert junit["files"] == {
        "tests/test_broken.py": {"passed": 0, "failed": 0, "errors": 1, "skipped": 0},
        "tests/test_noise.py": {"passed": 1, "failed": 1, "errors": 0, "skipped": 1},
        "tests/test_video_unet.py": {"passed": 0, "failed": 0, "errors": 1, "skipped": 0},
    }
    assert junit["totals"] == {"passed": 1, "failed": 1, "errors": 2, "skipped": 1}
    assert junit["failed"] == ["tests/test_noise.py::test_b", "tests/test_video_unet.py::test_d",
                               "tests/test_broken.py::tests.test_broken"]
    assert evidence.read_junit(str(tmp_path / "missing.xml")) is None


def test_sanitizer_findings_belong_to_the_entry_whose_markers_surround_them():
    begin, end, skip = sanitize_kernels.BEGIN, sanitize_kernels.END, sanitize_kernels.SKIP
    log = "\n".join([
        "========= COMPUTE-SANITIZER",
        f"{begin} correlated_noise", f"{end} correlated_noise ok",
        f"{skip} guided_step_cuda: the CUDA library did not load",
        f"{begin} add_noise", "========= Invalid __global__ read of size 4 bytes", "=========     at 0x10 in k",
        "========= Invalid __global__ read of size 4 bytes", f"{end} add_noise ok",
        f"{begin} guided_step_triton", f"{end} guided_step_triton FAILED: output 0: 3 of 8 non-finite",
        f"{begin} temporal_attention_d40",  # the process died here
        "========= ERROR SUMMARY: 2 errors",
    ])
    found = evidence.read_sanitizer_log(log, sanitize_kernels.NAMES)
    assert found["correlated_noise"]["status"] == "clean"
    assert found["add_noise"] == {"status": "errors", "findings": 2,
                                  "detail": "Invalid __global__ read of size 4 bytes"}
    assert found["guided_step_cuda"] == {"status": "not run", "findings": 0, "detail": "the CUDA library did not load"}
    assert found["guided_step_triton"]["status"] == "failed" and "non-finite" in found["guided_step_triton"]["detail"]
    assert found["temporal_attention_d40"]["status"] == "crashed"
    assert found["temporal_attention_d80"]["status"] == "not run"
    assert set(found) == set(sanitize_kernels.NAMES)


def test_a_stopped_sanitizer_process_is_followed_by_one_for_the_entries_it_did_not_begin(tmp_path, monkeypatch):
    fake = tmp_path / "fake_driver.py"
    fake.write_text(FAKE_DRIVER)
    monkeypatch.setattr(phases, "python_argv", lambda *args: [sys.executable, str(fake)])
    runner = deadline.Runner(300, str(tmp_path / "work"), dry_run=True)
    results = phases.run_sanitizer(runner, phases.SANITIZE)
    runner.close()
    for tool in ("sanitize-plain", *evidence.SANITIZER_TOOLS):
        statuses = {name: r["status"] for name, r in results[tool].items()}
        assert statuses.pop(STOPS_AT) == "errors"
        assert set(statuses.values()) == {"clean"}, statuses
        assert [p.rc for p in runner.phases if p.name == tool] == [sanitize_kernels.EXIT_CUDA_ERROR, 0]


def test_a_phase_ends_at_its_cap_and_none_starts_without_time(tmp_path):
    runner = deadline.Runner(deadline.REPORT_RESERVE_S + deadline.KILL_GRACE_S + 2, str(tmp_path), dry_run=True)
    began = time.monotonic()
    phase = runner.run("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], want_s=60, min_s=1)
    assert phase.status == "timed out" and 1 <= phase.cap_s <= 2  # the 2 s left, less what has passed
    assert time.monotonic() - began < 2 + deadline.KILL_GRACE_S + 5
    assert runner.run("late", [sys.executable, "-c", "pass"], want_s=60).status.startswith("skipped")
    runner.close()
    assert "-- sleeper: timed out" in (tmp_path / "run.log").read_text()


def test_dry_run_writes_a_report_and_at_most_eight_files(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    monkeypatch.setenv("VIDGEN_COMMIT", "feed123")
    # An optional phase whose script is missing is skipped, not failed (profile_step.py exists by now).
    monkeypatch.setattr(phases, "BENCHES", [
        dataclasses.replace(b, optional_file="benchmarks/no_such_script.py") if b.name == "profile-step" else b
        for b in phases.BENCHES])
    assert cli.main(["--dry-run", "--phases", "gpu-info,install,bench-frame,profile-step"]) == 0
    printed = capsys.readouterr().out
    assert "==== vidgen gpu-check (dry run)" in printed and "commit feed123" in printed
    assert "profile-step skipped" in printed  # an optional phase whose script does not exist
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())
    report = json.loads(next(out.glob("validation-*.json")).read_text())
    assert report["dry_run"] and report["environment"]["commit"] == "feed123"
    assert {k: v["status"] for k, v in report["kernels"].items()} == {k: evidence.NOT_RUN for k in evidence.KERNELS}
    assert [p["name"] for p in report["phases"]] == ["gpu-info", "install", "bench-frame", "profile-step"]
    assert (out / "summary.txt").read_text().strip().splitlines()[-1].startswith("total ")


def test_unknown_phase_is_refused():
    with pytest.raises(SystemExit, match="unknown phase 'tset'"):
        cli.main(["--dry-run", "--phases", "tset"])


def test_kernel_driver_marks_each_entry_it_runs(device, capsys):
    """tools/sanitize_kernels.py on tiny shapes (interpreter on a CPU, compiled on a GPU)."""
    names = ["add_noise", "guided_step_cuda", "frame_attention_full_d40", "temporal_attention_d160"]
    assert sanitize_kernels.main(["--device", str(device), "--tiny", "--kernel", *names]) == 0
    found = evidence.read_sanitizer_log(capsys.readouterr().out, sanitize_kernels.NAMES)
    for name in ("add_noise", "frame_attention_full_d40", "temporal_attention_d160"):
        assert found[name]["status"] == "clean", found[name]
    cuda = found["guided_step_cuda"]  # the CUDA library: runs on a GPU, is skipped with its reason on a CPU
    assert cuda["status"] == "clean" or (cuda["status"] == "not run" and cuda["detail"])
    assert {found[n]["status"] for n in sanitize_kernels.NAMES if n not in names} == {"not run"}
