"""Copy-free motion modules (vidgen.integration.motion) against diffusers' own forward: outputs, gradients, patching."""
import copy

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel, TransformerTemporalModelOutput
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch.utils._python_dispatch import TorchDispatchMode

from vidgen.integration.motion import FusedMotionForward, patch_motion_module, unpatch_motion_module
from vidgen.integration.temporal import temporal_self_attention

CHANNELS, HEADS, HEAD_DIM, GROUPS = 80, 2, 40, 8


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its init (proj_out included, which AnimateDiff zero-inits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def animatediff_module(num_layers: int = 1) -> AnimateDiffTransformer3D:
    torch.manual_seed(0)
    return randomize(AnimateDiffTransformer3D(
        num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=CHANNELS, norm_num_groups=GROUPS,
        num_layers=num_layers, double_self_attention=True, positional_embeddings="sinusoidal",
        num_positional_embeddings=32, activation_fn="geglu"), seed=1)


def video_input(batch: int, frames: int, height: int, width: int, device, dtype=torch.float32, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch * frames, CHANNELS, height, width, generator=g) * 1.5 + 0.3
    return x.to(device, dtype).requires_grad_()


def forward_and_grads(module, x, frames, grad):
    module.zero_grad()
    x.grad = None
    out = module(x, num_frames=frames)
    out = out.sample if isinstance(out, TransformerTemporalModelOutput) else out
    out.backward(grad)
    return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in module.named_parameters()}


def assert_same_function(module, x, frames, atol=2e-5, rtol=2e-5):
    """Patched forward and all gradients (input and every parameter) equal the original's."""
    g = torch.Generator().manual_seed(3)
    grad = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    want = forward_and_grads(module, x, frames, grad)
    patch_motion_module(module)
    got = forward_and_grads(module, x, frames, grad)
    unpatch_motion_module(module)
    torch.testing.assert_close(got[0], want[0], atol=atol, rtol=rtol, msg=lambda m: f"output: {m}")
    torch.testing.assert_close(got[1], want[1], atol=atol, rtol=rtol, msg=lambda m: f"grad input: {m}")
    for name, g_want in want[2].items():
        torch.testing.assert_close(got[2][name], g_want, atol=atol * 10, rtol=rtol * 10,
                                   msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("batch,frames,height,width", [(2, 7, 3, 5), (1, 16, 3, 3)])
def test_animatediff_transformer3d_forward_and_gradients(batch, frames, height, width, device):
    module = animatediff_module().to(device)
    assert module.proj_out.weight.abs().sum() > 0
    assert_same_function(module, video_input(batch, frames, height, width, device), frames)


def test_two_layers_and_channels_last_input(device):
    module = animatediff_module(num_layers=2).to(device)
    x = video_input(1, 5, 3, 3, device).detach().to(memory_format=torch.channels_last).requires_grad_()
    assert_same_function(module, x, 5)


def test_transformer_temporal_model_forward_gradients_and_return_types(device):
    torch.manual_seed(0)
    module = randomize(TransformerTemporalModel(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
                                                in_channels=CHANNELS, norm_num_groups=GROUPS), seed=4).to(device)
    x = video_input(1, 6, 3, 3, device)
    assert_same_function(module, x, 6)
    patch_motion_module(module)
    assert isinstance(module(x, num_frames=6), TransformerTemporalModelOutput)
    assert isinstance(module(x, num_frames=6, return_dict=False), tuple)


def test_half_precision_error_is_no_worse_than_diffusers(device):
    """fp16 patched vs diffusers fp16, both against diffusers in float64."""
    module = animatediff_module()
    x = video_input(1, 8, 3, 3, "cpu").detach()
    want = module.double()(x.double(), num_frames=8)
    module_half = copy.deepcopy(module).to(device, torch.float16)
    diffusers_error = (module_half(x.to(device, torch.float16), num_frames=8).double().cpu() - want).abs().max()
    patch_motion_module(module_half)
    ours_error = (module_half(x.to(device, torch.float16), num_frames=8).double().cpu() - want).abs().max()
    assert ours_error <= 2 * diffusers_error + 1e-3, (ours_error, diffusers_error)


class CopyCounter(TorchDispatchMode):
    """Counts aten ops that materialise a copy of a tensor (a custom op's insides are not seen)."""

    COPIES = {"aten.clone.default", "aten.copy_.default", "aten._to_copy.default"}

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.COPIES:
            self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


def test_patched_forward_makes_no_permuted_copies(device):
    module = animatediff_module().to(device)
    x = video_input(1, 8, 4, 4, device).detach()
    with torch.no_grad(), CopyCounter() as original:
        module(x, num_frames=8)
    patch_motion_module(module)
    with torch.no_grad(), CopyCounter() as fused:
        module(x, num_frames=8)
    assert len(original.copies) >= 2  # diffusers: (B*h*w, F, C) in and back out, at least
    assert fused.copies == []


def test_patch_is_idempotent_instance_level_and_reversible(device):
    module = animatediff_module().to(device)
    other = animatediff_module().to(device)
    keys = list(module.state_dict())
    patch_motion_module(module)
    fused = module.forward
    assert isinstance(fused, FusedMotionForward)
    patch_motion_module(module)
    assert module.forward is fused
    assert not isinstance(other.forward, FusedMotionForward)  # the class is untouched
    assert list(module.state_dict()) == keys
    unpatch_motion_module(module)
    assert "forward" not in module.__dict__
    assert module.forward.__func__ is AnimateDiffTransformer3D.forward


def test_patch_walks_a_model_to_its_motion_modules(device):
    import vidgen

    model = torch.nn.Sequential(animatediff_module(), torch.nn.Linear(2, 2), animatediff_module())
    vidgen.patch(model, frame_attention=False, guidance=False)
    assert sum(entry.what.endswith("(motion module)") for entry in vidgen.patch_report(model).replaced) == 2
    assert isinstance(model[2].forward, FusedMotionForward)


def test_custom_attention_processor_falls_back_to_the_original_forward(device):
    calls = []

    class CountingProcessor(AttnProcessor2_0):
        def __call__(self, *args, **kwargs):
            calls.append(1)
            return super().__call__(*args, **kwargs)

    module = animatediff_module().to(device)
    module.transformer_blocks[0].attn1.set_processor(CountingProcessor())
    x = video_input(1, 4, 2, 2, device).detach()
    want = module(x, num_frames=4)
    patch_motion_module(module)
    calls.clear()
    torch.testing.assert_close(module(x, num_frames=4), want)
    assert calls  # the custom processor ran: the fused path stood aside


def test_unsupported_structure_is_refused():
    with pytest.raises(TypeError, match="AnimateDiffTransformer3D"):
        patch_motion_module(torch.nn.Linear(2, 2))


def test_temporal_self_attention_matches_attention_on_rearranged_tokens(device):
    """Tune-A-Video's attn_temp: rearrange (b f) n c -> (b n) f c, attention, rearrange back."""
    torch.manual_seed(5)
    attn = randomize(Attention(query_dim=CHANNELS, heads=HEADS, dim_head=HEAD_DIM, bias=True), seed=6).to(device)
    B, F, N = 2, 9, 5
    x = torch.randn(B * F, N, CHANNELS).to(device).requires_grad_()
    by_frames = x.view(B, F, N, CHANNELS).transpose(1, 2).reshape(B * N, F, CHANNELS)
    want = attn(by_frames).view(B, N, F, CHANNELS).transpose(1, 2).reshape(B * F, N, CHANNELS)
    grad = torch.randn_like(want)
    (want_grad,) = torch.autograd.grad(want, x, grad)
    got = temporal_self_attention(attn, x, F)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got_grad, want_grad, atol=2e-5, rtol=2e-5)


def test_temporal_self_attention_rejects_bad_frame_count(device):
    attn = Attention(query_dim=CHANNELS, heads=HEADS, dim_head=HEAD_DIM).to(device)
    with pytest.raises(ValueError, match="num_frames=4"):
        temporal_self_attention(attn, torch.randn(6, 3, CHANNELS, device=device), 4)


@pytest.mark.parametrize("processor_name,videos", [("PAGCFGIdentitySelfAttnProcessor2_0", 3),
                                                   ("PAGIdentitySelfAttnProcessor2_0", 2)])
def test_pag_identity_processors_are_computed_by_the_fused_forward(device, processor_name, videos):
    # Perturbed-attention guidance: diffusers' processor attends normally over the first chunks of
    # the batch and gives the last chunk (the perturbed videos) identity attention.
    import warnings

    from diffusers.models import attention_processor

    import vidgen

    module = animatediff_module().to(device)
    module.transformer_blocks[0].attn1.set_processor(getattr(attention_processor, processor_name)())
    x = video_input(videos, 3, 2, 3, device)
    with warnings.catch_warnings():
        warnings.simplefilter("error", vidgen.FallbackWarning)  # the fused path, not a fallback
        assert_same_function(module, x, 3)


def test_pag_with_a_batch_its_chunks_cut_through_runs_diffusers_forward(device):
    from diffusers.models.attention_processor import PAGCFGIdentitySelfAttnProcessor2_0

    import vidgen
    from vidgen.ops._fallback import forget_warnings

    module = animatediff_module().to(device)
    module.transformer_blocks[0].attn1.set_processor(PAGCFGIdentitySelfAttnProcessor2_0())
    x = video_input(2, 3, 2, 2, device)  # 2 videos in 3 chunks: diffusers splits by rows, not videos
    with torch.no_grad():
        want = module(x, num_frames=3)
        patch_motion_module(module)
        forget_warnings()
        with pytest.warns(vidgen.FallbackWarning, match="unequal parts"):
            got = module(x, num_frames=3)
    assert torch.equal(got, want)


def test_identity_videos_argument_is_checked(device):
    attn = animatediff_module().transformer_blocks[0].attn1.to(device)
    hidden = torch.randn(6, 4, CHANNELS, device=device)
    with pytest.raises(ValueError, match="identity_videos"):
        temporal_self_attention(attn, hidden, 3, identity_videos=3)
    with torch.no_grad():  # every video perturbed: the output is the value projection alone
        out = temporal_self_attention(attn, hidden, 3, identity_videos=2)
        torch.testing.assert_close(out, attn.to_out[0](attn.to_v(hidden)))
