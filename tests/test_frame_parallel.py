"""vidgen.patch(pipe, frame_parallel=True): one video on several gloo processes, equal to one process.

Each multi-process test starts one process per rank (tests/frame_parallel_worker.py) under a
deadline, so a bug that hangs a collective fails the test instead of hanging CI. Ranks run several
scenarios in one process group to pay the start-up (imports, model load) once.
"""
import datetime
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

import vidgen
from frame_parallel_worker import (SCENARIOS, VIDEO_CASES, animatediff_pipeline, invert_then_sample, sample,
                                   svd_pipeline, svd_sample, tuneavideo_unet, unet3d, unet3d_run, video_case)
from vidgen import default_model

WORKER = os.path.join(os.path.dirname(__file__), "frame_parallel_worker.py")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return default_model.build(str(tmp_path_factory.mktemp("sd") / "model"), "tiny")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, scenarios: list[str], sd_dir: str, out_dir, timeout: float) -> list[tuple[int, str]]:
    """Run the worker on ``world`` ranks; (exit code, output) per rank. Kills every rank at the deadline."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIDGEN_BACKEND": "torch"}
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, str(rank), str(world), str(port), sd_dir, str(out_dir),
                               ",".join(scenarios)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in range(world)]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            output, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            results.append((proc.returncode, output))
    except subprocess.TimeoutExpired:
        pytest.fail(f"frame-parallel ranks still running after {timeout} s (a hang)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


# Error relative to the largest magnitude: fp32 rounding only (a bug is O(1): a missing exchange or
# statistic gives 0.3-0.9). The tiny random UNet3D amplifies rounding over two guided steps: its
# single-process patched and diffusers runs differ by 1.2e-5, its 2-rank run by 1.1e-5 (one forward:
# 2.6e-6), and so does a guidance-parallel run that only splits the batch (same frames, no exchange).
RELATIVE_TOLERANCE = {"unet3d": 3e-5}


def assert_matches_one_process(sd_dir, out_dir, world: int, name: str) -> None:
    frames, _, scale = SCENARIOS[name]
    with vidgen.ops.use_backend("torch"):
        if name in VIDEO_CASES:
            expected_by_key = video_case(name, sd_dir)
        elif name.startswith("unet3d"):
            expected_by_key = {"latents": unet3d_run(vidgen.patch(unet3d()), frames, scale)}
        elif name.startswith("svd"):
            expected_by_key = dict(zip(("latents", "frames"), svd_sample(vidgen.patch(svd_pipeline()), frames, scale)))
        elif name.startswith("tuneavideo"):
            expected_by_key = dict(zip(("inverted", "latents"), invert_then_sample(tuneavideo_unet(sd_dir), frames, scale)))
        else:
            expected_by_key = dict(zip(("latents", "frames"),
                                       sample(vidgen.patch(animatediff_pipeline(sd_dir)), frames, scale)))
    for rank in range(world):
        got = torch.load(os.path.join(out_dir, f"{name}.rank{rank}.pt"))
        for key, expected in expected_by_key.items():
            assert got[key].shape == expected.shape, (name, rank, key)
            tolerance = RELATIVE_TOLERANCE.get(name.split("_")[0], 1e-5) * expected.abs().max().item()
            torch.testing.assert_close(got[key], expected, rtol=0, atol=tolerance, msg=f"{name} rank {rank} {key}")


def _check(results) -> None:
    for rank, (code, output) in enumerate(results):
        assert code == 0, f"rank {rank} failed:\n{output[-4000:]}"


TWO_RANK_MATCHES = ["animatediff", "animatediff_uneven_guidance_parallel", "tuneavideo", "unet3d", "svd",
                    "latte", "free_noise", "text_to_video"]


@pytest.fixture(scope="module")
def two_ranks(sd_dir, tmp_path_factory):
    """One 2-rank run: AnimateDiff 16 frames (8 per rank); 7 frames (4 + 3) with guidance-parallel, one
    rank per branch of CFG; Tune-A-Video's UNet, 8 frames sparse-causal, DDIM inversion then guided
    sampling; a UNet3DConditionModel (temporal convolutions' halos), 8 frames; Stable Video Diffusion,
    5 frames (3 + 2: temporal ResNets' halos and pooled norms, temporal blocks, decode chunks 2 + 1) with
    its per-frame guidance; the pipelines of VIDEO_CASES: Latte 6 frames, AnimateDiff with FreeNoise
    windows across the shard boundary, TextToVideoSDPipeline 6 frames; a 1-frame video
    and a call whose prompt differs on rank 1 (both refused); then rank 1 raises inside a motion
    module in step 2."""
    out_dir = tmp_path_factory.mktemp("two_ranks")
    start = time.monotonic()
    results = launch(2, [*TWO_RANK_MATCHES, "too_many_ranks", "mismatched_prompts", "raise"],
                     sd_dir, out_dir, timeout=300)
    return results, out_dir, time.monotonic() - start


def test_two_ranks_match_one_process(sd_dir, two_ranks):
    results, out_dir, _ = two_ranks
    for name in TWO_RANK_MATCHES:
        assert all((out_dir / f"{name}.rank{rank}.pt").exists() for rank in range(2)), results[0][1][-4000:]
        assert_matches_one_process(sd_dir, out_dir, 2, name)
    for rank in range(2):  # 2 ranks for a 1-frame video: refused clearly on both
        assert (out_dir / f"too_many_ranks.rank{rank}.txt").read_text() == (
            "frame_parallel: 2 ranks share the frames of each video, more than its 1 frames; run on at most 1 ranks")
        # rank 1 asked for another prompt: both ranks refuse at the first denoiser call
        assert (out_dir / f"mismatched_prompts.rank{rank}.txt").read_text().startswith(
            "frame_parallel: every rank must call the pipeline with the same arguments; the denoiser inputs of "
            "rank(s) [1] differ from rank 0's")


def test_a_rank_that_raises_mid_step_ends_every_rank_with_an_error(two_ranks):
    (code0, out0), (code1, out1) = two_ranks[0]
    assert code1 != 0 and "rank 1 fails in the middle of step 2" in out1, out1[-3000:]
    # rank 0 was exchanging frames with rank 1 inside the same motion module: its collective fails
    # (gloo: the peer closed the connection) long before the launch's deadline
    assert code0 != 0 and ("Connection closed by peer" in out0 or "Timed out" in out0), out0[-3000:]
    assert not any(f.name.startswith("raise.") for f in two_ranks[1].iterdir())


@pytest.mark.slow
def test_four_ranks_match_one_process(sd_dir, tmp_path):
    # 14 frames on 4 ranks (4, 4, 3, 3), and on 2 guidance halves of 2 ranks (7 + 7 frames each);
    # Tune-A-Video on 2 halves (inversion: an odd batch, both halves compute it; sampling: one branch each);
    # UNet3D, 6 frames on 2 halves (3 + 3 frames: halos inside each half); SVD, 5 frames on 2 halves
    # (3 + 2 frames each; its 3 decode chunks on 4 ranks: the fourth decodes the first again)
    names = ["animatediff_14", "animatediff_14_guidance_parallel", "tuneavideo_guidance_parallel",
             "unet3d_guidance_parallel", "svd_guidance_parallel"]
    _check(launch(4, names, sd_dir, tmp_path, timeout=600))
    for name in names:
        assert_matches_one_process(sd_dir, tmp_path, 4, name)


@pytest.mark.slow
def test_animatediff_guidance_parallel_16_frames_and_uneven_shards(sd_dir, tmp_path):
    names = ["animatediff_guidance_parallel", "animatediff_uneven"]
    _check(launch(2, names, sd_dir, tmp_path, timeout=400))
    for name in names:
        assert_matches_one_process(sd_dir, tmp_path, 2, name)


@pytest.mark.slow
def test_whole_pipelines_guidance_parallel_on_four_ranks(sd_dir, tmp_path):
    # 2 guidance halves of 2 ranks: Latte 5 frames (3 + 2), FreeNoise 10 frames (5 + 5, windows across
    # the boundary), TextToVideoSD 6 frames (3 + 3)
    names = [name for name in VIDEO_CASES if name.endswith("guidance_parallel")]
    _check(launch(4, names, sd_dir, tmp_path, timeout=600))
    for name in names:
        assert_matches_one_process(sd_dir, tmp_path, 4, name)


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    yield
    dist.destroy_process_group()


def test_bad_settings_are_refused_naming_the_argument(sd_dir):
    pipe = animatediff_pipeline(sd_dir)
    with pytest.raises(ValueError, match="frame_parallel: torch.distributed is not initialised"):
        vidgen.patch(pipe, frame_parallel=True)
    with pytest.raises(ValueError, match="guidance_parallel: .*frame_parallel=True"):
        vidgen.patch(pipe, guidance_parallel=True)
    with pytest.raises(TypeError, match="frame_parallel: expected True or a torch.distributed.ProcessGroup"):
        _with_group(lambda: vidgen.patch(pipe, frame_parallel="yes"))
    with pytest.raises(ValueError, match="guidance_parallel: needs an even number of ranks, the group has 1"):
        _with_group(lambda: vidgen.patch(pipe, frame_parallel=True, guidance_parallel=True))
    with pytest.raises(ValueError, match="cuda_graph"):
        _with_group(lambda: vidgen.patch(pipe, frame_parallel=True, cuda_graph=True))
    with pytest.raises(ValueError, match="frame_parallel: needs every motion module on vidgen's forward"):
        _with_group(lambda: vidgen.patch(pipe, frame_parallel=True, temporal_attention=False))
    assert not vidgen.is_patched(pipe) and "forward" not in pipe.unet.__dict__


def _with_group(fn):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        return fn()
    finally:
        dist.destroy_process_group()


def test_one_rank_group_is_the_single_process_result_and_unpatch_restores(sd_dir, one_rank_group):
    pipe = animatediff_pipeline(sd_dir)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        expected, _ = sample(pipe, 3, 3.0)
        vidgen.patch(pipe, frame_parallel=True)
        report = str(vidgen.patch_report(pipe))
        assert "forward on this rank's frames (FrameParallel(1 ranks))" in report and "decode_latents" in report
        got, _ = sample(pipe, 3, 3.0)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        vidgen.unpatch(pipe)
        assert "forward" not in pipe.unet.__dict__ and "decode_latents" not in pipe.__dict__


def test_svd_unet_needs_vidgen_temporal_blocks_and_unpatch_restores(one_rank_group):
    from diffusers.models.resnet import TemporalResnetBlock

    from vidgen.integration.frame_parallel import ShardedTemporalResnet

    unet = svd_pipeline().unet
    with pytest.raises(ValueError, match="frame_parallel: needs every TransformerSpatioTemporalModel on vidgen's "
                                         "forward.*temporal_attention=False"):
        vidgen.patch(unet, frame_parallel=True, temporal_attention=False)
    assert not vidgen.is_patched(unet) and "forward" not in unet.__dict__
    vidgen.patch(unet, frame_parallel=True)
    resnets = [m for m in unet.modules() if isinstance(m, TemporalResnetBlock)]
    assert resnets and all(isinstance(m.__dict__.get("forward"), ShardedTemporalResnet) for m in resnets)
    report = str(vidgen.patch_report(unet))
    assert "forward on this rank's frames (FrameParallel(1 ranks))" in report and "one-frame halos" in report
    vidgen.unpatch(unet)
    assert "forward" not in unet.__dict__ and not any("forward" in m.__dict__ for m in resnets)


# ----------------------------------------------------------------------------------------------
# vidgen sample --frame-parallel: refused by flag (exit 2) before any model loads
# ----------------------------------------------------------------------------------------------
ANIMATEDIFF = ["sample", "--arch", "tiny", "--motion-adapter", "adapter", "--frames", "4"]
CLI_CASES = [
    ({}, ANIMATEDIFF + ["--frame-parallel"], "--frame-parallel: needs a launcher that starts one process per rank"),
    ({"WORLD_SIZE": "8", "RANK": "0"}, ANIMATEDIFF + ["--frame-parallel"],
     "--frame-parallel: 8 processes share the 4 frames of --frames; at most one process per frame"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, ANIMATEDIFF + ["--frame-parallel"],
     "--frame-parallel: the launcher set RANK=5 outside WORLD_SIZE=2"),
    ({"WORLD_SIZE": "3", "RANK": "0"}, ANIMATEDIFF + ["--frame-parallel", "--guidance-parallel"],
     "--guidance-parallel: needs an even number of processes, WORLD_SIZE=3"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ANIMATEDIFF + ["--guidance-parallel"],
     "--guidance-parallel: splits the processes of --frame-parallel; pass --frame-parallel too"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ANIMATEDIFF + ["--frame-parallel", "--compare"],
     "--compare: not with --frame-parallel"),
]


@pytest.mark.parametrize("env,argv,expected", CLI_CASES)
def test_cli_frame_parallel_bad_input_is_refused_by_flag_before_any_model_loads(env, argv, expected, tmp_path,
                                                                                 monkeypatch, capsys):
    from diffusers import AnimateDiffPipeline

    from vidgen import cli

    def forbidden(*args, **kwargs):
        pytest.fail("a model was loaded before the bad input was refused")

    monkeypatch.setattr(AnimateDiffPipeline, "from_pretrained", forbidden)
    monkeypatch.setattr(default_model, "ensure", forbidden)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "config.json").write_text("{}")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not dist.is_initialized()


def assert_cli_two_ranks_write_the_single_process_video(common: list[str], tmp_path) -> None:
    """``python common... --frame-parallel`` under torchrun on 2 ranks writes the video one process writes."""
    import numpy as np

    from vidgen.video_io import read_video

    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIDGEN_BACKEND": "torch"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    parallel = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-port", str(_free_port()), *common, "--out", str(tmp_path / "two"),
                               "--frame-parallel"], env=env, capture_output=True, text=True, timeout=400)
    assert parallel.returncode == 0, parallel.stdout[-3000:] + parallel.stderr[-3000:]
    assert parallel.stdout.count("wrote ") == 1  # rank 0 writes the video
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                            text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    two, one = (np.asarray(read_video(str(tmp_path / name))).astype(int) for name in ("two", "one"))
    assert two.shape == one.shape and np.abs(two - one).max() <= 1  # 8-bit rounding of equal fp32 frames


@pytest.mark.slow
def test_cli_frame_parallel_under_torchrun_writes_the_single_process_video(sd_dir, tmp_path):
    from diffusers import MotionAdapter

    MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                  motion_norm_num_groups=8, motion_max_seq_length=32).save_pretrained(tmp_path / "adapter")
    common = ["-m", "vidgen.cli", "sample", "--model", sd_dir, "--motion-adapter", str(tmp_path / "adapter"),
              "--frames", "4", "--steps", "2", "--height", "64", "--width", "64", "--device", "cpu", "--quiet"]
    assert_cli_two_ranks_write_the_single_process_video(common, tmp_path)


# ----------------------------------------------------------------------------------------------
# vidgen sample --frame-parallel with a Stable Video Diffusion folder (--image)
# ----------------------------------------------------------------------------------------------
def _svd_cli_inputs(folder, image) -> None:
    """A Stable Video Diffusion folder's layout (configs only) and a 16-pixel image: enough for the checks."""
    import json

    import imageio.v3 as iio

    from vidgen.commands import _args

    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": _args.SVD_PIPELINE}))
    for sub, config in _args.SVD_CONFIGS.items():
        (folder / sub).mkdir()
        (folder / sub / config).write_text("{}")
    iio.imwrite(image, (torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())


@pytest.mark.parametrize("env,extra,expected", [
    ({}, [], "--frame-parallel: needs a launcher that starts one process per rank"),
    ({"WORLD_SIZE": "4", "RANK": "0"}, [], "--frame-parallel: 4 processes share the 3 frames of --frames"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ["--compare"], "--compare: not with --frame-parallel"),
])
def test_cli_svd_frame_parallel_bad_input_is_refused_by_flag_before_any_model_loads(env, extra, expected, tmp_path,
                                                                                     monkeypatch, capsys):
    from diffusers import StableVideoDiffusionPipeline

    from vidgen import cli

    monkeypatch.setattr(StableVideoDiffusionPipeline, "from_pretrained",
                        lambda *a, **k: pytest.fail("a model was loaded before the bad input was refused"))
    _svd_cli_inputs(tmp_path / "svd", tmp_path / "frame.png")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["sample", "--model", str(tmp_path / "svd"), "--image", str(tmp_path / "frame.png"), "--frames", "3",
            "--frame-parallel", *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not dist.is_initialized()


@pytest.mark.slow
def test_cli_svd_frame_parallel_under_torchrun_writes_the_single_process_video(tmp_path):
    import imageio.v3 as iio

    from vidgen.default_model import svd_pipeline

    svd_pipeline("tiny").save_pretrained(tmp_path / "svd")
    iio.imwrite(tmp_path / "frame.png", (torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0)) * 255)
                .byte().numpy())
    common = ["-m", "vidgen.cli", "sample", "--model", str(tmp_path / "svd"), "--image", str(tmp_path / "frame.png"),
              "--frames", "3", "--steps", "2", "--height", "16", "--width", "16", "--device", "cpu", "--quiet"]
    assert_cli_two_ranks_write_the_single_process_video(common, tmp_path)


# ----------------------------------------------------------------------------------------------
# Latte: what its sharded forward cannot serve is refused, never computed on one rank's frames
# ----------------------------------------------------------------------------------------------
def test_latte_frame_parallel_refuses_what_it_cannot_serve(one_rank_group):
    from test_latte import model_inputs, tiny_latte

    with pytest.raises(ValueError, match="frame_parallel: needs Latte's forward on vidgen's, .*temporal_attention="):
        vidgen.patch(tiny_latte(3), frame_parallel=True, temporal_attention=False)
    with pytest.raises(ValueError, match="frame_parallel: needs Latte's forward on vidgen's, .*head dim 288"):
        vidgen.patch(tiny_latte(3, heads=1, head_dim=288), frame_parallel=True)
    model = vidgen.patch(tiny_latte(3), frame_parallel=True)
    with torch.no_grad(), vidgen.ops.use_backend("torch"):
        whole = model(*model_inputs(3)).sample  # one rank: the single-process result
        vidgen.unpatch(model)
        torch.testing.assert_close(whole, model(*model_inputs(3)).sample, rtol=1e-5, atol=1e-5)
        vidgen.patch(model, frame_parallel=True)
        with pytest.raises(ValueError, match="frame_parallel: this call of LatteTransformer3DModel needs diffusers' "
                                             "own forward"):
            model(*model_inputs(3), enable_temporal_attentions=False)
        with pytest.raises(ValueError, match="a frame count its temporal position table does not take"):
            model(*model_inputs(2))  # the table has 3 rows


# ----------------------------------------------------------------------------------------------
# vidgen sample --frame-parallel with a Tune-A-Video / LAMP video model (no --motion-adapter)
# ----------------------------------------------------------------------------------------------
def test_cli_frame_parallel_counts_the_frames_of_latents_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from vidgen import cli
    from vidgen.commands.sample import save_latents

    def forbidden(*args, **kwargs):
        pytest.fail("a model was loaded before the bad input was refused")

    monkeypatch.setattr(default_model, "ensure", forbidden)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "0")
    path = save_latents(str(tmp_path / "x_t.pt"), torch.zeros(1, 4, 4, 8, 8))
    assert cli.main(["sample", "--arch", "tiny", "--latents", path, "--frame-parallel"]) == 2
    err = capsys.readouterr().err
    assert "--frame-parallel: 8 processes share the 4 frames of --latents" in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_frame_parallel_video_model_under_torchrun_writes_the_single_process_video(sd_dir, tmp_path):
    # a saved Tune-A-Video model (sparse-causal, temporal attention made to matter; an SD folder inflated
    # on load has zero temporal output weights, so the exchange would barely show)
    from vidgen.train.loop import save_video_model

    save_video_model(tuneavideo_unet(sd_dir).unet, sd_dir, str(tmp_path / "tuned"), prediction_type="epsilon")
    common = ["-m", "vidgen.cli", "sample", "--model", str(tmp_path / "tuned"), "--prompt", "a cat", "--frames", "4",
              "--steps", "2", "--height", "64", "--width", "64", "--device", "cpu", "--quiet"]
    assert_cli_two_ranks_write_the_single_process_video(common, tmp_path)
