"""``vidgen sample --prompts FILE``: one video per prompt, split across processes, resumable.

The built-in tiny model at 32x32 pixels, 2 frames, 1 step, in the reference formulation
(``VIDGEN_BACKEND=torch``): these tests are about which videos get written, not their pixels.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from vidgen.commands import sample
from vidgen.commands._prompts import read_prompts
from vidgen.ops import use_backend
from vidgen.video_io import read_video

SMALL = ["--arch", "tiny", "--frames", "2", "--steps", "1", "--height", "32", "--width", "32", "--quiet", "--device", "cpu"]
PROMPTS = "# five videos\na red square\n7 | a blue circle\n\na green field\n  a grey cat  \n123|a white dog\n"


def test_prompt_file_lines_seeds_and_comments(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS)
    jobs = read_prompts(str(path), base_seed=100)
    assert [(j.index, j.line, j.prompt, j.seed) for j in jobs] == [
        (0, 2, "a red square", 100), (1, 3, "a blue circle", 7), (2, 5, "a green field", 102),
        (3, 6, "a grey cat", 103), (4, 7, "a white dog", 123)]


@pytest.mark.parametrize("text,message", [
    ("", "holds no prompt"),
    ("# only a comment\n\n", "holds no prompt"),
    ("a cat\n5 |  \n", "line 2: a seed with no prompt"),
    (f"{2**62} | a cat\n", "line 1: seed 4611686018427387904 is not below 2\\*\\*62"),
])
def test_bad_prompt_files_are_refused_before_any_model_loads(tmp_path, capsys, text, message):
    path = tmp_path / "prompts.txt"
    path.write_text(text)
    out = tmp_path / "out" / "clip.gif"
    assert sample.main(["--prompts", str(path), "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "--prompts" in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_missing_prompt_file_and_latents_are_refused(tmp_path, capsys):
    assert sample.main(["--prompts", str(tmp_path / "nope.txt"), *SMALL]) == 2
    assert "--prompts" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("a cat\n")
    torch.save({"latents": torch.zeros(1, 4, 2, 4, 4)}, tmp_path / "x.pt")
    assert sample.main(["--prompts", str(tmp_path / "p.txt"), "--latents", str(tmp_path / "x.pt"), *SMALL]) == 2
    assert "not supported with --prompts" in capsys.readouterr().err


def _records(folder):
    return {name: json.loads((folder / name).read_text()) for name in sorted(os.listdir(folder))
            if name.endswith(".json")}


def test_two_processes_split_the_prompts_and_a_rerun_resumes(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "videos" / "clip.gif"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "VIDGEN_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(29_500 + (os.getpid() + 500) % 1000), "-m", "vidgen.cli", "sample", "--prompts", str(prompts),
               "--out", str(out), *SMALL]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    folder = out.parent
    videos = sorted(name for name in os.listdir(folder) if name.endswith(".gif"))
    assert videos == [f"clip_000{i}.gif" for i in range(5)]  # one per prompt, no temporary left over
    assert not [name for name in os.listdir(folder) if name.startswith(".")]
    records = _records(folder)
    assert [(r["index"], r["prompt"], r["seed"]) for r in records.values()] == [
        (0, "a red square", 0), (1, "a blue circle", 7), (2, "a green field", 2), (3, "a grey cat", 3),
        (4, "a white dog", 123)]
    wrote = [line for line in done.stdout.splitlines() if line.startswith("wrote ")]
    assert sorted(wrote) == sorted(set(wrote)) and len(wrote) == 5  # no video written twice
    assert "process 0 of 2: 3 video(s) written" in done.stdout and "process 1 of 2: 2 video(s) written" in done.stdout
    for name in videos:
        assert read_video(str(folder / name)).shape == (2, 32, 32, 3)

    # A rerun (here one process) skips everything finished...
    stamps = {name: os.stat(folder / name).st_mtime_ns for name in videos}
    with use_backend("torch"):
        assert sample.main(["--prompts", str(prompts), "--out", str(out), *SMALL]) == 0
    assert {name: os.stat(folder / name).st_mtime_ns for name in videos} == stamps

    # ...and redoes a video that is missing and one whose prompt changed, nothing else.
    os.remove(folder / "clip_0003.gif")
    prompts.write_text(PROMPTS.replace("a blue circle", "a blue triangle"))
    with use_backend("torch"):
        assert sample.main(["--prompts", str(prompts), "--out", str(out), *SMALL]) == 0
    redone = {name for name in videos if os.stat(folder / name).st_mtime_ns != stamps.get(name)}
    assert redone == {"clip_0001.gif", "clip_0003.gif"}
    assert _records(folder)["clip_0001.json"]["prompt"] == "a blue triangle"
