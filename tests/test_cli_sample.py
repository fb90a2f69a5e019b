"""The sampling CLI end to end on the built-in models (the random-weight tiny one for the plumbing,
the trained moving-shapes one as the default): real video files, inversion, errors."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidgen.commands import invert, sample
from vidgen.ops import use_backend
from vidgen.video_io import read_video, write_video


def source_video(path, frames=3, size=40):
    video = np.zeros((frames, size, size, 3), np.uint8)
    for f in range(frames):
        video[f, 10:25, 5 + 4 * f:20 + 4 * f] = (200, 80, 40)
    return write_video(str(path), video)


@pytest.mark.parametrize("out_name,backend", [pytest.param("clip.gif", "auto", marks=pytest.mark.slow),  # minutes
                                               ("clip.mp4", "torch")])
def test_sample_with_the_builtin_model_writes_a_video(tmp_path, capsys, out_name, backend):
    """The gif run goes through vidgen's Triton kernels (interpreter), the mp4 run through the reference."""
    out = tmp_path / out_name
    with use_backend(backend):
        status = sample.main(["--arch", "tiny", "--frames", "3", "--steps", "2", "--out", str(out), "--quiet",
                              "--height", "64", "--width", "64",  # 8x8 latents: the interpreter stays quick
                              "--device", "cpu", "--noise", "progressive", "--rounds", "1"])
    assert status == 0
    frames = read_video(str(out))
    assert frames.shape == (3, 64, 64, 3)
    table = capsys.readouterr().out
    assert "denoising" in table and "reference" in table  # built-in model: compared against the reference
    assert "median of 1 alternating round after a warm-up of both" in table


@use_backend("torch")  # the CLI plumbing; kernels are covered above and in the sampling tests
def test_sample_from_an_inverted_source_video_and_invert_command(tmp_path):
    src = source_video(tmp_path / "src.gif")
    out = tmp_path / "frames"
    assert sample.main(["--arch", "tiny", "--video", src, "--frames", "3", "--steps", "2", "--out", str(out),
                        "--quiet", "--no-compare", "--device", "cpu"]) == 0
    assert len(os.listdir(out)) == 3
    latents = tmp_path / "x_T.safetensors"
    assert invert.main(["--arch", "tiny", "--video", src, "--frames", "3", "--steps", "2", "--out", str(latents),
                        "--quiet", "--device", "cpu"]) == 0
    x_t = load_file(str(latents))["latents"]
    assert x_t.shape == (1, 4, 3, 16, 16) and torch.isfinite(x_t).all()


@use_backend("torch")
def test_invert_to_a_pt_file_at_a_chosen_size_then_sample_from_it(tmp_path, capsys):
    src = source_video(tmp_path / "src.gif", frames=3)
    latents = tmp_path / "x_T.pt"
    assert invert.main(["--arch", "tiny", "--video", src, "--frames", "2", "--steps", "2", "--height", "32",
                        "--width", "48", "--out", str(latents), "--quiet", "--device", "cpu"]) == 0
    x_t = torch.load(latents, weights_only=True)["latents"]  # torch.save, as the extension asks
    assert x_t.shape == (1, 4, 2, 4, 6)
    out = tmp_path / "from_inversion.gif"
    assert sample.main(["--arch", "tiny", "--latents", str(latents), "--steps", "2", "--out", str(out), "--quiet",
                        "--no-compare", "--device", "cpu"]) == 0
    assert read_video(str(out)).shape == (2, 32, 48, 3)  # frames and size come from the latents
    assert "denoising" in capsys.readouterr().out


def test_clear_errors_for_a_wrong_model_folder_and_a_short_video(tmp_path, capsys):
    assert sample.main(["--model", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "not_a_model").mkdir()
    assert sample.main(["--model", str(tmp_path / "not_a_model"), "--quiet"]) == 2
    assert "not a diffusers Stable Diffusion folder" in capsys.readouterr().err
    src = source_video(tmp_path / "short.gif", frames=2)
    assert sample.main(["--arch", "tiny", "--video", src, "--frames", "5", "--steps", "1", "--quiet",
                        "--device", "cpu"]) == 2
    assert "has 2 frames" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main(["--frames", "0"])


def test_an_sd_folder_inflated_on_load_is_the_same_model_every_time(tmp_path):
    """sample and invert inflate an SD folder with fresh temporal layers (a non-zero output bias): they
    are drawn from a fixed seed, whatever the global RNG, while VideoModel.from_pretrained alone (what
    vidgen tune seeds with its --seed) draws them from it."""
    from vidgen import default_model
    from vidgen.commands._models import load_video_model
    from vidgen.sampling import VideoModel

    folder = default_model.build(str(tmp_path / "sd"), "tiny")
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(load_video_model(folder).unet.state_dict())
    temporal = [key for key in states[0] if "_temp." in key]
    assert temporal and all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    torch.manual_seed(1)
    drawn = VideoModel.from_pretrained(folder).unet.state_dict()
    assert any(not torch.equal(drawn[key], states[0][key]) for key in temporal)
