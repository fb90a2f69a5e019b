"""Public noise ops: :func:`correlated_noise` and :func:`add_noise` (PYoCo, METHODS.md section 3)."""
from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

import torch

from . import _backend, _checks
from ..kernels import noise as _kernels

CORRELATED_NOISE = _backend.declare("correlated_noise", ("triton", "torch"))
ADD_NOISE = _backend.declare("add_noise", ("triton", "torch"))
DEFAULT_ALPHA = {"iid": 0.0, "mixed": 1.0, "progressive": 2.0}


# Custom ops: opaque to torch.compile (fullgraph) and safe under CUDA-graph capture (no host sync
# once the seed is resolved). The backend is chosen inside, per call.
@torch.library.custom_op("vidgen::correlated_noise", mutates_args=())
def _correlated_noise_op(shape: list[int], kind: str, alpha: float, frame_dim: int, seed: int,
                         seeds: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if _backend.select(CORRELATED_NOISE, device) == "triton":
        return _kernels.correlated_noise_triton(tuple(shape), kind, alpha, frame_dim, seed, seeds, dtype, device)
    return _kernels.correlated_noise_reference(tuple(shape), kind, alpha, frame_dim, seed, seeds, dtype, device)


@_correlated_noise_op.register_fake
def _correlated_noise_fake(shape, kind, alpha, frame_dim, seed, seeds, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------
# Timesteps index alphas_cumprod: out-of-range values are refused by name, and no backend ever
# reads past the table. Where the values are on the host (CPU tensors) they are checked before
# the call. A CUDA tensor is not read: that would synchronise every training step. It is clamped
# into range on the device (so the kernel cannot read out of bounds) and a flag saying whether
# anything was clamped is copied to pinned host memory behind the call; the next add_noise call
# whose predecessor's flag has arrived raises (it never waits for one). Inside CUDA-graph
# capture nothing can report to the host: timesteps are clamped only.
# ----------------------------------------------------------------------------------------------
def _defers_range_check(device: torch.device) -> bool:
    """True where reading the timesteps on the host would synchronise with a device."""
    return device.type == "cuda"


def _recorded_event(device: torch.device):
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


class _PendingRangeFlags:
    """Out-of-range flags of earlier CUDA calls, on their way to the host (oldest first)."""

    def __init__(self):
        self._pending: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def record(self, out_of_range: torch.Tensor, count: int) -> None:
        host = torch.empty((), dtype=torch.bool, pin_memory=out_of_range.is_cuda)
        host.copy_(out_of_range, non_blocking=True)
        with self._lock:
            self._pending.append((host, _recorded_event(out_of_range.device), count))

    def raise_arrived(self) -> None:
        """Raise if a flag that has reached the host is set; flags still in flight are left alone."""
        with self._lock:
            while self._pending and self._pending[0][1].query():
                host, _, count = self._pending.popleft()
                if bool(host):
                    self._pending.clear()
                    raise ValueError(
                        f"timesteps: an earlier add_noise call got timesteps outside [0, {count}) (indices into "
                        "alphas_cumprod); they were clamped into range, so that call's x_t and eps used the "
                        "nearest valid timestep. Checked without a device synchronisation, it is reported at "
                        "this later call.")


_RANGE_FLAGS = _PendingRangeFlags()


def _timesteps_in_range(timesteps: torch.Tensor, count: int) -> torch.Tensor:
    """``timesteps`` as valid indices into a table of ``count`` entries (see the section comment)."""
    capturing = timesteps.is_cuda and torch.cuda.is_current_stream_capturing()
    if not _defers_range_check(timesteps.device):
        bad = timesteps[(timesteps < 0) | (timesteps >= count)]
        if bad.numel():
            raise ValueError(f"timesteps: expected values in [0, {count}) (indices into alphas_cumprod), "
                             f"got {bad.tolist()[:8]}")
        return timesteps
    if not capturing:
        _RANGE_FLAGS.raise_arrived()
        _RANGE_FLAGS.record(((timesteps < 0) | (timesteps >= count)).any(), count)
    return timesteps.clamp(0, count - 1)


@torch.library.custom_op("vidgen::add_noise", mutates_args=())
def _add_noise_op(x0: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, kind: str,
                  alpha: float, frame_dim: int, seed: int,
                  seeds: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    # Inside the op, where the tensors hold values (not the fake ones torch.compile traces with).
    timesteps = _timesteps_in_range(timesteps, alphas_cumprod.shape[0])
    if _backend.select(ADD_NOISE, x0.device) == "triton":
        return _kernels.add_noise_triton(x0, timesteps, alphas_cumprod, kind, alpha, frame_dim, seed, seeds)
    return _kernels.add_noise_reference(x0, timesteps, alphas_cumprod, kind, alpha, frame_dim, seed, seeds)


@_add_noise_op.register_fake
def _add_noise_fake(x0, timesteps, alphas_cumprod, kind, alpha, frame_dim, seed, seeds):
    return torch.empty_like(x0, memory_format=torch.contiguous_format), torch.empty_like(x0, memory_format=torch.contiguous_format)


def resolve_seed(seed, generator, batch: int, frame_dim: int, device) -> tuple[int, torch.Tensor | None]:
    """(int seed, per-video seed tensor or None). Only ``seed=None`` draws (from ``generator``)."""
    if seed is None:
        gen_device = generator.device if generator is not None else "cpu"
        drawn = torch.randint(0, _kernels.SEED_LIMIT, (), generator=generator, device=gen_device)
        return int(drawn), None  # one host read, outside any kernel; pass seed= to avoid it
    if isinstance(seed, bool):
        raise TypeError("seed: expected an int or a 1-D integer tensor, got a bool")
    if isinstance(seed, int):
        if not 0 <= seed < _kernels.SEED_LIMIT:
            raise ValueError(f"seed: expected 0 <= seed < 2**62, got {seed}")
        return seed, None
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 1 or seed.dtype.is_floating_point or seed.dtype == torch.bool:
            raise TypeError(f"seed: expected an int or a 1-D integer tensor, got {seed.dtype} of shape {tuple(seed.shape)}")
        if frame_dim == 0:
            raise ValueError("seed: one seed per video needs a batch dim 0 separate from frame_dim=0")
        if seed.numel() != batch:
            raise ValueError(f"seed: expected one seed per video ({batch}), got {seed.numel()}")
        return 0, seed.to(device=device, dtype=torch.int64)
    raise TypeError(f"seed: expected an int or a 1-D integer tensor, got {type(seed).__name__}")


def _check_noise_args(kind: str, alpha: float | None, frame_dim: int, ndim: int) -> tuple[str, float, int]:
    _checks.choice("kind", kind, _kernels.KINDS)
    alpha = DEFAULT_ALPHA[kind] if alpha is None else _checks.non_negative("alpha", alpha)
    return kind, alpha, _checks.dim_index("frame_dim", frame_dim, ndim)


def correlated_noise(shape: Sequence[int], *, kind: str = "progressive", alpha: float | None = 2.0,
                     frame_dim: int = 2, seed: int | torch.Tensor | None = None,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise whose frames are correlated as in PYoCo; every frame is marginally N(0, I).

    Args:
        shape: output shape, e.g. ``(B, C, F, h, w)`` video latents.
        kind: ``"iid"`` (independent frames), ``"mixed"`` (a shared component,
            ``corr = a^2 / (1 + a^2)`` between any two frames) or ``"progressive"`` (an AR(1)
            chain, ``corr(i, j) = (a / sqrt(1 + a^2)) ** |i - j|``).
        alpha: the correlation strength ``a >= 0`` (0 gives i.i.d. frames); ``None`` takes the
            reported default of ``kind`` (mixed 1, progressive 2).
        frame_dim: the frame axis of ``shape``.
        seed: an int, or a 1-D integer tensor with one seed per video (dim 0), so each video's
            noise is reproducible on its own, whatever else is in the batch. The same seed
            and backend give bit-identical output. ``None`` draws a seed from ``generator``
            (or torch's default generator).
        device, dtype: of the output (fp32, fp16 or bf16; statistics are computed in fp32).

    Returns:
        A contiguous tensor of ``shape``.
    """
    dims = _checks.shape("shape", shape)
    _checks.floating_dtype("dtype", dtype)
    kind, alpha, frame_dim = _check_noise_args(kind, alpha, frame_dim, len(dims))
    device = torch.device(device) if device is not None else torch.get_default_device()
    batch = dims[0] if frame_dim != 0 else 1
    seed, seeds = resolve_seed(seed, generator, batch, frame_dim, device)
    return _correlated_noise_op(list(dims), kind, alpha, frame_dim, seed, seeds, dtype, device)


def add_noise(x0: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, *,
              kind: str = "iid", alpha: float | None = 0.0, frame_dim: int = 2,
              seed: int | torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time forward diffusion fused with correlated noise: one read of x0, two writes.

    ``x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * eps`` with ``a_t = alphas_cumprod[timesteps[b]]``
    for video b (one timestep per video, shared by its frames) and ``eps`` exactly what
    :func:`correlated_noise` gives for the same ``kind``/``alpha``/``seed``/``x0.dtype``.

    ``timesteps`` must lie in ``[0, len(alphas_cumprod))``. CPU values are checked before the
    call (ValueError). CUDA values are not read on the host, which would synchronise every
    step: they are clamped into range on the device and the ValueError comes from the next
    add_noise call after the device has reported them (inside CUDA-graph capture: clamped only).

    Returns:
        ``(x_t, eps)``, both contiguous, of ``x0``'s shape and dtype; ``eps`` is the epsilon target.
    """
    _checks.tensor("x0", x0)
    if x0.numel() == 0:
        raise ValueError(f"x0: expected a non-empty tensor, got shape {tuple(x0.shape)}")
    kind, alpha, frame_dim = _check_noise_args(kind, alpha, frame_dim, x0.dim())
    _checks.tensor("timesteps", timesteps, ndim=1, dtypes=(torch.int32, torch.int64))
    _checks.tensor("alphas_cumprod", alphas_cumprod, ndim=1, dtypes=(torch.float32, torch.float64))
    if alphas_cumprod.numel() == 0:
        raise ValueError("alphas_cumprod: expected one entry per training timestep, got an empty tensor")
    _checks.same_device(x0=x0, timesteps=timesteps, alphas_cumprod=alphas_cumprod)
    batch = x0.shape[0] if frame_dim != 0 else 1
    if timesteps.numel() != batch:
        raise ValueError(f"timesteps: expected one timestep per video ({batch}), got {timesteps.numel()}")
    seed, seeds = resolve_seed(seed, generator, batch, frame_dim, x0.device)
    return _add_noise_op(x0, timesteps, alphas_cumprod, kind, alpha, frame_dim, seed, seeds)
