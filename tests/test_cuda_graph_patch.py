"""vidgen.patch(..., cuda_graph=True): the denoiser's forward replayed from captured graphs.

The capture itself needs CUDA. Here a recorder stands in for ``torch.cuda.CUDAGraph`` with the
same contract (capture reads the static inputs and writes the static outputs; replay recomputes
from the static inputs into the same output tensors), so the bookkeeping around it is checked on
the CPU: inputs copied in on every call, outputs copied out, one capture per call signature,
eager fallbacks said once, unpatch exact. On a GPU run the real graphs are used.
"""
import pytest
import torch
import torch.utils._pytree as pytree
from diffusers import UNetMotionModel

import vidgen
from vidgen.integration import graphs
from vidgen.ops._fallback import forget_warnings

from test_patching import _animatediff_pipeline, motion_unet_dir, run, sample_latents, sd_dir, video_inputs  # noqa: F401


class Recorder(graphs.CudaGraphs):
    """CPU stand-in for CUDA graphs: 'capture' remembers the function, 'replay' reruns it on the
    static inputs and writes the results into the captured output tensors."""

    def __init__(self):
        self.captures = 0
        self.replays = 0

    def unsupported_reason(self, tensors):
        return None if tensors else "no tensors"

    def pool(self):
        return object()

    def warm_up(self, run, device):
        run()

    def capture(self, run, pool):
        self.captures += 1
        outputs = run()

        def replay():
            self.replays += 1
            for dst, src in zip(pytree.tree_leaves(outputs), pytree.tree_leaves(run())):
                dst.copy_(src)

        return replay, outputs


@pytest.fixture
def recorder(monkeypatch, device):
    if device.type == "cuda":
        return None  # real graphs
    recorder = Recorder()
    monkeypatch.setattr(graphs, "CudaGraphs", lambda: recorder)
    return recorder


def test_graphed_unet_matches_eager_and_unpatch_restores(motion_unet_dir, recorder, device):
    unet = UNetMotionModel.from_pretrained(motion_unet_dir).to(device)
    inputs = [t.to(device) for t in video_inputs(text_per_frame=True)]
    before = run(unet, *inputs)
    vidgen.patch(unet, cuda_graph=True)
    assert isinstance(unet.__dict__["forward"], graphs.GraphedForward)
    assert any("CUDA graphs" in e.what for e in vidgen.patch_report(unet).replaced)
    first = run(unet, *inputs)
    other = [t.to(device) for t in video_inputs(seed=11, text_per_frame=True)]
    second = run(unet, *other)       # same signature, new values: copied into the static inputs
    again = run(unet, *inputs)
    torch.testing.assert_close(first, before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert not torch.allclose(second, first)
    torch.testing.assert_close(second, run_unpatched(motion_unet_dir, device, other), rtol=1e-4, atol=1e-4)
    if recorder is not None:
        assert recorder.captures == 1 and recorder.replays == 3
    first.add_(1)  # the caller owns its output: the next call is not affected
    torch.testing.assert_close(run(unet, *inputs), again, rtol=0, atol=0)
    vidgen.unpatch(unet)
    assert "forward" not in unet.__dict__ and not vidgen.is_patched(unet)
    assert torch.equal(run(unet, *inputs), before)


def run_unpatched(path, device, inputs):
    return run(UNetMotionModel.from_pretrained(path).to(device), *inputs)


def test_a_new_signature_is_captured_once_more(motion_unet_dir, recorder, device):
    unet = vidgen.patch(UNetMotionModel.from_pretrained(motion_unet_dir).to(device), cuda_graph=True)
    for frames in (3, 2, 3, 2):
        inputs = [t.to(device) for t in video_inputs(frames=frames, text_per_frame=True)]
        assert run(unet, *inputs).shape[2] == frames
    assert len(unet.forward.captured) == 2
    if recorder is not None:
        assert recorder.captures == 2 and recorder.replays == 4


def test_pipeline_with_graphs_gives_the_same_latents(sd_dir, recorder, device):
    pipe = _animatediff_pipeline(sd_dir).to(device)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        eager = sample_latents(pipe)
        vidgen.patch(pipe, cuda_graph=True)   # other options: the first patch is undone, then this one
        graphed = sample_latents(pipe)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=0)
    if recorder is not None:
        assert recorder.captures == 1 and recorder.replays == 2  # CFG batch, two steps
    assert "cuda_graph=True" in str(vidgen.patch_report(pipe))
    vidgen.unpatch(pipe)
    assert "forward" not in pipe.unet.__dict__


def test_calls_a_graph_cannot_serve_run_eagerly_and_say_why_once(motion_unet_dir, recorder, device):
    forget_warnings()
    unet = vidgen.patch(UNetMotionModel.from_pretrained(motion_unet_dir).to(device), cuda_graph=True)
    inputs = [t.to(device) for t in video_inputs(text_per_frame=True)]
    expected = run(UNetMotionModel.from_pretrained(motion_unet_dir).to(device), *inputs)
    with pytest.warns(vidgen.FallbackWarning, match="autograd is recording"):
        out = unet(*inputs).sample          # grad enabled, parameters require grad
    torch.testing.assert_close(out.detach(), expected, rtol=1e-4, atol=1e-4)
    unet.train()  # diffusers' pipelines leave their UNet so: it counts only where dropout would draw
    dropout = next(m for m in unet.modules() if isinstance(m, torch.nn.Dropout))
    dropout.p = 0.1
    with pytest.warns(vidgen.FallbackWarning, match="training mode with active dropout"):
        run(unet, *inputs)
    unet.eval()
    assert not unet.forward.captured
    with torch.no_grad():
        unet(*inputs, return_dict=False)
    assert len(unet.forward.captured) == 1


def test_plain_cuda_graphs_on_cpu_tensors_stay_eager(motion_unet_dir):
    forget_warnings()
    unet = vidgen.patch(UNetMotionModel.from_pretrained(motion_unet_dir), cuda_graph=True)
    inputs = video_inputs(text_per_frame=True)
    with pytest.warns(vidgen.FallbackWarning, match="not CUDA tensors"):
        out = run(unet, *inputs)
    torch.testing.assert_close(out, run_unpatched(motion_unet_dir, torch.device("cpu"), inputs), rtol=1e-4, atol=1e-4)


def test_a_failed_capture_leaves_that_signature_eager(motion_unet_dir, recorder, device, monkeypatch):
    if recorder is None:
        pytest.skip("forces a capture failure through the CPU recorder")
    forget_warnings()
    monkeypatch.setattr(Recorder, "capture", lambda self, run, pool: (_ for _ in ()).throw(
        RuntimeError("operation not permitted when stream is capturing")))
    unet = vidgen.patch(UNetMotionModel.from_pretrained(motion_unet_dir), cuda_graph=True)
    inputs = video_inputs(text_per_frame=True)
    with pytest.warns(vidgen.FallbackWarning, match="capture failed .*not permitted"):
        out = run(unet, *inputs)
    torch.testing.assert_close(out, run_unpatched(motion_unet_dir, device, inputs), rtol=1e-4, atol=1e-4)
    assert list(unet.forward.captured.values()) == [None]
    run(unet, *inputs)  # eager again, silently


def test_stable_video_diffusion_unet_is_graphed_too(recorder, device):
    """Stable Video Diffusion's UNet is a denoiser like the others: cuda_graph=True replays its forward."""
    from test_svd import tiny_svd_unet, unet_inputs

    unet = tiny_svd_unet().eval().to(device)
    inputs = [t.to(device) for t in unet_inputs()]
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(unet)
        expected = run(unet, *inputs)
        vidgen.patch(unet, cuda_graph=True)
        assert isinstance(unet.__dict__["forward"], graphs.GraphedForward)
        first, again = run(unet, *inputs), run(unet, *inputs)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    if recorder is not None:
        assert recorder.captures == 1 and recorder.replays == 2
    vidgen.unpatch(unet)
    assert "forward" not in unet.__dict__
