"""FrameAttnProcessor against diffusers' processors and Tune-A-Video's formulation (fp32, tight).

Tiny ``diffusers.models.attention_processor.Attention`` modules built in code; the op runs the
Triton kernels through the interpreter (conftest).
"""
import pytest
import torch
import torch.nn.functional as F_
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
    CrossFrameAttnProcessor2_0,
)

from vidgen.integration.processors import FrameAttnProcessor

VIDEOS, FRAMES, TOKENS, HEADS, HEAD_DIM = 2, 3, 13, 2, 40
CHANNELS = HEADS * HEAD_DIM
TOL = dict(rtol=1e-5, atol=2e-5)


def _module(device, heads=HEADS, head_dim=HEAD_DIM, **kwargs) -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=heads * head_dim, heads=heads, dim_head=head_dim, bias=True, **kwargs)
    for p in attn.parameters():  # no zero or identity weights anywhere
        torch.nn.init.normal_(p, std=0.2)
    return attn.to(device).eval()


def _hidden(device, frames=FRAMES, tokens=TOKENS):
    return torch.randn(VIDEOS * frames, tokens, CHANNELS, generator=torch.Generator().manual_seed(1)).to(device)


def _tune_a_video_sparse_causal(attn, hidden, frames):
    """Tune-A-Video's SparseCausalAttention: K/V of frames [0] * F and prev(f), concatenated, dense SDPA."""
    q, k, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    prev = [max(f - 1, 0) for f in range(frames)]
    k = k.unflatten(0, (-1, frames))
    v = v.unflatten(0, (-1, frames))
    k = torch.cat([k[:, [0] * frames], k[:, prev]], dim=2).flatten(0, 1)
    v = torch.cat([v[:, [0] * frames], v[:, prev]], dim=2).flatten(0, 1)
    heads = lambda t: t.unflatten(-1, (HEADS, HEAD_DIM)).transpose(1, 2)  # noqa: E731
    out = F_.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).flatten(2)
    return attn.to_out[1](attn.to_out[0](out))


@torch.no_grad()
def test_first_frame_matches_diffusers_cross_frame_processor(device):
    attn, hidden = _module(device), _hidden(device)
    attn.set_processor(CrossFrameAttnProcessor2_0(batch_size=VIDEOS))
    expected = attn(hidden)
    attn.set_processor(FrameAttnProcessor("first_frame", num_frames=FRAMES))
    torch.testing.assert_close(attn(hidden), expected, **TOL)


@torch.no_grad()
def test_sparse_causal_matches_tune_a_video_and_takes_num_frames_per_call(device):
    attn, hidden = _module(device), _hidden(device, frames=5)
    expected = _tune_a_video_sparse_causal(attn, hidden, 5)
    attn.set_processor(FrameAttnProcessor("sparse_causal"))
    # num_frames through cross_attention_kwargs, as a UNet call forwards them
    torch.testing.assert_close(attn(hidden, num_frames=5), expected, **TOL)


@torch.no_grad()
def test_full_mode_with_module_norms_residual_and_rescale_matches_attn_processor(device):
    """One frame of full attention is ordinary self-attention: compare with AttnProcessor2_0
    on a module that uses group_norm, residual_connection and rescale_output_factor, 4-D input."""
    attn = _module(device, norm_num_groups=4, residual_connection=True, rescale_output_factor=1.7)
    hidden = torch.randn(VIDEOS, CHANNELS, 3, 5, generator=torch.Generator().manual_seed(3)).to(device)
    attn.set_processor(AttnProcessor2_0())
    expected = attn(hidden)
    attn.set_processor(FrameAttnProcessor("full", num_frames=1))
    torch.testing.assert_close(attn(hidden), expected, **TOL)


@torch.no_grad()
def test_spatial_norm_and_qk_norm_are_honoured(device):
    attn = _module(device, heads=2, head_dim=32, spatial_norm_dim=6, qk_norm="layer_norm")  # GroupNorm(32, C)
    hidden = torch.randn(VIDEOS, 64, 2, 3, generator=torch.Generator().manual_seed(4)).to(device)
    temb = torch.randn(VIDEOS, 6, 2, 3, generator=torch.Generator().manual_seed(5)).to(device)
    attn.set_processor(AttnProcessor2_0())
    expected = attn(hidden, temb=temb)
    attn.set_processor(FrameAttnProcessor("full", num_frames=1))
    torch.testing.assert_close(attn(hidden, temb=temb), expected, **TOL)


@torch.no_grad()
def test_key_frame_table_mode(device):
    attn, hidden = _module(device), _hidden(device)
    table = [[2], [0, 2], [1, 1]]
    attn.set_processor(FrameAttnProcessor(table))
    got = attn(hidden)
    # the same table through full attention restricted by hand: frame f over the listed frames only
    q, k, v = (p(hidden).unflatten(0, (VIDEOS, FRAMES)) for p in (attn.to_q, attn.to_k, attn.to_v))
    outs = []
    for f, row in enumerate(table):
        frames = sorted(set(row))
        heads = lambda t: t.unflatten(-1, (HEADS, HEAD_DIM)).transpose(1, 2)  # noqa: E731
        keys, values = k[:, frames].flatten(1, 2), v[:, frames].flatten(1, 2)
        outs.append(F_.scaled_dot_product_attention(heads(q[:, f]), heads(keys), heads(values)).transpose(1, 2))
    expected = attn.to_out[0](torch.stack(outs, 1).flatten(0, 1).flatten(2))
    torch.testing.assert_close(got, expected, **TOL)


def test_refusals(device):
    attn, hidden = _module(device), _hidden(device)
    attn.set_processor(FrameAttnProcessor("sparse_causal", num_frames=FRAMES))
    with pytest.raises(ValueError, match="self-attention"):
        attn(hidden, encoder_hidden_states=hidden)
    with pytest.raises(ValueError, match="does not divide"):
        attn(hidden, num_frames=4)
    attn.set_processor(FrameAttnProcessor("first_frame"))
    with pytest.raises(ValueError, match="needs the frame count"):
        attn(hidden)
    with pytest.raises(ValueError, match="mode"):
        FrameAttnProcessor("causal")
    with pytest.raises(ValueError, match="does not match"):
        FrameAttnProcessor([[0], [0]], num_frames=3)


@torch.no_grad()
@pytest.mark.parametrize("head_dim", [1, 4])
def test_head_dims_below_the_kernels_run_in_pytorch_and_say_so_once(device, head_dim):
    # D < 8 is outside the frame-attention kernels' range: same attention in eager PyTorch.
    import vidgen
    from vidgen.ops._fallback import forget_warnings

    attn = _module(device, heads=3, head_dim=head_dim)
    hidden = torch.randn(VIDEOS * FRAMES, TOKENS, 3 * head_dim, generator=torch.Generator().manual_seed(1)).to(device)
    attn.set_processor(CrossFrameAttnProcessor2_0(batch_size=VIDEOS))
    expected = attn(hidden)
    attn.set_processor(FrameAttnProcessor("first_frame", num_frames=FRAMES))
    forget_warnings()
    with pytest.warns(vidgen.FallbackWarning, match=f"head dim {head_dim} is outside") as caught:
        first, second = attn(hidden), attn(hidden)
    assert sum(issubclass(w.category, vidgen.FallbackWarning) for w in caught) == 1
    torch.testing.assert_close(first, expected, **TOL)
    assert torch.equal(second, first)


def test_temporal_attention_beyond_the_kernels_head_dim_runs_in_pytorch(device):
    import vidgen
    from vidgen.ops._fallback import forget_warnings
    from vidgen.integration.processors import ReferenceTemporalAttnProcessor
    from vidgen.integration.temporal import temporal_self_attention

    attn = _module(device, heads=1, head_dim=264)  # the temporal kernels serve D <= 256
    hidden = torch.randn(VIDEOS * FRAMES, 2, 264, generator=torch.Generator().manual_seed(6)).to(device)
    forget_warnings()
    with torch.no_grad(), pytest.warns(vidgen.FallbackWarning, match="head dim 264"):
        got = temporal_self_attention(attn, hidden, FRAMES)
        expected = ReferenceTemporalAttnProcessor()(attn, hidden, num_frames=FRAMES)
    torch.testing.assert_close(got, expected, **TOL)
