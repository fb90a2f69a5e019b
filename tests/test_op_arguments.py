"""Argument checks of the public API that the op test files do not cover: add_noise's timestep range
(eager on the host, clamp-and-flag on CUDA), frame_attention's scale, correlated_noise's shape, inflate."""
import pytest
import torch

import vidgen
from vidgen import ops
from vidgen.ops import noise as noise_module

BACKENDS = ["triton", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("timesteps", [[-1, 2], [1, 5], [7, -3]])
def test_add_noise_refuses_timesteps_outside_the_table_by_name(device, backend, timesteps):
    x0 = torch.randn(2, 3, 4, 5, device=device)
    alphas_cumprod = torch.linspace(0.9, 0.1, 5, device=device)
    if device.type == "cuda":
        pytest.skip("CUDA timesteps are clamped and reported later: see the deferred test below")
    with ops.use_backend(backend), pytest.raises(ValueError, match=r"timesteps: expected values in \[0, 5\)"):
        ops.add_noise(x0, torch.tensor(timesteps, device=device), alphas_cumprod, seed=0)


def test_add_noise_accepts_both_ends_of_the_table(device):
    x0 = torch.randn(2, 3, 4, 5, device=device)
    alphas_cumprod = torch.linspace(0.9, 0.1, 5, device=device)
    xt, eps = ops.add_noise(x0, torch.tensor([0, 4], device=device), alphas_cumprod, seed=0)
    a = alphas_cumprod[[0, 4]].view(-1, 1, 1, 1)
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps)


def test_add_noise_refuses_an_empty_table(device):
    with pytest.raises(ValueError, match="alphas_cumprod"):
        ops.add_noise(torch.randn(1, 2, 3, device=device), torch.tensor([0], device=device),
                      torch.empty(0, device=device), seed=0)


class FakeEvent:
    """Stands in for a CUDA event: whether the device has reached it is set by the test."""

    arrived = False

    def query(self) -> bool:
        return FakeEvent.arrived


@pytest.mark.parametrize("backend", BACKENDS)
def test_deferred_timestep_check_clamps_then_raises_once_the_flag_arrives(backend, monkeypatch):
    """The CUDA path, driven on CPU tensors: no host read of the timesteps at the call; the kernel sees
    clamped indices; a later call raises, but only once the flag has reached the host (never waits)."""
    monkeypatch.setattr(noise_module, "_defers_range_check", lambda device: True)
    monkeypatch.setattr(noise_module, "_recorded_event", lambda device: FakeEvent())
    monkeypatch.setattr(noise_module, "_RANGE_FLAGS", noise_module._PendingRangeFlags())
    monkeypatch.setattr(FakeEvent, "arrived", False)
    x0 = torch.randn(2, 3, 4, 5)
    alphas_cumprod = torch.linspace(0.9, 0.1, 5)
    with ops.use_backend(backend):
        xt, eps = ops.add_noise(x0, torch.tensor([-2, 9]), alphas_cumprod, seed=3)
        clamped_xt, clamped_eps = ops.add_noise(x0, torch.tensor([0, 4]), alphas_cumprod, seed=3)
        assert torch.equal(xt, clamped_xt) and torch.equal(eps, clamped_eps)  # read inside the table
        FakeEvent.arrived = True
        with pytest.raises(ValueError, match=r"timesteps: an earlier add_noise call got timesteps outside \[0, 5\)"):
            ops.add_noise(x0, torch.tensor([1, 2]), alphas_cumprod, seed=3)
        ops.add_noise(x0, torch.tensor([1, 2]), alphas_cumprod, seed=3)  # reported once, then clear


@pytest.mark.parametrize("scale,error", [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                         (float("inf"), ValueError), (True, TypeError), ("0.1", TypeError)])
def test_frame_attention_refuses_a_scale_that_is_not_positive_and_finite(device, scale, error):
    q = torch.randn(1, 3, 4, 2, 8, device=device)
    with pytest.raises(error, match="scale"):
        ops.frame_attention(q, q, q, [[0], [0, 1], [1, 2]], scale=scale)
    with pytest.raises(error, match="scale"):
        ops.sparse_causal_attention(q, q, q, scale=scale)


@pytest.mark.parametrize("shape", [(1, 4.9, 3, 8, 8), (1, True, 3), (2.0, 3), "abc", (1, None)])
def test_correlated_noise_refuses_a_shape_that_is_not_integers(device, shape):
    with pytest.raises(TypeError, match="shape: expected a sequence of ints"):
        ops.correlated_noise(shape, frame_dim=0, seed=0, device=device)


def test_correlated_noise_takes_integer_like_sizes(device):
    noise = ops.correlated_noise((torch.tensor(2), torch.Size([3])[0], 4), frame_dim=1, seed=0, device=device)
    assert noise.shape == (2, 3, 4)


def unet2d(heads: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    # diffusers' attention_head_dim is the number of heads here: head dim = 32 / heads at the first level.
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=heads, norm_num_groups=8)


def test_inflate_refuses_a_head_dim_the_kernels_cannot_run():
    with pytest.raises(ValueError, match=r"attention head dim 4 \(8 heads of width 32.*\[8, 256\]"):
        vidgen.inflate(unet2d(heads=8))
    assert vidgen.inflate(unet2d(heads=4)).config.frame_mode == "sparse_causal"  # head dim 8 runs


def test_inflate_names_its_frame_mode_argument():
    with pytest.raises(ValueError, match=r"^frame_mode: expected one of 'sparse_causal', 'first_frame', got 'full'"):
        vidgen.inflate(unet2d(heads=2), frame_mode="full")
