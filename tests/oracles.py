"""What the kernel tests compare with: helpers shared by the tests of several ops."""
import torch


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64 on the CPU (``expected``: the float64
    oracle). One number per comparison, so that a tolerance reads as a fraction of the output's scale."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
