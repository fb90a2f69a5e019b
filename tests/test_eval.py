"""CLIP metrics: formulas on constructed embeddings, and the CLI on a tiny random CLIP saved to disk."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vidgen import eval as metrics
from vidgen.default_model import _write_tokenizer
from vidgen.video_io import write_video


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = tmp_path_factory.mktemp("clip")
    _write_tokenizer(str(path / "tok"))
    tokenizer = CLIPTokenizer.from_pretrained(str(path / "tok"))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(str(path / "clip"))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(str(path / "clip"))
    return str(path / "clip")


def test_identical_frames_are_fully_consistent_and_opposite_embeddings_are_not():
    e = torch.randn(16)
    same = metrics.video_scores(e.repeat(4, 1), text_embedding=e)
    assert same.frame_consistency == pytest.approx(100.0) and same.text_alignment == pytest.approx(100.0)
    flipping = metrics.video_scores(torch.stack([e, -e, e]), text_embedding=None)
    assert flipping.frame_consistency == pytest.approx(-100.0) and flipping.text_alignment is None


def test_alignment_and_diversity_match_the_written_out_formula():
    frames, text = torch.randn(5, 8), torch.randn(8)
    cos = torch.nn.functional.cosine_similarity(frames.double(), text.double()[None], dim=-1)
    assert metrics.video_scores(frames, text).text_alignment == pytest.approx(cos.mean().item() * 100)
    a, b = torch.randn(3, 8), torch.randn(3, 8)
    mean_a, mean_b = (torch.nn.functional.normalize(v.double(), dim=-1).mean(0) for v in (a, b))
    expected = torch.nn.functional.cosine_similarity(mean_a, mean_b, dim=0).item() * 100
    assert metrics.diversity([a, b]) == pytest.approx(expected)
    assert metrics.diversity([a, a]) == pytest.approx(100.0)
    assert metrics.diversity([a]) is None


def test_scores_with_a_real_clip_model(clip_dir):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    still = np.stack([frame] * 4)
    noisy = rng.integers(0, 255, (4, 40, 40, 3), dtype=np.uint8)
    report = metrics.clip_scores({"still": still, "noisy": noisy}, clip_dir, "a red horse", device="cpu")
    by_name = {v["path"]: v for v in report["videos"]}
    assert by_name["still"]["frame_consistency"] == pytest.approx(100.0, abs=1e-3)
    assert len(by_name["still"]["per_frame_alignment"]) == 4
    assert -100 <= report["text_alignment"] <= 100 and report["diversity"] is not None


def test_cli_writes_report_and_plot(clip_dir, tmp_path):
    rng = np.random.default_rng(1)
    paths = [write_video(str(tmp_path / f"v{i}.gif"), rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
             for i in range(2)]
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "vidgen.cli", "eval", "--clip", clip_dir, "--prompt", "a cat",
                           "--out", str(out), *paths], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "clip_scores.json").read_text())
    assert len(report["videos"]) == 2 and report["diversity"] is not None
    assert (out / "clip_scores.csv").exists() and (out / "clip_per_frame.png").stat().st_size > 0


def test_cli_explains_a_missing_clip_folder(tmp_path):
    video = write_video(str(tmp_path / "v.gif"), np.zeros((2, 8, 8, 3), np.uint8))
    proc = subprocess.run([sys.executable, "-m", "vidgen.cli", "eval", "--clip", str(tmp_path / "nope"), video],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "local CLIP model folder" in proc.stderr


@pytest.mark.parametrize("backend", ["torch", pytest.param("auto", marks=pytest.mark.slow)])
def test_parity_on_the_tiny_models_is_above_60_db(clip_dir, tmp_path, backend):
    """Same prompt and seed, default modules vs vidgen, fp32: vidgen's patched modules on the ops' references,
    and (slow: minutes on 2 cores) on the Triton kernels through the interpreter."""
    from vidgen import default_model
    from vidgen.ops import use_backend
    from vidgen.parity import parity_report, psnr_per_frame

    with use_backend(backend):
        rows = parity_report(default_model.ensure("tiny"), frames=3, steps=2, clip_dir=clip_dir, rounds=1)
    assert [r["kind"] for r in rows] == ["tune-a-video", "animatediff", "text2video-zero"]
    for row in rows:
        assert len(row["psnr_per_frame"]) == 3 and row["min_psnr"] > 60, row
        assert row["max_abs_diff"] < 1e-3 and row["vidgen_text_alignment"] is not None
    video = torch.rand(2, 3, 8, 8)
    assert psnr_per_frame(video, video) == [float("inf")] * 2
    assert psnr_per_frame(video, video + 0.1)[0] == pytest.approx(20.0, abs=0.01)


def test_parity_cli_writes_its_table(tmp_path):
    from vidgen.commands import eval as eval_command
    from vidgen.ops import use_backend

    with use_backend("torch"):
        assert eval_command.main(["--parity", "--kinds", "tune-a-video", "--frames", "2", "--steps", "1",
                                  "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "parity.json").read_text())
    assert rows[0]["kind"] == "tune-a-video" and rows[0]["min_psnr"] > 60
