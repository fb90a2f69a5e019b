"""Bad command-line input, every subcommand: exit status 2, the flag named, nothing written, no model loaded.

Each row runs ``vidgen.cli.main(argv)`` in an empty working folder holding only the inputs
below. The loaders of models, CLIP and the training entry points are replaced by functions
that fail the test, so a check that only happens after loading shows up as a failure here,
and each run must finish within the time a refusal takes (no model, no sampling).
"""
import json
import os
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline

from vidgen import cli
from vidgen.video_io import write_video

SECONDS = 5.0
TUNE = ["tune", "--video", "src.gif", "--prompt", "a red square", "--frames", "4", "--out", "run"]
ADAPT = ["train-adapter", "--data", "clips", "--out", "run"]
INVERT = ["invert", "--video", "src.gif"]
CUDA = torch.cuda.is_available()

CASES = {
    "sample": [
        (["--steps", "0"], "--steps: expected a positive integer, got 0"),
        (["--steps", "-3"], "--steps: expected a positive integer, got -3"),
        (["--steps", "1001"], "--steps: 1001 is more than the model's 1000 training timesteps"),
        (["--frames", "0"], "--frames: expected a positive integer, got 0"),
        (["--fps", "0"], "--fps: expected a positive integer, got 0"),
        (["--height", "-64"], "--height: expected a multiple of 8"),
        (["--height", "65536"], "--height: expected a multiple of 8 (the VAE's latent factor) from 8 to 4096"),
        (["--width", "100"], "--width: expected a multiple of 8"),
        (["--guidance", "nan"], "--guidance: expected a finite number"),
        (["--seed", "-1"], "--seed: expected an integer in [0, 2**62)"),
        (["--noise-alpha", "-1"], "--noise-alpha: expected a number >= 0"),
        (["--prior-strength", "inf"], "--prior-strength: expected a finite number"),
        (["--rounds", "0"], "--rounds: expected a positive integer"),
        (["--dtype", "fp8"], "--dtype: invalid choice"),
        (["--device", "tpu"], "--device: expected cpu, cuda or cuda:N, got 'tpu'"),
        (["--out", "out.avi"], "--out: cannot write .avi videos; give a .mp4 or .gif file"),
        (["--out", "notes"], "--out: notes is a file"),
        (["--model", "missing"], "--model: missing is not a folder"),
        (["--model", "empty"], "--model: empty is not a diffusers Stable Diffusion folder"),
        (["--model", "hollow"], "--model: hollow is not a diffusers Stable Diffusion folder (missing unet/config.json"),
        (["--prior", "empty"], "--prior: empty is not a diffusers Stable Diffusion folder"),
        (["--motion-adapter", "empty"], "--motion-adapter: empty is not a local diffusers MotionAdapter folder"),
        (["--video", "missing.gif"], "--video: missing.gif does not exist"),
        (["--video", "notes.txt"], "--video: cannot read notes.txt"),
        (["--video", "src.gif", "--frames", "9"], "--video: src.gif has 4 frames, --frames asks for 9"),
        (["--latents", "missing.pt"], "--latents: missing.pt does not exist"),
        (["--latents", "notes.txt"], "--latents: expected a .safetensors, .pt, .pth file"),
        (["--latents", "wrong_key.pt"], "--latents: wrong_key.pt holds no (B, C, F, h, w) float tensor"),
        (["--latents", "x_T.pt", "--height", "64"], "--height: 64 asked for, but --latents x_T.pt holds 32"),
        (["--latents", "x_T.pt", "--video", "src.gif"], "--video: not allowed with argument --latents"),
        (["--motion-adapter", "fakeclip"], "--motion-adapter: goes on an image model (--model DIR, or --arch tiny"),
        (["--prompt", "a red horse"], "--prompt: 'a red horse' has words the model does not know ('horse'); its "
                                      "vocabulary is a, blue, circle, down, green, left, moves, red, right, square, "
                                      "triangle, up, yellow"),
        (["--image", "missing.png", "--model", "svd"], "--image: missing.png does not exist"),
        (["--image", "notes.txt", "--model", "svd"], "--image: cannot read notes.txt as an image"),
        (["--image", "empty", "--model", "svd"], "--image: empty is a folder; expected an image file"),
        (["--image", "frame.png"], "--image: image-to-video needs a Stable Video Diffusion --model folder"),
        (["--image", "frame.png", "--model", "short_schedule", "--steps", "5"],
         "--image: image-to-video needs a Stable Video Diffusion --model folder"),
        (["--model", "svd"], "--image: svd is a Stable Video Diffusion folder, which animates an image; give --image"),
        (["--model", "svd", "--image", "frame.png", "--video", "src.gif"],
         "--video: not used by image-to-video sampling (--image)"),
        (["--model", "svd", "--image", "frame.png", "--noise", "mixed"],
         "--noise: not used by image-to-video sampling (--image)"),
        (["--model", "svd_hollow", "--image", "frame.png"],
         "--model: svd_hollow is not a diffusers Stable Video Diffusion folder (missing image_encoder"),
    ],
    "invert": [
        (INVERT[1:] + ["--steps", "0"], "--steps: expected a positive integer, got 0"),
        (INVERT[1:] + ["--steps", "-2"], "--steps: expected a positive integer, got -2"),
        (INVERT[1:] + ["--steps", "20", "--model", "short_schedule"], "--steps: 20 is more than the model's 10"),
        (INVERT[1:] + ["--frames", "0"], "--frames: expected a positive integer, got 0"),
        (INVERT[1:] + ["--height", "65536"], "--height: expected a multiple of 8"),
        (INVERT[1:] + ["--width", "12"], "--width: expected a multiple of 8"),
        (INVERT[1:] + ["--width", "-64"], "--width: expected a multiple of 8"),
        (INVERT[1:] + ["--out", "x.npy"], "--out: expected a .safetensors, .pt, .pth file, got 'x.npy'"),
        (INVERT[1:] + ["--reconstruct", "back.avi"], "--reconstruct: cannot write .avi videos"),
        (INVERT[1:] + ["--guidance", "-1"], "--guidance: expected a number >= 0"),
        (INVERT[1:] + ["--reconstruct", "back.gif", "--prompt", "a big red square"],
         "--prompt: 'a big red square' has words the model does not know ('big'); its vocabulary is a, blue"),
        (INVERT[1:] + ["--frames", "5"], "--video: src.gif has 4 frames, --frames asks for 5"),
        (["--video", "missing.gif"], "--video: missing.gif does not exist"),
        (["--steps", "4"], "--video"),  # required
    ],
    "tune": [
        (TUNE[1:] + ["--steps", "0"], "--steps: expected a positive integer, got 0"),
        (TUNE[1:] + ["--lr", "0"], "--lr: expected a number > 0"),
        (TUNE[1:] + ["--arch", "shapes"], "--arch: invalid choice: 'shapes'"),
        (TUNE[1:] + ["--frames", "0"], "--frames: expected a positive integer"),
        (TUNE[1:] + ["--stride", "0"], "--stride: expected a positive integer"),
        (TUNE[1:] + ["--checkpoint-every", "0"], "--checkpoint-every: expected a positive integer"),
        (TUNE[1:] + ["--weight-decay", "-1"], "--weight-decay: expected a number >= 0"),
        (TUNE[1:] + ["--max-grad-norm", "0"], "--max-grad-norm: expected a number > 0"),
        (TUNE[1:] + ["--width", "65536"], "--width: expected a multiple of 8"),
        (TUNE[1:] + ["--seed", "-5"], "--seed: expected an integer in [0, 2**62)"),
        (TUNE[1:] + ["--noise", "white"], "--noise: invalid choice"),
        (TUNE[1:] + ["--lamp", "--frames", "1"], "--frames: LAMP trains on frames 1: and needs at least 2"),
        (TUNE[1:] + ["--frames", "3", "--stride", "2"],
         "--video: src.gif has 4 frames, --frames 3 at --stride 2 need 5"),
        (TUNE[1:] + ["--model", "empty"], "--model: empty is not a diffusers Stable Diffusion folder"),
        (TUNE[1:] + ["--out", "notes.txt"], "--out: notes.txt is a file"),
        (TUNE[1:] + ["--out", "finished"], "--out: finished holds the checkpoint of an earlier run"),
        (["--video", "missing.mp4", "--prompt", "p", "--out", "run"], "--video: missing.mp4 does not exist"),
        (TUNE[1:] + ["--mixed-precision", "fp16", "--device", "cpu"],
         "--mixed-precision: fp16 training needs a CUDA device"),
    ],
    "train-adapter": [
        (ADAPT[1:] + ["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
        (ADAPT[1:] + ["--uncond-prob", "2"], "--uncond-prob: expected a probability in [0, 1]"),
        (ADAPT[1:] + ["--channels", "64"], "--channels: expected at least two positive widths"),
        (ADAPT[1:] + ["--channels", "64,x"], "--channels: expected comma-separated integers"),
        (ADAPT[1:] + ["--channels", "24,48"], "--channels: every width must divide by --norm-groups 32"),
        (ADAPT[1:] + ["--heads", "32", "--norm-groups", "8"], "--heads: 32 heads give attention head dims [2, 4]"),
        (ADAPT[1:] + ["--heads", "0"], "--heads: expected a positive integer"),
        (ADAPT[1:] + ["--layers-per-block", "0"], "--layers-per-block: expected a positive integer"),
        (ADAPT[1:] + ["--steps", "-1"], "--steps: expected a positive integer"),
        (ADAPT[1:] + ["--captions", "missing.json"], "--captions: missing.json is not a file"),
        (["--data", "missing", "--out", "run"], "--data: missing is not a folder"),
        (["--data", "notes.txt", "--out", "run"], "--data: notes.txt is not a folder"),
    ],
    "eval": [
        (["--clip", "notclip", "src.gif"], "--clip: notclip holds a bert model, not a CLIP model"),
        (["--clip", "empty", "src.gif"], "--clip: empty is not a local CLIP model folder"),
        (["--clip", "missing", "src.gif"], "--clip: missing is not a folder"),
        (["--clip", "clip_no_processor", "src.gif"], "--clip: clip_no_processor has no CLIP processor"),
        (["--clip", "fakeclip", "missing.gif"], "VIDEO: missing.gif does not exist"),
        (["src.gif"], "give --clip DIR and at least one VIDEO"),
        (["--clip", "fakeclip", "src.gif", "--batch-size", "0"], "--batch-size: expected a positive integer"),
        (["--clip", "fakeclip", "src.gif", "--device", "tpu"], "--device: expected cpu, cuda or cuda:N"),
        (["--clip", "fakeclip", "src.gif", "--out", "notes.txt"], "--out: notes.txt is a file"),
        (["--parity", "--frames", "0"], "--frames: expected a positive integer"),
        (["--parity", "--steps", "0"], "--steps: expected a positive integer"),
        (["--parity", "--rounds", "0"], "--rounds: expected a positive integer"),
        (["--parity", "--model", "empty"], "--model: empty is not a diffusers Stable Diffusion folder"),
        (["--parity", "--arch", "big"], "--arch: invalid choice"),
        (["--parity", "--arch", "shapes"], "--arch: invalid choice: 'shapes'"),  # parity times random weights
        (["--parity", "src.gif"], "VIDEO: --parity samples its own videos"),
    ],
    "demo": [
        (["--repeats", "0"], "--repeats: expected a positive integer"),
        (["--rounds", "0"], "--rounds: expected a positive integer"),
        (["--arch", "big"], "--arch: invalid choice"),
        (["--out", "demo.avi"], "--out: cannot write .avi videos"),
        (["--device", "tpu"], "--device: expected cpu, cuda or cuda:N"),
    ],
    "info": [
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    ],
    "bench": [
        (["no_such_benchmark"], "unknown benchmark(s) no_such_benchmark"),
        (["--report-only", "noise"], "--report-only runs no benchmark"),
    ],
}
if not CUDA:  # on a GPU machine there is nothing to refuse
    CASES["sample"].append((["--device", "cuda"], "--device: cuda asked for, but no CUDA GPU is visible"))

TABLE = [pytest.param(command, argv, expected, id=f"{command} {' '.join(argv)}")
         for command, rows in CASES.items() for argv, expected in rows]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working folder with the inputs the rows name."""
    monkeypatch.chdir(tmp_path)
    video = np.zeros((4, 40, 40, 3), np.uint8)
    for f in range(4):  # a moving square: a GIF writer merges identical frames
        video[f, 10:25, 5 + 4 * f:20 + 4 * f] = (200, 80, 40)
    write_video("src.gif", video)
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "notes").write_text("a file without an extension")
    (tmp_path / "empty").mkdir()
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):  # the layout, without configs
        (tmp_path / "hollow" / sub).mkdir(parents=True)
    (tmp_path / "clips").mkdir()
    for name, config in {"notclip": {"model_type": "bert"}, "fakeclip": {"model_type": "clip"},
                         "clip_no_processor": {"model_type": "clip"}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    (tmp_path / "fakeclip" / "preprocessor_config.json").write_text("{}")
    for sub, config in {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                        "tokenizer": None, "scheduler": "scheduler_config.json"}.items():
        (tmp_path / "short_schedule" / sub).mkdir(parents=True)
        if config:
            settings = {"num_train_timesteps": 10} if sub == "scheduler" else {}
            (tmp_path / "short_schedule" / sub / config).write_text(json.dumps(settings))
    for name, configs in {"svd": {"unet": "config.json", "vae": "config.json", "image_encoder": "config.json",
                                  "feature_extractor": "preprocessor_config.json",
                                  "scheduler": "scheduler_config.json"},
                          "svd_hollow": {"unet": "config.json", "vae": "config.json"}}.items():
        for sub, config in configs.items():  # a Stable Video Diffusion folder's layout, told apart by its index
            (tmp_path / name / sub).mkdir(parents=True)
            (tmp_path / name / sub / config).write_text("{}")
        (tmp_path / name / "model_index.json").write_text(json.dumps({"_class_name": "StableVideoDiffusionPipeline"}))
    iio.imwrite("frame.png", video[0])  # a readable image
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / "checkpoint.safetensors").write_bytes(b"an earlier run's checkpoint")
    torch.save({"latents": torch.zeros(1, 4, 3, 4, 4)}, "x_T.pt")
    torch.save({"not_latents": torch.zeros(1, 4, 3, 4, 4)}, "wrong_key.pt")
    return tmp_path


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading anything big fails the test: every refusal must come before it."""
    import vidgen.eval
    import vidgen.parity
    import vidgen.sampling
    import vidgen.train
    from vidgen import default_model

    def forbidden(*args, **kwargs):
        pytest.fail("a model was loaded (or built) before the bad input was refused")

    monkeypatch.setattr(default_model, "ensure", forbidden)
    monkeypatch.setattr(default_model, "build", forbidden)
    monkeypatch.setattr(vidgen.sampling.VideoModel, "from_pretrained", forbidden)
    monkeypatch.setattr(StableVideoDiffusionPipeline, "from_pretrained", forbidden)
    monkeypatch.setattr(vidgen.eval, "ClipScorer", forbidden)
    monkeypatch.setattr(vidgen.parity, "parity_report", forbidden)
    monkeypatch.setattr(vidgen.train, "tune", forbidden)
    monkeypatch.setattr(vidgen.train, "train_adapter", forbidden)


def files_under(folder) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), folder)
            for root, dirs, files in os.walk(folder) for name in dirs + files}


def run_cli(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's refusals exit; vidgen's own return the status
        return exc.code


@pytest.mark.parametrize("command,argv,expected", TABLE)
def test_bad_input_is_refused_by_flag_before_any_work(command, argv, expected, workdir, no_model_loads, capsys):
    before = files_under(workdir)
    start = time.perf_counter()
    status = run_cli([command, *argv])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert status == 2, err
    assert expected in err
    assert "Traceback" not in err
    assert files_under(workdir) == before  # nothing written, no empty output folder left
    assert elapsed < SECONDS


@pytest.mark.parametrize("command", ["info", "sample", "demo"])
def test_an_unknown_backend_in_the_environment_is_named_with_the_valid_ones(command, workdir, no_model_loads,
                                                                              monkeypatch, capsys):
    monkeypatch.setenv("VIDGEN_BACKEND", "foo")
    assert run_cli([command]) == 2
    err = capsys.readouterr().err
    assert "VIDGEN_BACKEND='foo': expected one of auto, cuda, triton, torch" in err and "Traceback" not in err


def test_an_unknown_top_level_option_is_refused(capsys):
    assert run_cli(["--bogus"]) == 2
    assert "unknown option '--bogus'" in capsys.readouterr().err


def test_a_library_error_after_loading_is_shown_by_its_flag(capsys):
    """Errors raised inside vidgen name the function's argument; the CLI shows the option instead."""
    from vidgen.commands import _args
    from vidgen.commands import sample as sample_command

    parser = sample_command.build_parser()
    assert _args.fail(parser, ValueError("num_frames: expected >= 1, got 0")) == 2
    assert _args.fail(parser, ValueError("height, width: expected multiples of 8, got 12x16")) == 2
    assert _args.fail(parser, ValueError("unet2d: attention head dim 4 is outside ...")) == 2
    assert _args.fail(parser, ValueError("weights: something else")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["vidgen sample: --frames: expected >= 1, got 0",
                   "vidgen sample: --height, --width: expected multiples of 8, got 12x16",
                   "vidgen sample: --model: attention head dim 4 is outside ...",
                   "vidgen sample: weights: something else"]


def test_a_tune_that_fails_after_starting_leaves_no_empty_output_folder(workdir, capsys):
    """A folder with the right layout but no weights passes the up-front checks; loading it fails inside
    tune(), after the run created its output folder (and a missing parent): both are removed again."""
    from vidgen.ops import use_backend

    for sub, config in {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                        "scheduler": "scheduler_config.json"}.items():
        (workdir / "hollow" / sub / config).write_text("{}")
    with use_backend("torch"):
        status = run_cli(TUNE[:-1] + ["new/run", "--model", "hollow", "--device", "cpu", "--steps", "1",
                                      "--frames", "3", "--quiet"])
    assert status == 2
    assert "vidgen tune: " in capsys.readouterr().err
    assert not (workdir / "new").exists()
    assert (workdir / "hollow" / "unet").is_dir()  # the input is untouched


def test_cleanup_after_a_failure_keeps_what_existed_and_every_file(tmp_path):
    from vidgen.commands._args import removing_new_empty_folders

    (tmp_path / "out" / "old").mkdir(parents=True)
    with pytest.raises(RuntimeError), removing_new_empty_folders(str(tmp_path / "out")):
        (tmp_path / "out" / "latents" / "a").mkdir(parents=True)
        (tmp_path / "out" / "kept").mkdir()
        (tmp_path / "out" / "kept" / "log.txt").write_text("written before the failure")
        raise RuntimeError("the run failed")
    assert files_under(tmp_path / "out") == {"old", "kept", os.path.join("kept", "log.txt")}


def test_the_checkpoint_name_checked_up_front_is_the_one_training_writes():
    from vidgen.commands import tune as tune_command
    from vidgen.train.checkpoint import CHECKPOINT_NAME

    assert tune_command.CHECKPOINT_NAME == CHECKPOINT_NAME
