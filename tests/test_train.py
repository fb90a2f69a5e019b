"""Training: Tune-A-Video / LAMP one-shot tuning and Video Adapter training on a tiny random-weight
SD folder and a generated video (METHODS.md sections 3, 4 and 6).

Most tests run the attention in the reference formulation (``use_backend("torch")``: the Triton
interpreter is too slow for whole training runs); one compares the gradients through vidgen's
kernels (interpreter) with the reference path's on the tiniest shapes.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vidgen
from vidgen import default_model
from vidgen import VideoUNet
from vidgen.sampling import VideoModel, encode_prompt
from vidgen.train import AdapterConfig, TrainSettings, train_adapter, trainable_parameter_names, tune
from vidgen.train.checkpoint import (CHECKPOINT_NAME, atomic_save, load_checkpoint, restore, save_checkpoint,
                                     step_generator)
from vidgen.train.adapter import build_small_unet, dataset_loss
from vidgen.train.data import ClipSpec, batch_indices, clip_latents, encode_dataset, find_videos
from vidgen.train.tune import diffusion_loss
from vidgen.video_io import write_video

SIZE = 32  # pixels: 4x4 latents with the tiny model's 8x VAE


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return default_model.build(str(tmp_path_factory.mktemp("model") / "tiny"), "tiny")


def moving_square(frames: int, size: int = SIZE, seed: int = 0, colour=(255, 40, 40)) -> np.ndarray:
    """A textured background with a square moving right: (F, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    video = np.repeat(base[None], frames, axis=0)
    for f in range(frames):
        video[f, 8:20, 2 + 4 * f:14 + 4 * f] = colour
    return video


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    return write_video(str(tmp_path_factory.mktemp("video") / "frames"), moving_square(4))


def settings(**overrides) -> TrainSettings:
    base = dict(steps=4, lr=1e-3, checkpoint_every=2, progress=False, device="cpu")
    return TrainSettings(**{**base, **overrides})


def run_tune(model_dir, video_dir, out, **kwargs):
    setting_keys = set(TrainSettings.__dataclass_fields__)
    tune_kwargs = {k: v for k, v in kwargs.items() if k not in setting_keys}
    with vidgen.ops.use_backend("torch"):
        return tune(model_dir, video_dir, "a red square", out, frames=3, height=SIZE, width=SIZE,
                    settings=settings(**{k: v for k, v in kwargs.items() if k in setting_keys}), **tune_kwargs)


def fixed_draw_loss(unet, latents, text, alphas_cumprod, draws=6) -> float:
    """Mean loss over the same timesteps/noise every call (a fixed evaluation set)."""
    with torch.no_grad(), vidgen.ops.use_backend("torch"):
        return sum(float(diffusion_loss(unet, latents, text, alphas_cumprod, step_generator(123, i)))
                   for i in range(draws)) / draws


# ----------------------------------------------------------------------------------------------
def test_tuning_lowers_the_loss_and_changes_only_the_tuned_parameters(model_dir, video_dir, tmp_path):
    result = run_tune(model_dir, video_dir, tmp_path / "out", steps=20, lr=1e-2, checkpoint_every=10)
    torch.manual_seed(0)  # tune seeds the fresh temporal layers with settings.seed
    initial = VideoUNet.from_pretrained_2d(model_dir).eval()
    tuned = result.model
    trainable = set(trainable_parameter_names(tuned))
    assert trainable and all(n.endswith(("attn1.to_q.weight", "attn2.to_q.weight")) or ".attn_temp." in n
                             for n in trainable)
    assert any(".attn_temp.to_out.0.bias" in n for n in trainable) and not any("norm_temp" in n for n in trainable)
    initial_params = dict(initial.named_parameters())
    for name, param in tuned.named_parameters():
        if name in trainable:
            assert not torch.equal(param, initial_params[name]), f"{name} did not change"
        else:
            assert torch.equal(param, initial_params[name]), f"frozen {name} changed"

    loaded = VideoModel.from_pretrained(model_dir)
    latents = clip_latents(loaded, model_dir, video_dir, ClipSpec(3, SIZE, SIZE), str(tmp_path / "out" / "latents"))[None]
    text = encode_prompt(loaded, ["a red square"])
    alphas = loaded.scheduler.alphas_cumprod.float()
    before, after = (fixed_draw_loss(u, latents, text, alphas) for u in (initial, tuned))
    assert after < 0.92 * before, (before, after)
    assert len(result.losses) == 20 and os.path.isfile(result.files["loss_curve"])


def _count_calls(monkeypatch, counts: dict[str, int], module, names: list[str]) -> None:
    """Count the calls of ``module.<name>`` for each name into ``counts``."""
    for name in names:
        counts[name] = 0

        def counted(*args, _name=name, _real=getattr(module, name), **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


def test_gradients_through_vidgen_kernels_match_the_reference_path(model_dir, monkeypatch, device):
    if device.type != "cpu":
        # Without the interpreter (a GPU run) its CPU tensors take the reference path on both sides.
        pytest.skip("compares the kernels run by the interpreter (CPU run); on a GPU run the compiled kernels' "
                    "gradients are checked by test_frame_attention.py and test_temporal_attention.py")
    from vidgen.kernels import frame_attention as frame_kernels
    from vidgen.kernels import temporal_attention as temporal_kernels

    launches: dict[str, int] = {}
    _count_calls(monkeypatch, launches, frame_kernels, ["frame_attention_forward_triton", "frame_attention_backward_triton"])
    _count_calls(monkeypatch, launches, temporal_kernels, ["temporal_attention_forward_triton", "temporal_attention_backward_triton"])
    torch.manual_seed(1)
    unet = VideoUNet.from_pretrained_2d(model_dir)
    with torch.no_grad():  # a fresh temporal output projection is zero: no gradient would reach attn_temp's q/k/v
        for name, param in unet.named_parameters():
            if "attn_temp.to_out" in name:
                param.normal_(0, 0.3)
    names = trainable_parameter_names(unet)
    params = dict(unet.named_parameters())
    gen = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 4, 3, 2, 2, generator=gen), torch.randn(1, 3, 32, generator=gen)
    timesteps = torch.tensor([600])
    # The noise is drawn once: the Triton and PyTorch noise generators are different random streams.
    with vidgen.ops.use_backend("torch"):
        noisy, eps = vidgen.ops.add_noise(latents, timesteps, torch.linspace(0.99, 0.05, 1000), kind="progressive",
                                          alpha=2.0, seed=0)
    grads = {}
    for use_vidgen in (True, False):
        unet.use_vidgen_ops(frame_attention=use_vidgen, temporal_attention=use_vidgen)
        unet.zero_grad()
        with vidgen.ops.use_backend("auto" if use_vidgen else "torch"):  # auto: the kernels, in the interpreter
            (unet(noisy, timesteps, text).sample - eps).square().mean().backward()
        grads[use_vidgen] = {n: params[n].grad.clone() for n in names}
    assert all(count > 0 for count in launches.values()), launches  # the vidgen pass ran the Triton kernels
    for name in names:
        assert torch.count_nonzero(grads[False][name]) > 0, name
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=2e-4, atol=1e-6, msg=name)


class _Echo(torch.nn.Module):
    """A stand-in UNet: returns a learnable tensor and remembers its input."""

    def __init__(self, shape):
        super().__init__()
        self.out = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(5)))

    def forward(self, sample, timestep, text):
        self.seen = (sample.detach().clone(), timestep.clone())

        class Output:
            pass

        output = Output()
        output.sample = self.out
        return output


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_targets_correlated_noise_and_lamp_keeps_frame_zero_clean(prediction_type):
    latents = torch.randn(2, 4, 3, 2, 3, generator=torch.Generator().manual_seed(1))
    alphas = torch.linspace(0.99, 0.05, 1000)
    unet = _Echo(latents.shape)
    with vidgen.ops.use_backend("torch"):
        loss = diffusion_loss(unet, latents, torch.zeros(2, 1, 1), alphas, step_generator(0, 7), noise="mixed",
                              noise_alpha=1.5, prediction_type=prediction_type, clean_first_frame=True)
        noisy, timesteps = unet.seen
        generator = step_generator(0, 7)
        expected_t = torch.randint(0, 1000, (2,), generator=generator)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        x_t, eps = vidgen.ops.add_noise(latents, expected_t, alphas, kind="mixed", alpha=1.5, seed=seed)
    assert torch.equal(timesteps, expected_t)
    assert torch.equal(noisy[:, :, 0], latents[:, :, 0]) and torch.equal(noisy[:, :, 1:], x_t[:, :, 1:])
    a = alphas[expected_t].view(2, 1, 1, 1, 1)
    target = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * latents
    torch.testing.assert_close(loss, (unet.out[:, :, 1:] - target[:, :, 1:]).square().mean())


def test_resume_reproduces_the_uninterrupted_run(model_dir, video_dir, tmp_path, monkeypatch):
    straight = run_tune(model_dir, video_dir, tmp_path / "straight", steps=5, noise="progressive")

    tune_module = sys.modules["vidgen.train.tune"]  # the attribute vidgen.train.tune is the function

    calls, real_loss = [0], tune_module.diffusion_loss

    def crash_at_step_four(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(tune_module, "diffusion_loss", crash_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        run_tune(model_dir, video_dir, tmp_path / "resumed", steps=5, noise="progressive")
    assert load_checkpoint(str(tmp_path / "resumed" / CHECKPOINT_NAME)).step == 2  # lost one step, < checkpoint_every
    monkeypatch.setattr(tune_module, "diffusion_loss", real_loss)
    resumed = run_tune(model_dir, video_dir, tmp_path / "resumed", steps=5, noise="progressive", resume=True)
    assert resumed.resumed_from == 2
    assert resumed.losses == straight.losses
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="noise: checkpoint 'progressive', now 'iid'"):
        run_tune(model_dir, video_dir, tmp_path / "resumed", steps=6, resume=True)
    with pytest.raises(ValueError, match="holds the checkpoint of an earlier run"):
        run_tune(model_dir, video_dir, tmp_path / "resumed", steps=6, noise="progressive")


def test_interrupted_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    param = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones_like(param)
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    path = str(tmp_path / CHECKPOINT_NAME)
    save_checkpoint(path, step=1, params={"w": param}, optimizer=optimizer, scaler=scaler, losses=[0.5], run={})
    saved_bytes = open(path, "rb").read()

    import vidgen.train.checkpoint as checkpoint_module

    def torn_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 10)  # the first bytes of a file, then the process dies
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(checkpoint_module, "save_file", torn_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, step=2, params={"w": param * 2}, optimizer=optimizer, scaler=scaler,
                        losses=[0.5, 0.4], run={})
    assert open(path, "rb").read() == saved_bytes
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]  # no temporary file left behind
    restored = load_checkpoint(path)
    assert restored.step == 1 and torch.equal(restored.params["w"], param.detach())
    assert torch.equal(restored.optimizer_state["state"][0]["exp_avg"], optimizer.state[param]["exp_avg"])
    fresh = torch.nn.Parameter(torch.zeros(3, 2))
    fresh_optimizer, fresh_scaler = torch.optim.AdamW([fresh], lr=0.1), torch.amp.GradScaler("cpu")
    restore(restored, {"w": fresh}, fresh_optimizer, fresh_scaler, run={})
    assert torch.equal(fresh, param) and fresh_scaler.state_dict() == scaler.state_dict()
    assert torch.equal(fresh_optimizer.state[fresh]["exp_avg_sq"], optimizer.state[param]["exp_avg_sq"])
    monkeypatch.undo()
    atomic_save({"x": torch.ones(2)}, path, {})  # a completed write replaces it
    assert open(path, "rb").read() != saved_bytes


def test_data_order_is_a_permutation_per_epoch_split_across_ranks():
    seen = [batch_indices(5, 2, step, rank, 2, seed=3).tolist() for step in range(5) for rank in range(2)]
    flat = [row for rows in seen for row in rows]  # 20 draws = 4 epochs of 5
    for epoch in range(4):
        assert sorted(flat[5 * epoch:5 * epoch + 5]) == list(range(5))
    assert torch.equal(batch_indices(5, 2, 3, 1, 2, seed=3), batch_indices(5, 2, 3, 1, 2, seed=3))


def _adapter_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_video(str(data / "square"), moving_square(3))
    (data / "square.txt").write_text("a red square moving right\n")
    write_video(str(data / "blue.gif"), moving_square(3, seed=1, colour=(30, 30, 250)))
    (data / "blue.txt").write_text("a blue square")
    return data


def test_video_adapter_trains_every_parameter_and_samples_with_a_prior(model_dir, tmp_path):
    data = _adapter_data(tmp_path)
    config = AdapterConfig(channels=(16, 32), heads=2, norm_groups=8)
    with vidgen.ops.use_backend("torch"):
        result = train_adapter(model_dir, data, tmp_path / "adapter", frames=3, height=SIZE, width=SIZE, config=config,
                               batch_size=2, settings=settings(steps=3))
        torch.manual_seed(0)
        small = VideoModel.from_pretrained(tmp_path / "adapter")
        prior = VideoModel.from_pretrained(model_dir).unet
        sampled = vidgen.sampling.sample_video(small, "a red square", num_frames=3, height=SIZE, width=SIZE,
                                               num_inference_steps=2, prior=prior, progress=False)
    assert isinstance(small.unet, VideoUNet) and tuple(small.unet.config.block_out_channels) == (16, 32)
    for name, param in small.unet.named_parameters():
        assert torch.equal(param, dict(result.model.named_parameters())[name]), name
    assert sampled.video.shape == (1, 3, 3, SIZE, SIZE) and torch.isfinite(sampled.video).all()
    with pytest.raises(ValueError, match="has no caption"):
        (data / "blue.txt").unlink()
        train_adapter(model_dir, data, tmp_path / "again", frames=3, height=SIZE, width=SIZE, config=config,
                      settings=settings(steps=1))


def test_captions_come_from_sidecar_files_or_a_captions_file(tmp_path):
    data = _adapter_data(tmp_path)
    (data / "notes.md").write_text("not a video")
    found = find_videos(str(data))
    assert [(os.path.basename(v.path), v.caption) for v in found] == [("blue.gif", "a blue square"),
                                                                     ("square", "a red square moving right")]
    captions = tmp_path / "captions.json"
    captions.write_text('{"blue.gif": "cobalt", "square": "crimson"}')
    assert [v.caption for v in find_videos(str(data), str(captions))] == ["cobalt", "crimson"]


def test_two_rank_data_parallel_run_with_gloo(model_dir, tmp_path):
    data = _adapter_data(tmp_path)
    out = tmp_path / "ddp"
    from vidgen.cli import COMMANDS

    entry = ["-m", "vidgen.cli", "train-adapter"] if "train-adapter" in COMMANDS else ["-m", "vidgen.commands.train_adapter"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "VIDGEN_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(29_500 + os.getpid() % 1000), *entry, "--model", model_dir, "--data", str(data), "--out", str(out),
               "--frames", "3", "--height", str(SIZE), "--width", str(SIZE), "--steps", "2", "--checkpoint-every", "1",
               "--channels", "16,32", "--heads", "2", "--norm-groups", "8", "--device", "cpu", "--quiet"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("wrote model") == 1  # rank 0 writes, rank 1 does not
    checkpoint = load_checkpoint(str(out / CHECKPOINT_NAME))
    assert checkpoint.run["world_size"] == 2 and checkpoint.step == 2 and len(checkpoint.losses) == 2
    trained = VideoUNet.from_pretrained(out, subfolder="unet")
    for name, param in trained.named_parameters():
        assert torch.equal(param, checkpoint.params[name]), name

    # The same two steps in one process: each step's gradient is that of the mean of both ranks' losses.
    unet = build_small_unet(model_dir, AdapterConfig(channels=(16, 32), heads=2, norm_groups=8), SIZE // 8, seed=0)
    loaded = VideoModel.from_pretrained(model_dir, unet=unet)
    dataset = encode_dataset(loaded, model_dir, find_videos(str(data)), ClipSpec(3, SIZE, SIZE), str(out / "latents"))
    loss_fn = dataset_loss(dataset, loaded.scheduler.alphas_cumprod.float(), seed=0, batch_size=1, uncond_prob=0.1,
                           noise="iid", noise_alpha=None, prediction_type="epsilon")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2)
    losses = []
    with vidgen.ops.use_backend("torch"):
        for step in range(2):
            loss = (loss_fn(unet, step, 0, 2) + loss_fn(unet, step, 1, 2)) / 2
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
    torch.testing.assert_close(checkpoint.losses, losses, rtol=1e-5, atol=0)
    for name, param in unet.named_parameters():
        torch.testing.assert_close(checkpoint.params[name], param.detach(), rtol=1e-4, atol=1e-6, msg=name)


def test_cli_tune_lamp_bf16_then_sample(model_dir, video_dir, tmp_path, capsys):
    from vidgen.commands import sample as sample_command
    from vidgen.commands import tune as tune_command

    out = tmp_path / "lamp"
    args = ["--model", model_dir, "--video", video_dir, "--prompt", "a red square", "--out", str(out), "--frames", "3",
            "--height", str(SIZE), "--width", str(SIZE), "--steps", "2", "--checkpoint-every", "1", "--lamp",
            "--noise", "progressive", "--prediction-type", "v_prediction", "--mixed-precision", "bf16",
            "--device", "cpu", "--quiet"]
    with vidgen.ops.use_backend("torch"):
        assert tune_command.main(args) == 0
        assert "wrote model" in capsys.readouterr().out
        assert sample_command.main(["--model", str(out), "--frames", "3", "--height", str(SIZE), "--width", str(SIZE),
                                    "--steps", "2", "--out", str(tmp_path / "s.gif"), "--device", "cpu", "--quiet"]) == 0
        assert VideoUNet.from_pretrained(out, subfolder="unet").config.frame_mode == "first_frame"
        assert VideoModel.from_pretrained(out).scheduler.config.prediction_type == "v_prediction"
        assert VideoModel.from_pretrained(model_dir).scheduler.config.prediction_type == "epsilon"  # source untouched
        assert tune_command.main(args[:3] + ["/nonexistent.mp4"] + args[4:]) == 2
    assert "/nonexistent.mp4 does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tune_command.main(args + ["--noise", "white"])


def test_bad_settings_are_refused_clearly():
    with pytest.raises(ValueError, match="mixed_precision: expected one of no, bf16, fp16"):
        TrainSettings(mixed_precision="fp8")
    with pytest.raises(ValueError, match="steps: expected >= 1"):
        TrainSettings(steps=0)
    with pytest.raises(ValueError, match="channels: every width must divide"):
        AdapterConfig(channels=(24, 48), norm_groups=32)
