"""vidgen.patch(..., feed_forward=True): every diffusers GEGLU of the denoiser runs vidgen's fused
projection + GELU kernel (values equal to diffusers' module), reported, restored by unpatch; calls
and modules the kernel cannot serve stay on diffusers' forward and say why."""
import pytest
import torch
from diffusers import UNetMotionModel
from diffusers.models.activations import GEGLU
from torch import nn

import vidgen
from test_patching import run, tiny_adapter, tiny_unet2d, video_inputs
from vidgen.integration.feed_forward import GegluForward


def motion_unet():
    return UNetMotionModel.from_unet2d(tiny_unet2d(), tiny_adapter()).eval()


def gegl_us(model):
    return [m for m in model.modules() if isinstance(m, GEGLU)]


def test_tiny_animatediff_unet_on_the_fused_feed_forward_equals_diffusers_and_unpatch_restores():
    unet = motion_unet()
    inputs = video_inputs(size=4, text_per_frame=True)
    expected = run(unet, *inputs)
    modules = gegl_us(unet)
    assert modules  # spatial transformer blocks and motion modules both end in a GEGLU feed-forward
    with vidgen.ops.use_backend("triton"):  # the kernel (the interpreter here)
        vidgen.patch(unet, feed_forward=True)
        assert all(isinstance(m.__dict__.get("forward"), GegluForward) for m in modules)
        torch.testing.assert_close(run(unet, *inputs), expected, rtol=2e-4, atol=2e-4)
    report = vidgen.patch_report(unet)
    replaced = [e for e in report.replaced if e.what.startswith("GEGLU feed-forward")]
    assert len(replaced) == len(modules) and report.options["feed_forward"] is True
    vidgen.unpatch(unet)
    assert not any("forward" in m.__dict__ for m in modules)
    torch.testing.assert_close(run(unet, *inputs), expected, rtol=0, atol=0)


def test_feed_forward_is_off_by_default():
    unet = vidgen.patch(motion_unet())
    assert not any("forward" in m.__dict__ for m in gegl_us(unet))
    assert "feed_forward" not in vidgen.patch_report(unet).options


def test_a_lora_projection_is_left_to_diffusers_and_reported():
    class LoraLinear(nn.Linear):  # stands in for peft's wrapped layer: not a plain nn.Linear
        pass

    unet = motion_unet()
    wrapped = gegl_us(unet)[0]
    old = wrapped.proj
    wrapped.proj = LoraLinear(old.in_features, old.out_features)
    vidgen.patch(unet, feed_forward=True)
    assert "forward" not in wrapped.__dict__
    (kept,) = [e for e in vidgen.patch_report(unet).kept if e.what == "GEGLU feed-forward"]
    assert "LoraLinear" in kept.why and "not a plain nn.Linear" in kept.why


def test_a_call_the_kernel_cannot_serve_runs_diffusers_forward_and_says_why():
    from vidgen.integration.feed_forward import patch_geglu, unpatch_geglu

    torch.manual_seed(0)
    module = GEGLU(6, 5)
    x = torch.randn(2, 3, 6)
    patch_geglu(module)  # what patch(feed_forward=True) does to each GEGLU of a denoiser
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(vidgen.FallbackWarning, match="autocast is on"):
            got = module(x)
        expected = type(module).forward(module, x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="module: expected diffusers' GEGLU, got Linear"):
        patch_geglu(nn.Linear(2, 2))
    unpatch_geglu(module)
    assert "forward" not in module.__dict__
