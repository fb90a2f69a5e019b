"""The built-in moving-shapes model, as shipped: an ordinary diffusers folder that loads through the
same code path as any other, draws what its captions say, and refuses words it does not know."""
import json
import os

import pytest

from vidgen import default_model
from vidgen.ops import use_backend
from vidgen.sampling import VideoModel, sample_video
from vidgen.shapes import data, scores

# Kernels have their own tests; here the model's behaviour, on the reference formulation.
pytestmark = pytest.mark.usefixtures("torch_backend")


@pytest.fixture
def torch_backend():
    with use_backend("torch"):
        yield


@pytest.fixture(scope="module")
def model():
    return VideoModel.from_pretrained(default_model.ensure("shapes"))


def test_the_shipped_model_is_a_diffusers_folder_of_safetensors_weights():
    folder = default_model.ensure()  # the default built-in model
    assert folder == default_model.SHAPES_DIR
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    # a video UNet of either architecture make reproduce trains (report.choose_shipped picks the best)
    assert index["unet"] in (["vidgen", "VideoUNet"], ["diffusers", "UNetMotionModel"])
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    weights = [os.path.join(folder, part, name) for part in ("unet", "vae", "text_encoder")
               for name in os.listdir(os.path.join(folder, part)) if name.endswith(".safetensors")]
    assert len(weights) == 3 and sum(os.path.getsize(w) for w in weights) < 8 * 2**20  # a few MB
    with open(os.path.join(folder, "vidgen_model.json")) as f:
        assert set(json.load(f)["sampling"]) == {"steps", "guidance", "noise"}


def test_it_loads_like_any_folder_and_its_tokenizer_reads_each_word_as_one_token(model):
    with open(os.path.join(default_model.SHAPES_DIR, "model_index.json")) as f:
        assert type(model.unet).__name__ == json.load(f)["unet"][1]
    assert sorted(model.tokenizer.init_kwargs["closed_vocabulary"]) == sorted(data.VOCABULARY)
    for word in data.VOCABULARY:
        assert len(model.tokenizer(word).input_ids) == 3  # start, the word, end


def test_a_few_sampling_steps_draw_the_captions_better_than_chance(model):
    """Twelve captions (every colour and shape, the four directions), ten DDIM steps, a fixed seed:
    colour, shape and direction are read back far above chance (1/4, 1/3, 1/4), and so the whole
    caption (1/48). Seeds 0 to 3 gave direction 0.92 to 1.00 and caption 0.67 to 0.83."""
    settings = default_model.sampling_defaults("shapes")
    captions = [data.Caption(c, s, d) for (c, s), d in
                zip([(c, s) for c in data.COLOURS for s in data.SHAPES], list(data.DIRECTIONS) * 3)]
    video = sample_video(model, [str(c) for c in captions], num_frames=data.FRAMES, num_inference_steps=10,
                         guidance_scale=settings["guidance"], noise=settings["noise"], seed=0, progress=False).video
    assert video.shape == (12, data.FRAMES, 3, data.SIZE, data.SIZE)
    accuracy = scores.caption_scores(scores.report_videos(video), captions)
    assert accuracy["colour"] >= 0.75 and accuracy["shape"] >= 0.5 and accuracy["direction"] >= 0.75, accuracy
    assert accuracy["caption"] >= 0.5, accuracy


def test_unknown_words_are_refused_with_the_vocabulary(model):
    with pytest.raises(ValueError, match=r"prompt: 'a red horse moves left' has words the model does not know "
                                         r"\('horse'\); its vocabulary is a, blue, circle"):
        sample_video(model, "a red horse moves left", num_frames=2, num_inference_steps=1, progress=False)


def test_the_command_line_samples_the_built_in_model_by_default(tmp_path, capsys):
    from vidgen.commands import sample
    from vidgen.video_io import read_video

    out = tmp_path / "frames"  # a folder of PNG frames
    assert sample.main(["--steps", "2", "--out", str(out), "--quiet", "--device", "cpu", "--no-compare"]) == 0
    assert read_video(str(out)).shape == (data.FRAMES, data.SIZE, data.SIZE, 3)
    assert "denoising" in capsys.readouterr().out


def test_every_file_of_the_model_is_package_data():
    """``pip install`` carries the weights: pyproject's package-data patterns match every file."""
    import fnmatch
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["vidgen.shapes"]
    package = os.path.join(root, "vidgen", "shapes")
    files = [os.path.relpath(os.path.join(base, name), package)
             for base, _, names in os.walk(default_model.SHAPES_DIR) for name in names]
    assert files and all(any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)
                         for f in files), files


def test_a_model_folder_is_replaced_whole_or_not_at_all(tmp_path):
    """default_model.atomic_folder, which writes the built-in models, the shipped one and trained
    video UNets: a failed write leaves the old folder and no staging folder; a finished one
    replaces it, with the permissions the umask gives (not mkdtemp's owner-only ones)."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with default_model.atomic_folder(str(target)) as staging:
            open(os.path.join(staging, "new.json"), "w").close()
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["old.json"]
    umask = os.umask(0o022)
    try:
        with default_model.atomic_folder(str(target)) as staging:
            open(os.path.join(staging, "new.json"), "w").close()
    finally:
        os.umask(umask)
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["new.json"]
    assert os.stat(target).st_mode & 0o777 == 0o755


def test_a_saved_video_unet_loads_as_its_class_and_a_2d_unet_is_refused(tmp_path):
    from vidgen.sampling import load_video_unet
    from vidgen.shapes import models

    folder = os.path.join(default_model.SHAPES_DIR, "unet")
    with open(os.path.join(folder, "config.json")) as f:
        assert type(load_video_unet(folder)).__name__ == json.load(f)["_class_name"]
    models.build_unet(0).save_pretrained(tmp_path / "unet2d")
    with pytest.raises(ValueError, match="unet: .* holds a UNet2DConditionModel, expected one of VideoUNet"):
        load_video_unet(tmp_path / "unet2d")
