"""Autotuned frame-attention forward configs: the choice logic, its persistent cache, and every candidate.

The tuning logic runs on CPU with a fake timer and a fake CUDA device (``fake_gpu``); the
candidates themselves run through Triton's interpreter against the float64 reference. The one
test that times real kernels with ``triton.testing.do_bench`` needs CUDA and skips without it.
"""
import json
import os

import pytest
import torch

from vidgen.kernels import _autotune
from vidgen.kernels import frame_attention as K
from vidgen.kernels import frame_attention_tuning as tuning

CUDA = torch.device("cuda", 0)  # constructing a device needs no GPU; nothing here launches on it
DEVICE_TAG = "FakeGPU-sm90-test"
SLOW, FAST, SLOWER = K.LaunchConfig(128, 64, 4, 3), K.LaunchConfig(64, 64, 4, 3), K.LaunchConfig(32, 32, 4, 2)
KEY = tuning.forward_autotune_key(48, "fp16", 90, (3, 2), 77, 77)
TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 3e-2}  # as in test_frame_attention.py


class FakeTimer:
    """Times a candidate by running it (the run returns the candidate) and looking it up."""

    def __init__(self, times):
        self.times = times
        self.calls = 0

    def __call__(self, run, device):
        assert device == CUDA
        self.calls += 1
        return self.times[run()]


def _never_timed(run, device):
    raise AssertionError("a candidate was timed")


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A CUDA device as far as the tuner can tell, a fresh cache folder and in-memory state, and
    a fake timer ranking FAST < SLOW < SLOWER. Returns (timer, path of the cache file)."""
    monkeypatch.setenv("VIDGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VIDGEN_AUTOTUNE", raising=False)
    monkeypatch.setattr(_autotune, "_choice_files", {})
    monkeypatch.setattr(_autotune, "device_tag", lambda device: DEVICE_TAG)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    timer = FakeTimer({SLOW: 2.0, FAST: 1.0, SLOWER: 3.0})
    monkeypatch.setattr(_autotune, "measure_ms", timer)
    return timer, tmp_path / "cache" / "autotune" / f"{DEVICE_TAG}.json"


def _pick(candidates=(SLOW, FAST, SLOWER), key=KEY, device=CUDA):
    return _autotune.pick("frame_attention_forward", key, candidates, lambda cfg: cfg, device)


def _fresh_process(monkeypatch):
    monkeypatch.setattr(_autotune, "_choice_files", {})


@pytest.mark.parametrize("order", [(SLOW, FAST, SLOWER), (FAST, SLOWER, SLOW), (SLOWER, SLOW, FAST)])
def test_fastest_candidate_is_chosen_persisted_and_reused(order, fake_gpu, monkeypatch):
    timer, path = fake_gpu
    assert _pick(order) == FAST
    assert timer.calls == 3
    entries = json.loads(path.read_text())
    assert os.listdir(path.parent) == [path.name]  # the temporary file was renamed, none left behind
    [entry] = entries.values()
    assert entry["choice"] == repr(FAST)
    assert entry["ms"] == {repr(c): timer.times[c] for c in order}

    assert _pick(order) == FAST and timer.calls == 3  # same process: no timing
    _fresh_process(monkeypatch)
    monkeypatch.setattr(_autotune, "measure_ms", _never_timed)
    assert _pick(order) == FAST  # a new process reads the choice from the file
    path.unlink()
    assert _pick(order) == FAST  # ... once: afterwards the choice lives in memory


def test_keys_bucket_sizes_and_separate_table_shapes():
    def key(width=48, dtype="fp16", table_shape=(3, 2), N=77, M=77):
        return tuning.forward_autotune_key(width, dtype, 90, table_shape, N, M)

    assert key() == KEY
    assert key(N=100, M=128) == KEY == key(N=65, M=65)          # one bucket: (64, 128]
    assert key(table_shape=torch.Size([3, 2])) == KEY           # a table's .shape works as is
    for other in (key(N=64), key(N=129), key(M=64), key(M=4096), key(table_shape=(3, 1)),
                  key(table_shape=(4, 2)), key(width=160), key(dtype="bf16")):
        assert other != KEY
    # the hinted code is other code
    assert key() != tuning.forward_autotune_key(48, "fp16", 90, (3, 2), 77, 77, align=8)
    # stored as JSON: N and M rounded up, then ALIGN
    assert json.loads(json.dumps(KEY)) == [48, "fp16", 90, [3, 2], 128, 128, 1]


def test_new_size_times_once_per_bucket_and_table_shape(fake_gpu):
    timer, _ = fake_gpu
    rounds = []
    for table_shape, N in [((3, 2), 77), ((3, 2), 100), ((3, 2), 128), ((3, 2), 200), ((3, 1), 77), ((4, 2), 77),
                           ((3, 2), 90)]:
        assert _pick(key=tuning.forward_autotune_key(48, "fp16", 90, table_shape, N, 77)) == FAST
        rounds.append(timer.calls // 3)
    assert rounds == [1, 1, 1, 2, 3, 4, 4]


def test_launcher_tunes_on_its_key_and_candidates(monkeypatch, device):
    """The forward asks the tuner with its own key and candidates, and launches what it returns."""
    asked = []

    def recording_pick(kernel_name, key, candidates, run_candidate, device_):
        asked.append((kernel_name, key, candidates, device_))
        return candidates[0]

    monkeypatch.setattr(_autotune, "pick", recording_pick)
    B, F, N, M, H, D = 1, 3, 9, 11, 1, 40
    q, k, v = (torch.randn(B, F, n, H, D).to(device, torch.float16) for n in (N, M, M))
    table, counts = (t.to(device) for t in K.prepare_key_table(torch.tensor(K.sparse_causal_key_frames(F))))
    K.frame_attention_forward_triton(q, k, v, table, counts, D ** -0.5)
    arch = K.device_arch(q.device)
    # D = 40 fp16, contiguous: rows start on 16-byte boundaries, so the launch is hinted (ALIGN = 8).
    assert asked == [("frame_attention_forward", tuning.forward_autotune_key(48, "fp16", arch, (F, 2), N, M, align=8),
                      tuning.tile_candidates("forward", 48, "fp16", arch), q.device)]


def test_nothing_is_timed_under_cuda_graph_capture(fake_gpu, monkeypatch):
    timer, path = fake_gpu
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _pick() == SLOW  # the default
    assert timer.calls == 0 and not path.exists()

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert _pick() == FAST and timer.calls == 3
    _fresh_process(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _pick() == FAST and timer.calls == 3  # a cached choice is used during capture


def test_nothing_is_timed_with_autotune_disabled(fake_gpu, monkeypatch):
    timer, path = fake_gpu
    assert _pick() == FAST and timer.calls == 3
    monkeypatch.setenv("VIDGEN_AUTOTUNE", "0")
    assert _pick() == SLOW  # the default, even with a cached choice: a reproducible baseline
    assert _pick(key=tuning.forward_autotune_key(48, "fp16", 90, (3, 2), 4096, 77)) == SLOW
    assert timer.calls == 3 and len(json.loads(path.read_text())) == 1


def test_nothing_is_timed_for_a_single_candidate_or_off_cuda(fake_gpu):
    timer, path = fake_gpu
    assert _pick(candidates=(SLOWER,)) == SLOWER
    assert _pick(device=torch.device("cpu")) == SLOW
    assert timer.calls == 0 and not path.exists()


def test_forward_off_cuda_runs_the_default_untimed(fake_gpu, monkeypatch, device):
    if device.type == "cuda":
        pytest.skip("checks the interpreter (CPU) path")
    monkeypatch.setattr(_autotune, "measure_ms", _never_timed)
    launched = _record_launches(monkeypatch)
    q, k, v = (torch.randn(1, 2, 5, 1, 16, dtype=torch.float16) for _ in range(3))
    table, counts = K.prepare_key_table(torch.tensor(K.first_frame_key_frames(2)))
    K.frame_attention_forward_triton(q, k, v, table, counts, 0.25)
    assert launched == [tuning.tile_candidates("forward", 16, "fp16", 90)[0]]


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe\x00"], ids=["syntax", "list", "binary"])
def test_corrupt_cache_file_is_ignored_with_a_warning(content, fake_gpu):
    timer, path = fake_gpu
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.warns(UserWarning, match="ignoring autotune cache"):
        assert _pick() == FAST
    assert timer.calls == 3
    [entry] = json.loads(path.read_text()).values()  # rewritten whole
    assert entry["choice"] == repr(FAST)


def test_choice_among_other_candidates_is_timed_again(fake_gpu):
    """A cached choice that is not a current candidate (an older vidgen's table) is re-tuned."""
    timer, path = fake_gpu
    path.parent.mkdir(parents=True)
    entry_key = f"frame_attention_forward:{json.dumps(KEY)}"
    path.write_text(json.dumps({entry_key: {"choice": "LaunchConfig(block_m=16, block_n=16, num_warps=1, "
                                                      "num_stages=1)", "ms": {}}}))
    assert _pick() == FAST and timer.calls == 3
    assert json.loads(path.read_text())[entry_key]["choice"] == repr(FAST)


def test_write_merges_with_the_file_on_disk(fake_gpu):
    """Another process's choices, written after this one read the file, survive its next write."""
    timer, path = fake_gpu
    assert _pick() == FAST
    others = json.loads(path.read_text())
    others["another_kernel:[1]"] = {"choice": "X", "ms": {"X": 1.0}}
    path.write_text(json.dumps(others))
    other_key = tuning.forward_autotune_key(48, "fp16", 90, (8, 2), 77, 77)
    assert _pick(key=other_key) == FAST
    assert len(json.loads(path.read_text())) == 3


def test_unwritable_cache_warns_and_keeps_the_choice(fake_gpu, monkeypatch, tmp_path):
    timer, _ = fake_gpu
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")
    monkeypatch.setenv("VIDGEN_CACHE", str(not_a_folder))
    with pytest.warns(UserWarning, match="not written"):
        assert _pick() == FAST
    assert _pick() == FAST and timer.calls == 3


def test_pick_refuses_no_or_repeated_candidates(fake_gpu):
    with pytest.raises(ValueError, match="at least one candidate"):
        _pick(candidates=())
    with pytest.raises(ValueError, match="distinct"):
        _pick(candidates=(FAST, SLOW, FAST))


def test_candidate_tables():
    for d0, d1, _ in {K.head_blocks(d) for d in range(K.MIN_HEAD_DIM, K.MAX_HEAD_DIM + 1)}:
        for arch in (80, 90):
            fp32 = tuning.tile_candidates("forward", d0 + d1, "fp32", arch)
            assert fp32 == (fp32[0],)
            for dtype in ("fp16", "bf16"):
                candidates = tuning.tile_candidates("forward", d0 + d1, dtype, arch)
                assert 1 <= len(candidates) == len(set(candidates)) <= 2
            for kernel_pass in tuning.PASSES:
                assert tuning.tile_candidates(kernel_pass, d0 + d1, "fp16", arch) == \
                    tuning.tile_candidates(kernel_pass, d0 + d1, "bf16", arch)
    assert K.LaunchConfig.parse("128x32 w16 s2") == K.LaunchConfig(128, 32, 16, 2)


def test_every_candidate_is_compiled_ahead_of_time_for_the_archs_that_launch_it(monkeypatch):
    declared = {(s.kernel, s.signature["Q"], s.constexprs["D0"], s.constexprs["D1"], s.constexprs["BLOCK_M"],
                 s.constexprs["BLOCK_N"], s.num_warps, s.num_stages, arch)
                for s in K.aot_specs() if "D0" in s.constexprs for arch in s.archs}  # the FP8 kernel has its own table
    blockings = {K.head_blocks(d) for d in range(K.MIN_HEAD_DIM, K.MAX_HEAD_DIM + 1)}
    kernels = {"forward": "_frame_attention_forward_kernel", "backward_dq": "_frame_attention_backward_dq_kernel",
               "backward_dkdv": "_frame_attention_backward_dkdv_kernel"}
    expected = set()
    for d0, d1, _ in blockings:
        for dtype in ("fp16", "bf16", "fp32"):
            for arch in (80, 90):
                for kernel_pass, kernel in kernels.items():
                    for cfg in tuning.tile_candidates(kernel_pass, d0 + d1, dtype, arch):
                        expected.add((kernel, f"*{dtype}", d0, d1, *vars(cfg).values(), arch))
    assert declared == expected
    # the backward launches each kernel's first candidate (off CUDA: no measured table)
    dq = _record_launches(monkeypatch, "_frame_attention_backward_dq_kernel", run=False)
    dkdv = _record_launches(monkeypatch, "_frame_attention_backward_dkdv_kernel", run=False)
    x = torch.zeros(1, 2, 5, 1, 160, dtype=torch.float16)
    tables = K.prepare_key_table(torch.tensor(K.first_frame_key_frames(2)))
    K.frame_attention_backward_triton(x, x, x, x, x, x.new_zeros((1, 2, 1, 5), dtype=torch.float32), *tables,
                                      *K.reverse_key_table(*tables), 0.1)
    assert (dq, dkdv) == ([tuning.tile_candidates("backward_dq", 160, "fp16", 90)[0]],
                          [tuning.tile_candidates("backward_dkdv", 160, "fp16", 90)[0]])


def test_a_sweep_may_only_launch_declared_configs(device):
    q = torch.randn(1, 2, 5, 1, 16, device=device)
    table, counts = K.prepare_key_table(torch.tensor(K.first_frame_key_frames(2), device=device))
    with pytest.raises(ValueError, match="config: .* is not a declared forward candidate"):
        K.frame_attention_forward_triton(q, q, q, table, counts, 0.25, config=K.LaunchConfig(16, 16, 1, 1))


def test_sizes_never_specialise_the_forward_kernel():
    """Choices are configs of compiled kernels: a new F, N, M or table width must not compile one."""
    kernel = K._frame_attention_forward_kernel
    if hasattr(kernel, "params"):  # compiled (GPU run)
        unspecialised = {p.name for p in kernel.params if p.do_not_specialize}
    else:  # the interpreter keeps the decorator's arguments
        unspecialised = set(kernel.kwargs["do_not_specialize"])
    assert {"num_frames", "num_heads", "N", "M", "table_width", "num_m_blocks"} <= unspecialised


def _record_launches(monkeypatch, kernel_name="_frame_attention_forward_kernel", run=True):
    """Record the LaunchConfig of every launch of ``kernel_name``, then launch it (``run``)."""
    launched, kernel = [], getattr(K, kernel_name)

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, BLOCK_M, BLOCK_N, num_warps, num_stages, **kwargs):
                launched.append(K.LaunchConfig(BLOCK_M, BLOCK_N, num_warps, num_stages))
                if run:
                    kernel[grid](*args, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
                                 num_stages=num_stages, **kwargs)
            return launch

    monkeypatch.setattr(K, kernel_name, Recorder())
    return launched


@pytest.mark.parametrize("D,dtype", [(40, torch.float16), (160, torch.bfloat16)])
@pytest.mark.parametrize("choice", [0, 1], ids=["default", "alternative"])
def test_each_candidate_matches_the_reference(D, dtype, choice, monkeypatch, device):
    """Force each candidate (after running all of them, as timing does) on small odd shapes."""
    def pick_after_running_all(kernel_name, key, candidates, run_candidate, device_):
        for cfg in candidates:
            run_candidate(cfg)
        return candidates[choice]

    monkeypatch.setattr(_autotune, "pick", pick_after_running_all)
    launched = _record_launches(monkeypatch)
    B, F, N, H = 1, 3, 77, 2
    gen = torch.Generator().manual_seed(D)
    q, k, v = (torch.randn(B, F, N, H, D, generator=gen).to(device, dtype) for _ in range(3))
    rows = K.sparse_causal_key_frames(F)
    table, counts = (t.to(device) for t in K.prepare_key_table(torch.tensor(rows)))
    out, lse = K.frame_attention_forward_triton(q, k, v, table, counts, D ** -0.5)

    candidates = tuning.tile_candidates("forward", sum(K.head_blocks(D)[:2]), K.DTYPE_NAMES[dtype],
                                        K.device_arch(q.device))
    assert launched == [*candidates, candidates[choice]]
    ref_out, ref_lse = K.frame_attention_reference(q.double(), k.double(), v.double(), rows, D ** -0.5)
    for name, actual, expected, tol in (("out", out, ref_out, TOLERANCE[dtype]), ("lse", lse, ref_lse, 1e-4)):
        assert torch.isfinite(actual).all(), f"{name}: non-finite values (an unwritten element?)"
        err = (actual.double().cpu() - expected.cpu()).abs().max().item()
        assert err <= tol * (expected.abs().max().item() + 1e-6), f"{name}: max error {err:.3g}"


def test_real_timing_on_cuda_persists_a_choice(device, monkeypatch, tmp_path):
    if device.type != "cuda":
        pytest.skip("needs CUDA: times the real candidates with triton.testing.do_bench")
    monkeypatch.setenv("VIDGEN_CACHE", str(tmp_path))
    monkeypatch.delenv("VIDGEN_AUTOTUNE", raising=False)
    monkeypatch.setattr(_autotune, "_choice_files", {})
    B, F, N, H, D = 1, 3, 77, 2, 40
    q, k, v = (torch.randn(B, F, N, H, D, device=device, dtype=torch.float16) for _ in range(3))
    rows = K.sparse_causal_key_frames(F)
    table, counts = (t.to(device) for t in K.prepare_key_table(torch.tensor(rows)))
    out, _ = K.frame_attention_forward_triton(q, k, v, table, counts, D ** -0.5)
    [cache_file] = (tmp_path / "autotune").iterdir()
    assert _autotune.device_tag(device) in cache_file.name
    [entry] = json.loads(cache_file.read_text()).values()
    candidates = tuning.tile_candidates("forward", 48, "fp16", K.device_arch(device))
    assert entry["choice"] in {repr(c) for c in candidates} and len(entry["ms"]) == len(candidates)
    monkeypatch.setattr(_autotune, "measure_ms", _never_timed)
    again, _ = K.frame_attention_forward_triton(q, k, v, table, counts, D ** -0.5)
    ref_out, _ = K.frame_attention_reference(q.double(), k.double(), v.double(), rows, D ** -0.5)
    for actual in (out, again):
        err = (actual.double() - ref_out).abs().max().item()
        assert err <= TOLERANCE[torch.float16] * ref_out.abs().max().item()


def test_out_of_memory_while_timing_runs_the_default(fake_gpu, monkeypatch):
    """do_bench allocates a 256 MB buffer to flush L2: on a full GPU the call still runs, untuned."""
    timer, path = fake_gpu

    def out_of_memory(run, device):
        timer.calls += 1
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(_autotune, "measure_ms", out_of_memory)
    with pytest.warns(UserWarning, match="out of memory"):
        assert _pick() == SLOW
    assert _pick() == SLOW and timer.calls == 1  # not retried in this process
    monkeypatch.setattr(_autotune, "measure_ms", timer)
    assert _pick(key=tuning.forward_autotune_key(48, "fp16", 90, (8, 2), 77, 77)) == FAST
    assert len(json.loads(path.read_text())) == 1  # the untuned default is never written


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("D", [40, 80, 160, 256])
def test_every_tile_config_of_both_arch_tables_matches_the_reference(D, arch, monkeypatch, device):
    """Each arch's tiles (forward candidates, dq and dk/dv configs), forced on small odd shapes: the
    interpreter runs any of them, so the sm_80 table is checked here too, not only on an A100."""
    if device.type == "cuda" and K.device_arch(device) != arch:
        pytest.skip(f"the sm_{arch} table launches on sm_{arch} only")
    monkeypatch.setattr(K, "device_arch", lambda device_: arch)
    dtype, width = torch.float16, sum(K.head_blocks(D)[:2])
    B, F, N, H = 1, 3, 37, 1
    gen = torch.Generator().manual_seed(D + arch)
    q, k, v, dout = (torch.randn(B, F, N, H, D, generator=gen).to(device, dtype) for _ in range(4))
    rows = K.sparse_causal_key_frames(F)
    table, counts = (t.to(device) for t in K.prepare_key_table(torch.tensor(rows)))
    readers, reader_counts = K.reverse_key_table(table, counts)
    ref_out, _ = K.frame_attention_reference(q.double(), k.double(), v.double(), rows, D ** -0.5)
    ref_grads = K.frame_attention_backward_reference(dout.double(), q.double(), k.double(), v.double(), rows,
                                                     D ** -0.5)
    dq_cfg, = tuning.tile_candidates("backward_dq", width, "fp16", arch)
    dkdv_cfg, = tuning.tile_candidates("backward_dkdv", width, "fp16", arch)
    for cfg in tuning.tile_candidates("forward", width, "fp16", arch):
        out, lse = K.frame_attention_forward_triton(q, k, v, table, counts, D ** -0.5, config=cfg)
        grads = K.frame_attention_backward_triton(dout, q, k, v, out, lse, table, counts, readers, reader_counts,
                                                  D ** -0.5, dq_config=dq_cfg, dkdv_config=dkdv_cfg)
        for name, actual, expected in (("out", out, ref_out), *zip(("dq", "dk", "dv"), grads, ref_grads)):
            assert torch.isfinite(actual).all(), f"{cfg} {name}: non-finite values (an unwritten element?)"
            err = (actual.double().cpu() - expected.cpu()).abs().max().item()
            assert err <= TOLERANCE[dtype] * (expected.abs().max().item() + 1e-6), f"{cfg} {name}: max error {err:.3g}"


def test_launchers_take_the_sweeps_measured_choice_on_cuda_only(monkeypatch, tmp_path):
    from tools.sweep_frame_attention import write_table

    fwd_default, fwd_other = tuning.tile_candidates("forward", 48, "fp16", 90)
    dq_default, = tuning.tile_candidates("backward_dq", 48, "fp16", 90)
    table = tmp_path / "tuned.json"
    write_table(str(table), {
        tuning.entry_path("forward", 90, 48, "fp16", 4096): {"config": str(fwd_other)},
        tuning.entry_path("backward_dq", 90, 48, "fp16", None): {"config": str(dq_default)},
    })
    monkeypatch.setattr(tuning, "TABLE_PATH", str(table))
    tuning._table.cache_clear()  # read once per process: read this table, and forget it afterwards
    tuning._lookup.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("VIDGEN_AUTOTUNE", raising=False)
    cuda = torch.device("cuda")
    try:
        assert K._measured_config("forward", cuda, 48, "fp16", 3000) == fwd_other   # N bucket 4096
        assert K._measured_config("forward", cuda, 48, "fp16", 100) is None        # not measured: autotune
        assert K._measured_config("backward_dq", cuda, 48, "fp16", 100, any_size=True) == dq_default
        assert K._measured_config("forward", torch.device("cpu"), 48, "fp16", 3000) is None
        monkeypatch.setenv("VIDGEN_AUTOTUNE", "0")
        assert K._measured_config("forward", cuda, 48, "fp16", 3000) is None        # the default baseline
    finally:
        tuning._table.cache_clear()
        tuning._lookup.cache_clear()
