"""Every Triton kernel, at every config its launcher can pick, compiles for sm_80 and sm_90 without
a GPU, fits the target's shared memory, and (attention on sm_90) uses wgmma.

The compiles run in a subprocess because the test process runs Triton in interpreter mode.
"""
import json
import os
import subprocess
import sys

import pytest

from vidgen.kernels._aot import KERNEL_MODULES


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_every_config_compiles_for_sm80_and_sm90(module, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vidgen.kernels._aot", "--module", module, "--cc", "80", "90",
         "--jobs", "2", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=1200)
    if proc.stdout.splitlines()[-1:] == ["0 compiled, 0 failed"]:
        pytest.skip(f"{module} is not written yet")
    assert out.exists(), proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert rows, f"{module} declares no launch configs"
    assert {r["cc"] for r in rows} == {80, 90}
    failures = [f"sm_{r['cc']} {r['label']}: {r['error']}" for r in rows if not r["ok"]]
    assert not failures, "\n".join(failures)
