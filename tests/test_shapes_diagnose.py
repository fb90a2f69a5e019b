"""vidgen.shapes.diagnose: the measurements that tell why a video model ignores its direction word."""
from types import SimpleNamespace

import pytest
import torch

from vidgen.shapes import diagnose


def test_real_opening_frames_place_the_shape_by_its_direction_word():
    """The signal the prior should learn: a clip that moves left starts on the right, and so on."""
    placement = diagnose.real_placement(per_direction=24)
    assert placement["left"][0] - placement["right"][0] > 10
    assert placement["up"][1] - placement["down"][1] > 10
    assert abs(placement["left"][1] - placement["right"][1]) < 3


class _Conv(torch.nn.Module):
    """A toy denoiser ``(1, C, F, h, w) -> .sample``: one 3-D convolution of the given kernel."""

    def __init__(self, kernel):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(2, 2, kernel, padding=tuple(k // 2 for k in kernel))

    def forward(self, sample, timestep, text):
        return SimpleNamespace(sample=self.conv(sample))


@pytest.mark.parametrize("kernel, coupled", [((1, 3, 3), False), ((3, 1, 1), True)])
def test_frame_coupling_tells_per_frame_models_from_temporal_ones(kernel, coupled):
    coupling = diagnose.frame_coupling(_Conv(kernel), torch.zeros(1, 1, 1), (1, 2, 8, 5, 5), timesteps=(999, 10))
    assert set(coupling) == {999, 10}
    for value in coupling.values():
        assert (value > 0.1) if coupled else (value == 0.0), coupling
