"""The scripts in examples/ run as shipped: each on the built-in tiny model (or a model built in
code), on a CPU, with the shortest settings its command line takes."""
import os
import re
import runpy
import sys

import pytest

from vidgen.ops import use_backend

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, args, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [name, *args])
    with use_backend("torch"):  # the scripts' mechanics; the kernels have their own tests
        runpy.run_path(os.path.join(EXAMPLES, name), run_name="__main__")
    return capsys.readouterr().out


def test_every_example_is_tested():
    scripts = sorted(name for name in os.listdir(EXAMPLES) if name.endswith(".py"))
    assert scripts == sorted(name for name, _ in CASES)


def _pyoco(out):
    first, last = (float(x) for x in re.findall(r"loss (\d+\.\d+)", out))
    assert last < first  # the loop trains


def _animatediff(out):
    assert "replaced:" in out and "FusedDDIMScheduler" in out and "motion module" in out
    assert float(re.search(r"largest difference from diffusers: (\S+)", out).group(1)) < 1e-3


def _tune(out):
    assert re.search(r"tuned 2 steps: loss \d", out)
    edited = re.search(r"wrote (\S+edited\.gif)", out).group(1)
    from vidgen.video_io import read_video

    assert read_video(edited).shape == (3, 32, 32, 3)


def _adapter(out):
    assert float(re.search(r"move by (\S+) on average", out).group(1)) > 0  # the prior changed the result


CASES = [
    ("pyoco_noise_training.py", (["--steps", "6"], _pyoco)),
    ("animatediff_patched.py", (["--frames", "2", "--steps", "2"], _animatediff)),
    ("tune_a_video.py", (["--frames", "3", "--steps", "2"], _tune)),
    ("video_adapter_prior.py", (["--steps", "2"], _adapter)),
]


@pytest.mark.parametrize("name,case", CASES, ids=[name for name, _ in CASES])
def test_example_runs(name, case, tmp_path, monkeypatch, capsys):
    args, check = case
    if name == "tune_a_video.py":
        args = [*args, "--out", str(tmp_path)]
    check(run_example(name, args, monkeypatch, capsys))
