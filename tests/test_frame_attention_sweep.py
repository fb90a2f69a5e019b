"""The frame-attention sweep (``tools/sweep_frame_attention.py``) and its tuned table.

The sweep runs end to end through Triton's interpreter on tiny shapes (``--tiny``) with a fake
timer that ranks candidates by name, so which config wins is known in advance; the checks of its
correctness gate use launchers wrapped to corrupt one candidate's output. The table's writer (the
sweep) and reader (``kernels/frame_attention_tuning.py``) are tested on files in a temporary folder.
"""
import json
import os
import sys
import textwrap
import warnings

import pytest
import torch

from benchmarks import harness
from tools import sweep_frame_attention as sweep
from tools import ROOT
from tools.gpu_check import phases, validation
from vidgen.kernels import frame_attention as K
from vidgen.kernels import frame_attention_tuning as tuning


@pytest.fixture(autouse=True)
def interpreter_only(device):
    if device.type != "cpu":
        pytest.skip("drives the sweep's plumbing through the interpreter; on a GPU run the sweep itself")


@pytest.fixture
def results_dir(monkeypatch, tmp_path):
    folder = tmp_path / "results"
    monkeypatch.setattr(harness, "RESULTS_DIR", str(folder))
    return folder


@pytest.fixture
def table_path(monkeypatch, tmp_path):
    """A table file of the test's own, read afresh by the loader."""
    path = tmp_path / "frame_attention_tuned.json"
    monkeypatch.setattr(tuning, "TABLE_PATH", str(path))
    tuning._table.cache_clear()
    tuning._lookup.cache_clear()
    yield path
    tuning._table.cache_clear()
    tuning._lookup.cache_clear()


class RecordingLaunchers:
    """Wraps the two launchers: records the config of each call (the fake timer reads it) and lets
    a test replace the outputs of one config."""

    def __init__(self, monkeypatch):
        self.last = None
        self.corrupt: dict[tuple[str, str], object] = {}  # (pass, config text) -> outputs -> outputs
        forward, backward = K.frame_attention_forward_triton, K.frame_attention_backward_triton

        def recorded_forward(*args, config=None, **kwargs):
            return self._finish("forward", config, forward(*args, config=config, **kwargs))

        def recorded_backward(*args, dq_config=None, dkdv_config=None, **kwargs):
            outputs = backward(*args, dq_config=dq_config, dkdv_config=dkdv_config, **kwargs)
            kernel_pass = "backward_dq" if dq_config is not None else "backward_dkdv"
            return self._finish(kernel_pass, dq_config or dkdv_config, outputs)

        monkeypatch.setattr(K, "frame_attention_forward_triton", recorded_forward)
        monkeypatch.setattr(K, "frame_attention_backward_triton", recorded_backward)

    def _finish(self, kernel_pass, config, outputs):
        assert config is not None, "the sweep must name the config of every launch"
        self.last = (kernel_pass, str(config))
        change = self.corrupt.get(self.last)
        return change(outputs) if change else outputs

    def timer(self, times: dict[tuple[str, str], float]):
        """A fake timer: runs the candidate once, and returns its time from ``times`` (default 5 ms)."""
        def time_it(fn):
            fn()
            return {"ms": times.get(self.last, 5.0), "ms_p20": 0.0, "ms_p80": 0.0}
        return time_it


def _run(args, timer, table_path):
    return sweep.main(["--tiny", "--device", "cpu", "--in-process", "--table", str(table_path), *args], timer=timer)


def _result_rows(results_dir):
    [result] = results_dir.glob("sweep_frame_attention-*.json")
    assert (results_dir / result.name.replace(".json", ".csv")).exists()
    return json.loads(result.read_text())["rows"]


def _entry(table_path, kernel_pass, width, dtype, bucket, arch="sm90"):
    return json.loads(table_path.read_text())["entries"][arch][str(width)][dtype][kernel_pass][str(bucket)]


# ----------------------------------------------------------------------------------------------
# The sweep's correctness gate
# ----------------------------------------------------------------------------------------------
def _forward_candidates(width=48, dtype="fp16"):
    return [str(c) for c in tuning.tile_candidates("forward", width, dtype, 90)]


def test_a_wrong_candidate_is_reported_and_never_chosen(monkeypatch, results_dir, table_path):
    launchers = RecordingLaunchers(monkeypatch)
    default, alternative = _forward_candidates()
    # The wrong candidate is the fastest: a sweep that skipped the check would choose it.
    launchers.corrupt[("forward", default)] = lambda outputs: (outputs[0] * 1.05, outputs[1])
    times = {("forward", default): 1.0, ("forward", alternative): 2.0}
    assert _run(["--dtypes", "fp16"], launchers.timer(times), table_path) == 0

    rows = {(r["head_dim"], r["pass"], r["config"]): r for r in _result_rows(results_dir)}
    bad, good = rows[(40, "forward", default)], rows[(40, "forward", alternative)]
    assert bad["status"] == "failed" and "out: relative L2 error" in bad["problem"] and not bad["chosen"]
    assert "ms" not in bad  # a rejected candidate is not even timed
    assert good["status"] == "passed" and good["chosen"] and good["ms"] == 2.0
    entry = _entry(table_path, "forward", 48, "fp16", 32)
    assert entry["config"] == alternative and entry["ms"] == 2.0
    assert set(entry["rejected"]) == {default} and set(entry["candidates_ms"]) == {alternative}
    assert _entry(table_path, "forward", 48, "fp16", "any")["config"] == alternative
    # the other level (D = 80) was not corrupted: its faster candidate is chosen as usual
    assert _entry(table_path, "forward", 80, "fp16", 16)["config"] == _forward_candidates(80)[0]


def test_unwritten_outputs_fail_through_the_sweeps_own_poisoning(monkeypatch, results_dir, table_path):
    """With the test suite's poisoning off, an output element the kernel never wrote must still
    come back non-finite: the sweep fills every torch.empty with NaN around its checks."""
    torch.use_deterministic_algorithms(False)  # conftest's fixture restores its own setting after
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", False)
    launchers = RecordingLaunchers(monkeypatch)
    [dkdv] = [str(c) for c in tuning.tile_candidates("backward_dkdv", 48, "fp16", 90)]

    lost = []

    def lose_half_of_dv(outputs):
        dq, dk, dv = outputs
        partly_written = torch.empty_like(dv)
        written = dv.shape[2] // 2
        partly_written[:, :, :written] = dv[:, :, :written]
        lost.append((partly_written[:, :, written:].numel(), dv.numel()))
        return dq, dk, partly_written

    launchers.corrupt[("backward_dkdv", dkdv)] = lose_half_of_dv
    assert _run(["--dtypes", "fp16"], launchers.timer({}), table_path) == 0
    [row] = [r for r in _result_rows(results_dir) if r["head_dim"] == 40 and r["pass"] == "backward_dkdv"]
    # every lost element, not just those whose stale bits happen to be NaN or inf
    unwritten, total = lost[0]
    assert row["status"] == "failed" and f"dv: {unwritten} of {total} elements non-finite" in row["problem"]
    entries = json.loads(table_path.read_text())["entries"]["sm90"]["48"]["fp16"]
    assert "backward_dkdv" not in entries  # its only candidate failed: no entry, the launcher default stays
    assert "backward_dq" in entries and "forward" in entries
    assert not torch.utils.deterministic.fill_uninitialized_memory  # restored after each check


def test_a_raising_candidate_is_a_failed_candidate(monkeypatch, results_dir, table_path):
    launchers = RecordingLaunchers(monkeypatch)
    default, alternative = _forward_candidates()

    def launch_failure(outputs):
        raise RuntimeError("triton: out of resources: shared memory")

    launchers.corrupt[("forward", default)] = launch_failure
    assert _run(["--dtypes", "bf16"], launchers.timer({}), table_path) == 0
    rows = {(r["head_dim"], r["pass"], r["config"]): r for r in _result_rows(results_dir)}
    assert rows[(40, "forward", default)]["problem"].startswith("RuntimeError: triton: out of resources")
    assert _entry(table_path, "forward", 48, "bf16", 32)["config"] == alternative


# ----------------------------------------------------------------------------------------------
# End to end on tiny shapes, and what a bounded run leaves
# ----------------------------------------------------------------------------------------------
def test_sweep_end_to_end_through_the_interpreter(monkeypatch, results_dir, table_path):
    launchers = RecordingLaunchers(monkeypatch)
    # Make the alternative forward config the faster one at D = 40, so the choice is not the default.
    default, alternative = _forward_candidates()
    times = {("forward", default): 3.0, ("forward", alternative): 1.5}
    table_path.write_text(json.dumps({"format": 1, "entries": {
        "sm80": {"48": {"fp16": {"forward": {"32": {"config": "64x64 w4 s3", "ms": 9.0}}}}},
        "sm90": {"48": {"fp16": {"forward": {"4096": {"config": "128x64 w8 s3", "ms": 6.0}}}}}}}))
    assert _run(["--dtypes", "fp16", "bf16"], launchers.timer(times), table_path) == 0

    rows = _result_rows(results_dir)
    cases = sweep.plan([], ["fp16", "bf16"], tiny=True)
    planned = {sweep.trial_id(case, *t) for case in cases for t in sweep.trials(case, 90)}
    assert {r["trial"] for r in rows} == planned and len(rows) == len(planned)
    assert all(r["status"] == "passed" and r["rel_l2_" + ("out" if r["pass"] == "forward" else "dk")] < 1e-2
               for r in rows)
    entries = json.loads(table_path.read_text())["entries"]
    assert entries["sm80"]["48"]["fp16"]["forward"]["32"]["config"] == "64x64 w4 s3"   # other arch kept
    assert entries["sm90"]["48"]["fp16"]["forward"]["4096"]["ms"] == 6.0              # other bucket kept
    for case in cases:
        width = sum(K.head_blocks(case.head_dim)[:2])
        bucket = tuning.bucket_name(case.tokens)
        for kernel_pass in tuning.PASSES:
            entry = entries["sm90"][str(width)][case.dtype][kernel_pass][bucket]
            assert K.LaunchConfig.parse(entry["config"]) in tuning.tile_candidates(kernel_pass, width, case.dtype, 90)
            assert {"ms", "gpu", "triton", "torch", "timed", "candidates_ms"} <= entry.keys()
            # the loader reads what the writer wrote
            assert tuning.tuned_config(kernel_pass, 90, width, case.dtype, case.tokens) == K.LaunchConfig.parse(
                entry["config"])
    assert entries["sm90"]["48"]["fp16"]["forward"]["32"]["config"] == alternative
    assert entries["sm90"]["80"]["bf16"]["forward"]["16"]["config"] == _forward_candidates(80, "bf16")[0]
    assert not [p for p in os.listdir(table_path.parent) if p.startswith(".frame_attention_tuned-")]


def test_budget_and_interrupt_stop_cleanly_and_write_what_was_measured(monkeypatch, results_dir, table_path):
    launchers = RecordingLaunchers(monkeypatch)
    assert _run(["--dtypes", "fp16", "--budget-s", "0"], launchers.timer({}), table_path) == 0
    assert {r["status"] for r in _result_rows(results_dir)} == {"not run"}
    assert not table_path.exists()  # nothing measured, nothing written
    for stale in results_dir.iterdir():
        stale.unlink()

    timed = []

    def interrupted_at_the_third_timing(fn):
        if len(timed) == 2:
            raise KeyboardInterrupt
        fn()
        timed.append(launchers.last)
        return {"ms": 1.0}

    assert _run(["--dtypes", "fp16"], interrupted_at_the_third_timing, table_path) == 130
    rows = {(r["head_dim"], r["pass"], r["config"]): r for r in _result_rows(results_dir)}
    [dq] = [str(c) for c in tuning.tile_candidates("backward_dq", 48, "fp16", 90)]
    [dkdv] = [str(c) for c in tuning.tile_candidates("backward_dkdv", 48, "fp16", 90)]
    assert rows[(40, "backward_dq", dq)]["status"] == "not run"  # interrupted while timed: not a failure
    assert rows[(40, "backward_dq", dq)]["problem"] == "interrupted"
    assert rows[(40, "backward_dkdv", dkdv)]["problem"] == "not reached before the sweep stopped"
    assert sum(r["status"] == "passed" for r in rows.values()) == 2
    assert sum(r["status"] == "not run" for r in rows.values()) == len(rows) - 2
    forward = _entry(table_path, "forward", 48, "fp16", 32)  # both forward candidates ran: an entry
    assert forward["ms"] == 1.0
    assert set(json.loads(table_path.read_text())["entries"]["sm90"]["48"]["fp16"]) == {"forward"}


def test_sweep_through_its_worker_process(results_dir, table_path):
    """The default path: trials in a worker process (wall-clock timing through the interpreter),
    results and table written by the parent."""
    assert sweep.main(["--tiny", "--device", "cpu", "--dtypes", "fp16", "--table", str(table_path),
                       "--seed", "7"]) == 0
    rows = _result_rows(results_dir)
    assert len(rows) == 8 and all(r["status"] == "passed" and r["seed"] in (7, 8) and r["ms"] > 0 for r in rows)
    entries = json.loads(table_path.read_text())["entries"]["sm90"]
    assert set(entries) == {"48", "80"} and set(entries["48"]["fp16"]) == set(tuning.PASSES)


def _fake_worker(tmp_path, body: str) -> list[str]:
    """A stand-in worker: ``body`` runs with ``rows`` (the rows file), ``attempt`` (1, 2, ...) and
    ``row(trial, status)`` (appends one row) defined."""
    counter = tmp_path / "attempts"
    script = textwrap.dedent("""
        import json, os, sys
        rows, counter = sys.argv[1], sys.argv[2]
        attempt = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
        open(counter, "w").write(str(attempt))
        def row(trial, status):
            with open(rows, "a") as f:
                f.write(json.dumps({"trial": trial, "status": status, "ms": 1.0}) + "\\n")
    """) + textwrap.dedent(body)
    return [sys.executable, "-c", script, str(tmp_path / "rows.jsonl"), str(counter)]


def test_a_dead_worker_fails_its_candidate_and_a_fresh_one_runs_the_rest(tmp_path):
    import time

    command = _fake_worker(tmp_path, """
        if attempt == 1:
            row("a", "passed"); row("b", "running"); sys.exit(3)   # a fault during "b"
        row("c", "running"); row("c", "passed")
    """)
    rows_path = str(tmp_path / "rows.jsonl")
    sweep.run_workers(command, rows_path, time.time() + 60)
    rows = sweep.read_rows(rows_path)
    assert {trial: row["status"] for trial, row in rows.items()} == {"a": "passed", "b": "failed", "c": "passed"}
    assert rows["b"]["problem"] == "CUDA context lost during this candidate"
    assert (tmp_path / "attempts").read_text() == "2"


def test_a_worker_that_makes_no_progress_is_not_restarted(tmp_path):
    import time

    command = _fake_worker(tmp_path, "sys.exit(1)")
    sweep.run_workers(command, str(tmp_path / "rows.jsonl"), time.time() + 60)
    assert (tmp_path / "attempts").read_text() == "1"


def test_a_worker_past_the_budget_is_stopped_and_its_candidate_not_run(tmp_path):
    import time

    command = _fake_worker(tmp_path, """
        import time
        row("a", "passed"); row("b", "running"); time.sleep(60)
    """)
    rows_path = str(tmp_path / "rows.jsonl")
    began = time.monotonic()
    sweep.run_workers(command, rows_path, time.time() + 3)
    assert time.monotonic() - began < 15
    rows = sweep.read_rows(rows_path)
    assert rows["a"]["status"] == "passed"
    assert rows["b"]["status"] == "not run" and rows["b"]["problem"] == "stopped at the time budget"


# ----------------------------------------------------------------------------------------------
# The plan and its place in gpu_check
# ----------------------------------------------------------------------------------------------
def test_plan_covers_every_unet_level_and_keys_never_collide():
    cases = sweep.plan(["sd15", "sdxl"], ["bf16", "fp16"])
    levels = {(c.suite, c.tokens, c.head_dim, c.heads) for c in cases}
    assert levels == {("sd15", 4096, 40, 8), ("sd15", 1024, 80, 8), ("sd15", 256, 160, 8), ("sd15", 64, 160, 8),
                      ("sdxl", 4096, 64, 10), ("sdxl", 1024, 64, 20)}
    assert len(cases) == 2 * len(levels) and all(c.batch == 2 and c.frames == 16 for c in cases)
    assert [c.head_dim for c in cases][-4:] == [160] * 4  # the D = 160 launches that faulted run last
    keys = [tuning.entry_path(p, 90, sum(K.head_blocks(c.head_dim)[:2]), c.dtype, c.tokens)
            for c in cases for p in tuning.PASSES]
    assert len(keys) == len(set(keys))  # no case overwrites another's entry
    for case in cases:
        for kernel_pass in tuning.PASSES:
            width = sum(K.head_blocks(case.head_dim)[:2])
            assert [config for p, config in sweep.trials(case, 90) if p == kernel_pass] == [
                str(c) for c in tuning.tile_candidates(kernel_pass, width, case.dtype, 90)]


def test_gpu_check_runs_the_sweep_inside_its_cap():
    [bench] = [b for b in phases.BENCHES if b.name == "sweep-frame-attention"]
    assert bench.argv[0] == "tools.sweep_frame_attention"
    args = sweep.build_parser().parse_args(bench.argv[1:])
    # it must stop on its own before gpu_check's SIGINT, and have written its results by then
    assert args.quick and args.budget_s <= bench.cap_s - 5
    assert os.path.join(ROOT, "kernels", "frame_attention_tuned.json") in validation.TUNED_TABLES
    assert tuning.TABLE_PATH == os.path.join(os.path.dirname(K.__file__), "frame_attention_tuned.json")


# ----------------------------------------------------------------------------------------------
# The table: writer and loader
# ----------------------------------------------------------------------------------------------
def test_table_writer_merges_and_replaces_atomically(table_path, monkeypatch):
    ours = ("sm90", "48", "bf16", "forward", "4096")
    table_path.write_text(json.dumps({"format": 1, "entries": {
        "sm80": {"48": {"bf16": {"forward": {"4096": {"config": "64x64 w4 s3"}}}}},
        "sm90": {"48": {"bf16": {"forward": {"4096": {"config": "64x64 w4 s3"},
                                             "1024": {"config": "64x64 w4 s3"}}}}}}}))
    sweep.write_table(str(table_path), {ours: {"config": "128x64 w8 s3", "ms": 1.0}})
    entries = json.loads(table_path.read_text())["entries"]
    assert entries["sm90"]["48"]["bf16"]["forward"] == {"4096": {"config": "128x64 w8 s3", "ms": 1.0},
                                                        "1024": {"config": "64x64 w4 s3"}}
    assert entries["sm80"]["48"]["bf16"]["forward"]["4096"] == {"config": "64x64 w4 s3"}
    assert sorted(os.listdir(table_path.parent)) == [table_path.name]  # the temporary file was renamed

    before = table_path.read_text()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", disk_full)
    with pytest.raises(OSError, match="No space"):
        sweep.write_table(str(table_path), {ours: {"config": "64x64 w4 s3", "ms": 2.0}})
    assert table_path.read_text() == before  # the old table, whole
    assert sorted(os.listdir(table_path.parent)) == [table_path.name]


def test_merge_leaves_its_input_alone():
    existing = {"sm90": {"48": {"fp16": {"forward": {"64": {"config": "a"}}}}}}
    merged = sweep.merge_entries(existing, {("sm90", "48", "fp16", "forward", "128"): {"config": "b"}})
    assert existing == {"sm90": {"48": {"fp16": {"forward": {"64": {"config": "a"}}}}}}
    assert merged["sm90"]["48"]["fp16"]["forward"] == {"64": {"config": "a"}, "128": {"config": "b"}}


def _write(table_path, entry_or_config, *, bucket="4096", kernel_pass="forward", width="48", dtype="bf16"):
    entry = entry_or_config if isinstance(entry_or_config, dict) else {"config": entry_or_config}
    table_path.write_text(json.dumps({"format": 1, "entries": {
        "sm90": {width: {dtype: {kernel_pass: {bucket: entry}}}}}}))


def test_loader_reads_entries_once_and_buckets_sizes(table_path):
    assert tuning.tuned_config("forward", 90, 48, "bf16", 4096) is None  # no file: no table
    tuning._table.cache_clear()
    tuning._lookup.cache_clear()
    alternative = tuning.tile_candidates("forward", 48, "bf16", 90)[1]
    _write(table_path, str(alternative), bucket="4096")
    assert tuning.tuned_config("forward", 90, 48, "bf16", 4096) == alternative
    assert tuning.tuned_config("forward", "sm90", 48, "bf16", 3000) == alternative  # N rounded to its bucket
    assert tuning.tuned_config("forward", (9, 0), 48, "bf16", 4096) == alternative
    for missing in [("forward", 80, 48, "bf16", 4096), ("forward", 90, 48, "fp16", 4096),
                    ("forward", 90, 48, "bf16", 1024), ("forward", 90, 48, "bf16", None),
                    ("backward_dq", 90, 48, "bf16", 4096), ("forward", 90, 80, "bf16", 4096)]:
        assert tuning.tuned_config(*missing) is None, missing
    table_path.unlink()
    assert tuning.tuned_config("forward", 90, 48, "bf16", 4096) == alternative  # read once per process
    with pytest.raises(ValueError, match="kernel_pass"):
        tuning.tuned_config("backward", 90, 48, "bf16", 4096)


def test_loader_any_bucket(table_path):
    default = tuning.tile_candidates("backward_dq", 160, "fp16", 90)[0]
    _write(table_path, str(default), bucket="any", kernel_pass="backward_dq", width="160", dtype="fp16")
    assert tuning.tuned_config("backward_dq", 90, 160, "fp16") == default
    assert tuning.tuned_config("backward_dq", 90, 160, "fp16", 256) is None  # a bucket is looked up exactly


@pytest.mark.parametrize("config", ["16x16 w1 s1", "128x64 w8", 7, None, "not an object"],
                         ids=["undeclared", "short", "number", "null", "bare-string"])
def test_loader_ignores_entries_it_cannot_launch_with_one_warning(config, table_path):
    if config == "not an object":
        _write(table_path, {})
        table = json.loads(table_path.read_text())
        table["entries"]["sm90"]["48"]["bf16"]["forward"]["4096"] = "128x64 w8 s3"
        table_path.write_text(json.dumps(table))
    else:
        _write(table_path, config)
    with pytest.warns(UserWarning, match="ignoring sm90/48/bf16/forward/4096") as caught:
        assert tuning.tuned_config("forward", 90, 48, "bf16", 4096) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second lookup (every launch does one) stays silent
        assert tuning.tuned_config("forward", 90, 48, "bf16", 4096) is None
    if config == "16x16 w1 s1":
        assert "declared candidates" in str(caught[0].message)


def test_loader_checks_candidates_of_the_entrys_arch(table_path):
    """A config declared for sm_90 but not sm_80 (at D = 64 their tiles differ) is refused for sm80."""
    sm90_only = (set(tuning.tile_candidates("forward", 64, "fp16", 90))
                 - set(tuning.tile_candidates("forward", 64, "fp16", 80)))
    config = str(sorted(sm90_only, key=repr)[0])
    table_path.write_text(json.dumps({"format": 1, "entries": {
        arch: {"64": {"fp16": {"forward": {"1024": {"config": config}}}}} for arch in ("sm80", "sm90")}}))
    assert tuning.tuned_config("forward", 90, 64, "fp16", 1024) == K.LaunchConfig.parse(config)
    with pytest.warns(UserWarning, match="declared candidates"):
        assert tuning.tuned_config("forward", 80, 64, "fp16", 1024) is None


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"format": 99, "entries": {}}'],
                         ids=["syntax", "list", "future-format"])
def test_corrupt_table_is_ignored_with_a_warning(content, table_path):
    table_path.write_bytes(content)
    with pytest.warns(UserWarning, match="ignoring the tuned frame-attention table"):
        assert tuning.tuned_config("forward", 90, 48, "bf16", 4096) is None


def test_launch_config_notation_round_trips():
    for kernel_pass in tuning.PASSES:
        for config in tuning.tile_candidates(kernel_pass, 160, "bf16", 80):
            assert K.LaunchConfig.parse(str(config)) == config
