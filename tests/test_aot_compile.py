"""Every Triton kernel, at every config its launcher can pick, compiles for sm_80 and sm_90 without
a GPU, on the newest Triton installed and on the oldest vidgen supports, fits the target's shared
memory, (attention on sm_90) uses wgmma, and does not spill: no stack at all for the tensor-core
attention kernels, a named allowance for the others (``KernelSpec.max_stack``).

The compiles run in a subprocess because the test process runs Triton in interpreter mode; the
oldest toolchain is chosen by that subprocess's ``PYTHONPATH`` (``make install`` installs it).
"""
import json
import os
import subprocess
import sys

import pytest

import triton
import triton.language as tl

from vidgen.kernels._aot import (KERNEL_MODULES, OLDEST_TRITON, KernelSpec, all_specs, compile_problems,
                                 oldest_triton_path, runtime_attrs)


def _compile_env(toolchain: str) -> tuple[dict, list[str]]:
    """Environment and extra arguments of a compile subprocess on ``toolchain`` ("newest": the
    installed Triton, every spec; "oldest": :data:`OLDEST_TRITON` first on ``PYTHONPATH``, the
    fp16/bf16 specs)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if toolchain == "newest":
        return env, []
    path = oldest_triton_path()
    if not os.path.isdir(os.path.join(path, "triton")):
        pytest.fail(f"triton {OLDEST_TRITON} is not installed at {path}: run `make install` (or "
                    f"`pip install --no-deps --target {path} triton=={OLDEST_TRITON}`)")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
    return env, ["--expect-triton", OLDEST_TRITON, "--dtypes", "fp16", "bf16"]


# The oldest toolchain compiles the fp16/bf16 tensor-core kernels (attention, the matmuls with epilogues),
# whose register allocation changed between ptxas versions and which may not spill at all. fp32 and the
# elementwise noise and guidance kernels compile with the newest only: a cold CI run stays inside
# its half hour.
_TENSOR_CORE_MODULES = tuple(m for m in KERNEL_MODULES  # FP8 attention too
                             if "attention" in m or m.endswith((".geglu", ".linear_residual")))
_COMPILES = [(m, "newest") for m in KERNEL_MODULES] + [(m, "oldest") for m in _TENSOR_CORE_MODULES]


@pytest.mark.parametrize("module,toolchain", _COMPILES)
def test_every_config_compiles_for_sm80_and_sm90(module, toolchain, tmp_path):
    env, extra = _compile_env(toolchain)
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vidgen.kernels._aot", "--module", module, "--cc", "80", "90",
         "--jobs", "2", "--json", str(out), *extra],
        env=env, capture_output=True, text=True, timeout=1800)
    if proc.stdout.splitlines()[-1:] == ["0 compiled, 0 failed"]:
        pytest.skip(f"{module} is not written yet")
    assert out.exists(), proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert rows, f"{module} declares no launch configs"
    assert {r["cc"] for r in rows} == {cc for spec in all_specs((module,)) for cc in spec.archs or (80, 90)}
    if toolchain == "oldest":
        assert {r["triton"] for r in rows} == {OLDEST_TRITON}
    failures = [f"triton {r['triton']} sm_{r['cc']} {r['label']}: {r['error']}" for r in rows if not r["ok"]]
    assert not failures, "\n".join(failures)


# The code SD1.5's D = 40 frame attention runs: fp16, head stride 40 (not a multiple of 16, so
# Triton's own specialisation cannot tell the rows are aligned), the launcher's ALIGN = 8 hint.
_D40_PTX_PROBE = r'''
import json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from vidgen.kernels import frame_attention as K
from vidgen.kernels._aot import runtime_attrs

rows = {}
for spec in K.aot_specs():
    c = spec.constexprs
    if (c.get("D0"), c.get("D1"), c["ALIGN"]) != (32, 16, 8) or spec.signature["Q"] != "*fp16" or spec.kernel in rows:
        continue
    fn = getattr(K, spec.kernel)
    attrs = {i: a for i, a in runtime_attrs(fn, spec.signature).items()
             if not re.fullmatch(r"stride_\wh|head_dim", fn.arg_names[i[0]])}
    ptx = triton.compile(ASTSource(fn=fn, signature=spec.signature, constexprs=dict(c), attrs=attrs),
                         target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": spec.num_warps, "num_stages": spec.num_stages}).asm["ptx"]
    rows[spec.kernel] = {"scalar_loads": len(re.findall(r"ld\.global(?:\.\w+)*\.b16 ", ptx)),
                         "cp_async": len(re.findall(r"cp\.async\.c[ag]", ptx))}
print(json.dumps(rows))
'''


def test_sd15_head_dim_40_frame_attention_loads_whole_vectors():
    """Every global load of Q/K/V/dO at D = 40 is a 16-byte vector and K/V are staged with cp.async
    (without the hint: 96-168 two-byte loads per thread per step and no cp.async on sm_90)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _D40_PTX_PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.splitlines()[-1])
    assert set(rows) == {"_frame_attention_forward_kernel", "_frame_attention_backward_dq_kernel",
                         "_frame_attention_backward_dkdv_kernel"}
    for kernel, row in rows.items():
        assert row["scalar_loads"] == 0 and row["cp_async"] > 0, f"{kernel}: {row}"


def _probe_kernel(X, Y, n, stride, scale, BLOCK: tl.constexpr):
    pass


def test_compiled_variant_is_the_one_an_aligned_launch_gets():
    # A launch marks aligned pointers and ints divisible by 16 (tt.divisibility=16) unless the kernel
    # exempts them; compiling without those marks gives code with no vector loads and no cp.async.
    fn = triton.runtime.JITFunction(_probe_kernel, do_not_specialize=["n"], do_not_specialize_on_alignment=["Y"])
    signature = {"X": "*fp16", "Y": "*fp32", "n": "i32", "stride": "i32", "scale": "fp32", "BLOCK": "constexpr"}
    assert runtime_attrs(fn, signature) == {(0,): [["tt.divisibility", 16]], (3,): [["tt.divisibility", 16]]}


def test_a_spilling_or_oversized_compile_fails_the_table():
    spec = KernelSpec(module="m", kernel="k", signature={}, expect_wgmma=True)
    clean = {"cc": 90, "shared": 1024, "wgmma": True, "registers": 168, "stack": 0}
    assert compile_problems(spec, clean) == []
    assert "spills" in compile_problems(spec, {**clean, "registers": 255, "stack": 24})[0]
    assert compile_problems(KernelSpec(module="m", kernel="k", signature={}, max_stack=48,
                                       stack_note="libdevice sin/cos slow path"), {**clean, "stack": 32}) == []
    assert "no register report" in compile_problems(spec, {**clean, "stack": None})[0]
    assert "shared memory" in compile_problems(spec, {**clean, "shared": 240_000})[0]
    assert "wgmma" in compile_problems(spec, {**clean, "wgmma": False})[0]
    assert compile_problems(spec, {**clean, "cc": 80, "wgmma": False}) == []


def test_ptx_digest_ignores_names_and_source_positions_but_not_code(tmp_path, capsys):
    from vidgen.kernels._aot import compare_digests, ptx_digest

    ptx = ("//\n// Generated by LLVM\n.visible .entry _old_kernel(\n\t.param .u64 _old_kernel_param_0\n)\n{\n"
           "\t.loc\t1 12 0\n\tld.global.b32 \t%r1, [%rd1];\n}\n\t.file\t1 \"/src/a.py\"\n"
           "\t.section\t.debug_info\n{\n.b8 1\n}\n")
    renamed = ptx.replace("_old_kernel", "_new_kernel").replace(".loc\t1 12", ".loc\t1 40").replace("a.py", "b.py")
    renamed = renamed.replace(".b8 1", ".b8 7")  # debug sections differ too
    changed_code = ptx.replace("ld.global.b32", "ld.global.b16")
    assert ptx_digest(ptx, "_old_kernel") == ptx_digest(renamed, "_new_kernel")
    assert ptx_digest(ptx, "_old_kernel") != ptx_digest(changed_code, "_old_kernel")

    saved = tmp_path / "before.json"
    rows = [{"cc": 90, "label": f"spec{i}", "ptx_digest": f"d{i}"} for i in range(3)]
    saved.write_text(json.dumps(rows))
    assert compare_digests([dict(r, label=r["label"] + "'") for r in rows], str(saved)) == 0
    assert compare_digests([rows[0], dict(rows[1], ptx_digest="x"), rows[2]], str(saved)) == 1
    assert "PTX differs: sm_90 spec1" in capsys.readouterr().out
    assert compare_digests(rows[:2], str(saved)) == 3


def test_a_spec_whose_sm90_ptx_lacks_an_expected_instruction_fails():
    spec = KernelSpec(module="m", kernel="k", signature={}, expect_sm90_ptx=(r"wgmma\S*\.e4m3\.e4m3",))
    row = {"cc": 90, "shared": 0, "wgmma": True, "registers": 100, "stack": 0, "ptx_missing": [r"wgmma\S*\.e4m3\.e4m3"]}
    assert compile_problems(spec, row) == [r"sm_90 PTX has no match for 'wgmma\\S*\\.e4m3\\.e4m3'"]
    assert compile_problems(spec, dict(row, ptx_missing=[])) == []


def test_compare_with_a_missing_file_is_refused_before_compiling(tmp_path, capsys, monkeypatch):
    from vidgen.kernels import _aot

    monkeypatch.setattr(_aot, "compile_all", lambda *a, **k: pytest.fail("compiled before checking --compare"))
    assert _aot.main(["--compare", str(tmp_path / "nope.json")]) == 2
    assert "--compare: no such file" in capsys.readouterr().err
