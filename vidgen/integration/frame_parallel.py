"""One video on many processes: exact frame-parallel sampling over ``torch.distributed``.

``vidgen.patch(pipe, frame_parallel=True)`` (or a process group instead of ``True``) makes every
rank of the group run the denoiser on a contiguous shard of the video's frames; every rank calls
the pipeline with the same arguments and returns the whole video, equal to what one process
computes. The spatial layers of a video UNet see each frame alone; what mixes frames communicates:

* the transformer blocks of a motion module (AnimateDiff's, and UNet3DConditionModel's temporal
  transformers: temporal attention, its layer norms and feed-forward are all per position along
  the frames; FreeNoise's windowed blocks too, whose windows then span the whole video and may
  straddle ranks), each temporal block of Stable Video Diffusion's ``TransformerSpatioTemporalModel``
  (:mod:`vidgen.integration.svd`; its frame embedding takes the frames' indices in the whole
  video), Latte's temporal blocks (its temporal position table added there, by global frame index)
  and a Tune-A-Video ``attn_temp``: one **all-to-all** from the frame-sharded layout
  ``(B, F_r, N, C)`` to the position-sharded ``(B, F, N_r, C)`` after ``proj_in``, the blocks run
  on whole columns of frames, and one all-to-all back before ``proj_out``. Each rank sends
  ``(P-1)/P`` of its shard twice per module, ``2 (P-1)/P^2`` of the activation in all; an
  all-gather of K and V instead would receive ``(P-1)/P`` of K and of V for each of the block's two
  attentions, ``4 (P-1)/P`` of the activation: 2P times the bytes. So all-to-all.
* frame attention (Tune-A-Video's sparse-causal, first-frame, any key-frame table): the K and V of
  exactly the frames a local row names that another rank holds (sparse-causal: frame 0 from rank 0,
  frame lo-1 from the left neighbour), in one asynchronous **all-to-all** started before the query
  projection and awaited after it (the one overlap of communication with compute here; the motion
  modules' exchanges sit between dependent steps).
* every GroupNorm whose statistics span the frames (motion modules', Tune-A-Video's ResNet norms,
  UNet3D's temporal convolutions', SVD's temporal ResNets'): an **all-reduce** of per-(video, group) count, sum and sum of
  squares (float64, 3 B G numbers) between the statistics pass and the apply pass
  (:func:`vidgen.integration.frame_norm.statistics_summed_across`).
* UNet3D's temporal convolutions and SVD's temporal ResNets (Conv3d, kernel 3 over frames): a
  **halo** of one frame from each neighbour (one all-to-all of two frames per convolution; zeros at
  the video's ends). The rest of SVD's UNet is per frame (its time embedding and
  ``image_only_indicator`` are repeated per local frame, the ``time_mixer`` blends per element).
* the denoiser's output: an **all-gather** of each rank's shard of the prediction per step (one
  latent-sized tensor, B C F h w numbers: ~1/300 of one motion module's exchange at 512x512), so
  the pipeline's own sampler step, callbacks and guidance run unchanged and identically on every
  rank (cheap elementwise work, computed redundantly).
* the VAE decode (pipelines with ``decode_latents``): each rank decodes its frames (a frame count
  the decode takes, Latte's ``video_length``, is given as the rank's), then one **all-gather** of
  the decoded frames: the one gather of the video at the end. SVD's temporal VAE decoder mixes the
  frames of each of the pipeline's decode chunks, so there each rank decodes whole chunks
  (:meth:`FrameParallel.decode_latent_chunks`).

The initial noise needs nothing: every rank draws the whole x_T from the same generator (or
:func:`vidgen.ops.correlated_noise`'s seed), so each frame's noise is the one a single process
draws, by construction.

Guidance-parallel (``guidance_parallel=True``, an even number of ranks): the first half of the
ranks computes the first half of the batch (the unconditional branch of classifier-free guidance),
the second half the rest, each half frame-parallel over its P/2 ranks; the same all-gather
assembles the prediction on every rank before the sampler's guidance step. A batch that does not
split in two (no guidance) is computed by both halves.

Collectives run on the whole group: with guidance-parallel, the all-to-all sends nothing to the
ranks of the other half and the statistics all-reduce carries a slot per half, so no sub-group is
created (creating one is a collective over the whole world, in the same order on every rank).

Failure: every collective is bounded by the group's timeout (``init_process_group(timeout=)``;
``vidgen sample --frame-parallel`` sets 10 minutes); a rank that raises exits, and its peers'
next collective fails: at once on gloo (the peer closed its connection), at the timeout on NCCL
(its watchdog aborts the communicator), so no rank hangs silently. At every denoiser call the ranks compare a
fingerprint of its inputs (3 float64 numbers per input: one tiny all-gather and one host
synchronisation per step) and refuse to run on a mismatch, so arguments that differ across ranks
(prompt, seed, guidance scale) or latents that drift apart stop the run within a step; a group
larger than the frame count is refused; frames that do not divide evenly give the first ``F % P`` ranks one frame more.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..ops._fallback import warn_once
from .frame_norm import group_norm_of_video, statistics_summed_across

__all__ = ["FrameParallel", "ShardedTemporalConv", "ShardedTemporalResnet", "VideoArgument", "active_shard", "balanced_split",
           "resolve_group"]


def balanced_split(total: int, parts: int) -> list[int]:
    """``total`` items in ``parts`` contiguous runs, the first ``total % parts`` one longer."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def resolve_group(frame_parallel, guidance_parallel: bool):
    """The process group of ``patch(frame_parallel=...)``: True -> the default group; a ProcessGroup as
    given. Refuses, naming the argument, when torch.distributed is not initialised or guidance-parallel
    is asked of an odd number of ranks."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("frame_parallel: torch.distributed is not initialised; launch with `torchrun "
                         "--nproc-per-node N` (or `accelerate launch`) and call "
                         "torch.distributed.init_process_group() before patching")
    group = dist.group.WORLD if frame_parallel is True else frame_parallel
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"frame_parallel: expected True or a torch.distributed.ProcessGroup, got "
                        f"{type(frame_parallel).__name__}")
    size = dist.get_world_size(group)
    if guidance_parallel and size % 2:
        raise ValueError(f"guidance_parallel: needs an even number of ranks, the group has {size}")
    return group


@dataclass(frozen=True)
class _Shard:
    """The frame shard of this rank in one denoiser call, and the exchanges the layers inside need."""

    group: object
    rank: int                 # in the group
    lane_ranks: list[int]     # the group ranks sharing this rank's batch part (its guidance half, or all)
    frame_counts: list[int]   # frames of each rank of the lane
    num_frames: int           # F of the whole video

    @property
    def lane_index(self) -> int:
        return self.lane_ranks.index(self.rank)

    @property
    def first_frame(self) -> int:
        """The index in the whole video of this rank's first frame."""
        return sum(self.frame_counts[:self.lane_index])

    def _splits(self, per_peer: list[int]) -> list[int]:
        """Split sizes over every rank of the group: ``per_peer`` for the lane, 0 for the others."""
        sizes = [0] * dist.get_world_size(self.group)
        for peer, size in zip(self.lane_ranks, per_peer):
            sizes[peer] = size
        return sizes

    def to_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B*F_r, N, C)`` tokens of this rank's frames -> ``(B*F, N_r, C)``: every frame of this rank's
        positions (an all-to-all over the lane)."""
        frames = self.frame_counts[self.lane_index]
        videos, positions, channels = tokens.shape[0] // frames, tokens.shape[1], tokens.shape[2]
        position_counts = balanced_split(positions, len(self.lane_ranks))
        by_position = tokens.view(videos, frames, positions, channels).split(position_counts, dim=2)
        send = torch.cat([part.reshape(-1) for part in by_position])
        mine = position_counts[self.lane_index]
        receive_sizes = [videos * f * mine * channels for f in self.frame_counts]
        received = send.new_empty(sum(receive_sizes))
        dist.all_to_all_single(received, send, self._splits(receive_sizes),
                               self._splits([videos * frames * n * channels for n in position_counts]),
                               group=self.group)
        parts = [part.view(videos, f, mine, channels) for part, f in zip(received.split(receive_sizes), self.frame_counts)]
        return torch.cat(parts, dim=1).flatten(0, 1)

    def to_frames(self, tokens: torch.Tensor, positions: int) -> torch.Tensor:
        """The inverse of :meth:`to_positions`: ``(B*F, N_r, C)`` -> ``(B*F_r, N, C)``."""
        position_counts = balanced_split(positions, len(self.lane_ranks))
        mine = position_counts[self.lane_index]
        channels = tokens.shape[-1]
        videos = tokens.shape[0] // self.num_frames
        by_frame = tokens.view(videos, self.num_frames, mine, channels).split(self.frame_counts, dim=1)
        send = torch.cat([part.reshape(-1) for part in by_frame])
        frames = self.frame_counts[self.lane_index]
        receive_sizes = [videos * frames * n * channels for n in position_counts]
        received = send.new_empty(sum(receive_sizes))
        dist.all_to_all_single(received, send, self._splits(receive_sizes),
                               self._splits([videos * f * mine * channels for f in self.frame_counts]),
                               group=self.group)
        parts = [part.view(videos, frames, n, channels) for part, n in zip(received.split(receive_sizes), position_counts)]
        return torch.cat(parts, dim=2).flatten(0, 1)

    def keys_for(self, rows, k: torch.Tensor, v: torch.Tensor):
        """Frame attention on a shard: ``rows`` is the whole video's (F, K) key-frame table, ``k``/``v`` the
        ``(B, F_r, M, H, D)`` keys and values of this rank's frames. Starts the exchange of the key frames
        other ranks hold (one asynchronous all-to-all of K and V: only the frames a table row names, e.g.
        sparse-causal's frame 0 from rank 0 and frame lo-1 from the left neighbour) and returns a function
        that waits for it and gives ``(k, v, rows)`` for the local queries, ``rows`` indexing the local
        frames then the received ones. Whatever runs between the two (the query projection) overlaps it."""
        plan = _key_exchange_plan(tuple(tuple(row) for row in rows), tuple(self.frame_counts), self.lane_index)
        local_rows, sends, receives = plan
        if not any(sends) and not any(receives):
            return lambda: (k, v, local_rows)
        lo = sum(self.frame_counts[:self.lane_index])
        per_frame = 2 * k.shape[0] * k[0, 0].numel()  # K and V of one frame of every video
        pairs = torch.stack([k, v])  # (2, B, F_r, M, H, D)
        send = torch.cat([pairs[:, :, [g - lo for g in frames]].reshape(-1) for frames in sends])
        received = send.new_empty(per_frame * sum(len(frames) for frames in receives))
        work = dist.all_to_all_single(received, send, self._splits([per_frame * len(f) for f in receives]),
                                      self._splits([per_frame * len(f) for f in sends]), group=self.group,
                                      async_op=True)

        def wait():
            work.wait()
            if not any(receives):  # this rank only sends (rank 0 of sparse-causal: its frame 0)
                return k, v, local_rows
            blocks = [part.view(2, k.shape[0], len(frames), *k.shape[2:])
                      for part, frames in zip(received.split([per_frame * len(f) for f in receives]), receives)
                      if frames]
            remote_pairs = torch.cat(blocks, dim=2)
            return torch.cat([k, remote_pairs[0]], dim=1), torch.cat([v, remote_pairs[1]], dim=1), local_rows

        return wait

    def with_halo(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, C, F_r, h, w)`` -> ``(B, C, F_r + 2, h, w)``: the left neighbour's last frame before, the right
        neighbour's first frame after (zeros at the ends of the video, a temporal convolution's padding);
        one all-to-all of two frames."""
        me, ranks = self.lane_index, len(self.lane_ranks)
        frame = video[:, :, :1]
        size = frame.numel()
        to_peer = [0] * ranks
        if me > 0:
            to_peer[me - 1] = size  # my first frame is the left neighbour's right halo
        if me < ranks - 1:
            to_peer[me + 1] = size  # my last frame is the right neighbour's left halo
        parts = ([video[:, :, :1].reshape(-1)] if me > 0 else []) + ([video[:, :, -1:].reshape(-1)] if me < ranks - 1 else [])
        send = torch.cat(parts) if parts else video.new_empty(0)
        received = video.new_empty(sum(to_peer))
        dist.all_to_all_single(received, send, self._splits(to_peer), self._splits(to_peer), group=self.group)
        halves = list(received.split([n for n in to_peer if n]))
        left = halves.pop(0).view_as(frame) if me > 0 else torch.zeros_like(frame)
        right = halves.pop(0).view_as(frame) if me < ranks - 1 else torch.zeros_like(frame)
        return torch.cat([left, video, right], dim=2)

    def sum_statistics(self, partial: torch.Tensor) -> None:
        """Sum a (3, B, G) tensor of partial GroupNorm moments over the lane, in place (one all-reduce;
        with two lanes, a slot per lane so each sums only its own)."""
        lanes = dist.get_world_size(self.group) // len(self.lane_ranks)
        if lanes == 1:
            dist.all_reduce(partial, group=self.group)
            return
        slots = partial.new_zeros((lanes, *partial.shape))
        slots[self.rank // len(self.lane_ranks)] = partial
        dist.all_reduce(slots, group=self.group)
        partial.copy_(slots[self.rank // len(self.lane_ranks)])


@functools.lru_cache(maxsize=64)
def _key_exchange_plan(rows: tuple[tuple[int, ...], ...], counts: tuple[int, ...], me: int):
    """(local rows, frames this rank sends to each lane rank, frames it receives from each) for the
    key-frame table ``rows`` of the whole video split as ``counts``. Local rows index this rank's
    frames, then the received frames in ascending order."""
    starts = [sum(counts[:r]) for r in range(len(counts))]

    def needed_by(r: int) -> list[int]:
        lo, hi = starts[r], starts[r] + counts[r]
        return sorted({g for f in range(lo, hi) for g in rows[f] if not lo <= g < hi})

    def owner(g: int) -> int:
        return max(r for r in range(len(counts)) if starts[r] <= g)

    lo, hi = starts[me], starts[me] + counts[me]
    sends = [[g for g in needed_by(r) if lo <= g < hi] if r != me else [] for r in range(len(counts))]
    mine = needed_by(me)
    receives = [[g for g in mine if owner(g) == r] for r in range(len(counts))]
    index = {g: g - lo for g in range(lo, hi)}
    index.update({g: counts[me] + i for i, g in enumerate(mine)})
    local_rows = [[index[g] for g in rows[f]] for f in range(lo, hi)]
    return local_rows, sends, receives


_ACTIVE: contextvars.ContextVar[_Shard | None] = contextvars.ContextVar("vidgen_frame_shard", default=None)


def active_shard() -> _Shard | None:
    """The frame shard of the denoiser call in progress on this rank, or None (whole videos). None
    inside torch.compile, which cannot trace the ContextVar read (``vidgen.patch`` refuses compile
    with frame_parallel)."""
    return None if torch.compiler.is_compiling() else _ACTIVE.get()


@contextlib.contextmanager
def _sharded(shard: _Shard):
    token = _ACTIVE.set(shard)
    try:
        with statistics_summed_across(shard.sum_statistics):
            yield
    finally:
        _ACTIVE.reset(token)


def _all_gather_frames(piece: torch.Tensor, frame_counts_by_rank: list[int], group, frame_dim: int) -> list[torch.Tensor]:
    """Every rank's ``piece`` (their frame counts differ: padded to the longest along ``frame_dim``)."""
    longest = max(frame_counts_by_rank)
    padded = piece
    if piece.shape[frame_dim] < longest:
        pad_shape = list(piece.shape)
        pad_shape[frame_dim] = longest - piece.shape[frame_dim]
        padded = torch.cat([piece, piece.new_zeros(pad_shape)], dim=frame_dim)
    gathered = [torch.empty_like(padded) for _ in frame_counts_by_rank]
    dist.all_gather(gathered, padded.contiguous(), group=group)
    return [g.narrow(frame_dim, 0, f) for g, f in zip(gathered, frame_counts_by_rank)]


class FrameParallel:
    """The frame-parallel runtime of one patched object: the group, the guidance split, and the wrappers
    :func:`vidgen.patch` installs on the denoiser (sharded forward), the pipeline's ``decode_latents``
    (sharded decode, one gather)."""

    def __init__(self, group, guidance_parallel: bool):
        self.group = group
        self.guidance_parallel = guidance_parallel
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)

    def __eq__(self, other) -> bool:  # patch() with equal options is a no-op
        return (isinstance(other, FrameParallel) and other.group is self.group
                and other.guidance_parallel == self.guidance_parallel)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return (f"FrameParallel({self.size} ranks"
                + (", guidance-parallel" if self.guidance_parallel else "") + ")")

    # -- the layout of a call ----------------------------------------------------------------------
    def _lanes(self, batch: int) -> tuple[int, bool]:
        """(ranks per lane, whether the batch splits between two lanes)."""
        if not self.guidance_parallel:
            return self.size, False
        return self.size // 2, batch % 2 == 0

    def _shard(self, num_frames: int, batch: int) -> _Shard:
        lane_size, _ = self._lanes(batch)
        if num_frames < lane_size:
            raise ValueError(f"frame_parallel: {lane_size} ranks share the frames of each video, more than its "
                             f"{num_frames} frames; run on at most {num_frames} ranks"
                             + (" per guidance half" if self.guidance_parallel else ""))
        first = self.rank // lane_size * lane_size
        return _Shard(self.group, self.rank, list(range(first, first + lane_size)),
                      balanced_split(num_frames, lane_size), num_frames)

    def check_same_inputs(self, *tensors) -> None:
        """Refuse a denoiser call whose inputs differ across the ranks: a float64 fingerprint of each
        (sum, sum of squares, index-weighted sum) is all-gathered and compared exactly."""
        prints = []
        for t in tensors:
            if isinstance(t, (int, float)):  # a timestep given as a number
                t = torch.tensor([t])
            if isinstance(t, torch.Tensor):
                flat = t.detach().reshape(-1).double()
                weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64).remainder_(7919)
                prints += [flat.sum(), flat.square().sum(), (flat * weights).sum()]
        mine = torch.stack(prints)
        everyone = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(everyone, mine, group=self.group)
        differing = [r for r, other in enumerate(everyone) if not torch.equal(other, everyone[0])]
        if differing:
            raise ValueError(f"frame_parallel: every rank must call the pipeline with the same arguments; the "
                             f"denoiser inputs of rank(s) {differing} differ from rank 0's (prompt, seed or "
                             "generator state, sizes, latents, guidance scale...)")

    # -- the denoiser ----------------------------------------------------------------------------
    def denoiser_forward(self, model, forward, video: "VideoArgument"):
        """A forward for ``model`` that runs ``forward`` on this rank's frames (and batch part) and returns
        the whole prediction, assembled on every rank. ``video`` names the argument holding the video and
        its frame axis; the call's arguments are bound to the signature of ``type(model).forward`` (the one
        pipelines call), so positional and keyword calls split alike."""
        signature = inspect.signature(type(model).forward)

        def sharded_forward(*args, **kwargs):
            arguments = _bound_arguments(signature, model, args, kwargs)
            reason = _unsharded_reason(arguments, video)
            if reason is not None:
                warn_once(f"frame-parallel {type(model).__name__}", reason, "whole on every rank")
                return forward(*args, **kwargs)
            sample = arguments[video.name]
            self.check_same_inputs(*(arguments.get(name) for name in (video.name, *_PER_VIDEO, _TEXT)))
            batch, num_frames = sample.shape[0], sample.shape[video.frame_dim]
            shard = self._shard(num_frames, batch)
            lane_size, split_batch = self._lanes(batch)
            lane = self.rank // lane_size
            lo = sum(shard.frame_counts[:shard.lane_index])
            hi = lo + shard.frame_counts[shard.lane_index]
            videos = slice(lane * batch // 2, (lane + 1) * batch // 2) if split_batch else slice(0, batch)
            arguments[video.name] = sample[videos].narrow(video.frame_dim, lo, hi - lo)
            for name in _PER_VIDEO:
                if name in arguments:
                    arguments[name] = _batch_part(arguments[name], videos, batch)
            if _TEXT in arguments:
                arguments[_TEXT] = _text_part(arguments[_TEXT], videos, batch, num_frames, lo, hi)
            with _sharded(shard):
                out = forward(**arguments)
            prediction = out[0] if isinstance(out, tuple) else out.sample
            pieces = _all_gather_frames(prediction, shard.frame_counts * (self.size // lane_size), self.group,
                                        frame_dim=video.frame_dim)
            lanes = [torch.cat(pieces[i:i + lane_size], dim=video.frame_dim) for i in range(0, self.size, lane_size)]
            whole = torch.cat(lanes) if split_batch else lanes[0]
            if isinstance(out, tuple):
                return (whole, *out[1:])
            out.sample = whole
            return out

        return sharded_forward

    # -- the pipeline ----------------------------------------------------------------------------
    def decode_latents(self, decode):
        """``pipe.decode_latents`` on this rank's frames, then one all-gather of the decoded frames. A frame
        count the decode takes besides the (B, C, F, h, w) latents (Latte's ``video_length``, which it
        reshapes the decoded frames by) is given this rank's."""
        signature = inspect.signature(decode)
        frame_count = next((name for name in _FRAME_COUNT_ARGUMENTS if name in signature.parameters), None)

        def sharded_decode(latents, *args, **kwargs):
            num_frames = latents.shape[2]
            if num_frames < self.size:
                return decode(latents, *args, **kwargs)
            counts = balanced_split(num_frames, self.size)
            lo = sum(counts[:self.rank])
            if frame_count is not None:
                bound = signature.bind(latents, *args, **kwargs)
                if frame_count in bound.arguments:
                    bound.arguments[frame_count] = counts[self.rank]
                args, kwargs = bound.args[1:], bound.kwargs
            video = decode(latents[:, :, lo:lo + counts[self.rank]], *args, **kwargs)
            return torch.cat(_all_gather_frames(video, counts, self.group, frame_dim=2), dim=2)

        return sharded_decode

    def decode_latent_chunks(self, decode):
        """Stable Video Diffusion's ``pipe.decode_latents(latents, num_frames, decode_chunk_size)`` with its
        chunks spread over the ranks, then one all-gather of the decoded frames.

        Its VAE decoder mixes the frames of each chunk (``decode_chunk_size`` consecutive frames of the
        flattened ``(B*F, C, h, w)`` latents, across videos too), so the exact split is by whole chunks:
        each rank decodes a contiguous run of them through the pipeline's own method, starting on a
        chunk boundary, so its chunks are the ones one process decodes. With fewer chunks than ranks,
        the extra ranks decode a chunk again (they would wait for the gather anyway) and the gather
        keeps the first copy."""

        def sharded_decode(latents, num_frames, decode_chunk_size=14):
            flat = latents.flatten(0, 1)  # (B*F, C, h, w): the frames the pipeline chunks
            total = flat.shape[0]
            owners = min(-(-total // decode_chunk_size), self.size)
            first_chunk = [0]
            for count in balanced_split(-(-total // decode_chunk_size), owners):
                first_chunk.append(first_chunk[-1] + count)
            bounds = [min(c * decode_chunk_size, total) for c in first_chunk]  # owner r: frames bounds[r]:bounds[r+1]
            mine = self.rank % owners
            part = decode(flat[None, bounds[mine]:bounds[mine + 1]], bounds[mine + 1] - bounds[mine], decode_chunk_size)
            frame_counts = [bounds[r % owners + 1] - bounds[r % owners] for r in range(self.size)]
            pieces = _all_gather_frames(part, frame_counts, self.group, frame_dim=2)  # each (1, C', frames, H, W)
            whole = torch.cat(pieces[:owners], dim=2)[0]  # (C', B*F, H, W)
            return whole.unflatten(1, latents.shape[:2]).transpose(0, 1)  # (B, C', F, H, W), as the pipeline's

        return sharded_decode


def _is_frame_convolution(conv) -> bool:
    """A Conv3d over three frames that pads one frame each side, one position wide: what
    :func:`_convolve_over_frames` reproduces."""
    return (isinstance(conv, torch.nn.Conv3d) and conv.kernel_size == (3, 1, 1) and conv.stride == (1, 1, 1)
            and conv.padding == (1, 0, 0) and conv.dilation == (1, 1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def _convolve_over_frames(shard: _Shard, video: torch.Tensor, conv) -> torch.Tensor:
    """``conv`` (:func:`_is_frame_convolution`) of this rank's ``(B, C, F_r, h, w)`` frames, each end frame
    reading its neighbour's frame through the halo (zeros at the ends of the video: the padding)."""
    return torch.nn.functional.conv3d(shard.with_halo(video), conv.weight, conv.bias)


class ShardedTemporalConv:
    """The forward of a diffusers ``TemporalConvLayer`` (UNet3DConditionModel's convolutions over frames:
    four GroupNorm-SiLU-Conv3d (3, 1, 1) stages and a residual). Without an active shard it is the
    module's own forward; on a shard each GroupNorm pools its statistics across ranks
    (:func:`~vidgen.integration.frame_norm.group_norm_of_video`) and each convolution reads a halo of one
    frame each side (:meth:`_Shard.with_halo`)."""

    def __init__(self, module):
        self.module = module

    @staticmethod
    def unsupported_reason(module) -> str | None:
        for name in ("conv1", "conv2", "conv3", "conv4"):
            stage = list(getattr(module, name))
            if not (isinstance(stage[0], torch.nn.GroupNorm) and _is_frame_convolution(stage[-1])):
                return f"{name}: expected GroupNorm, ..., Conv3d(kernel (3, 1, 1), padding (1, 0, 0))"
        return None

    def __call__(self, hidden_states: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        shard = active_shard()
        if shard is None:
            return type(self.module).forward(self.module, hidden_states, num_frames)
        video = hidden_states.unflatten(0, (-1, num_frames)).transpose(1, 2)  # (B, C, F_r, h, w) view
        x = video
        for name in ("conv1", "conv2", "conv3", "conv4"):
            norm, *middle, conv = getattr(self.module, name)
            x = group_norm_of_video(x, norm)
            for layer in middle:  # SiLU, dropout
                x = layer(x)
            x = _convolve_over_frames(shard, x, conv)
        return (video + x).transpose(1, 2).flatten(0, 1)


class ShardedTemporalResnet:
    """The forward of a diffusers ``TemporalResnetBlock`` (Stable Video Diffusion's temporal half of each
    ``SpatioTemporalResBlock``: GroupNorm-SiLU-Conv3d (3, 1, 1) twice, the time embedding added between,
    on the ``(B, C, F, h, w)`` video). Without an active shard it is the module's own forward; on a shard
    the GroupNorms pool their statistics across ranks and the convolutions read a one-frame halo, as in
    :class:`ShardedTemporalConv`; the time embedding and the shortcut are per frame."""

    def __init__(self, module):
        self.module = module

    @staticmethod
    def unsupported_reason(module) -> str | None:
        from diffusers.models.resnet import TemporalResnetBlock

        if type(module) is not TemporalResnetBlock:  # a subclass may change the forward
            return f"expected a TemporalResnetBlock, got {type(module).__name__}"
        for norm, conv in (("norm1", "conv1"), ("norm2", "conv2")):
            if not (isinstance(getattr(module, norm), torch.nn.GroupNorm) and _is_frame_convolution(getattr(module, conv))):
                return f"{norm}, {conv}: expected GroupNorm, Conv3d(kernel (3, 1, 1), padding (1, 0, 0))"
        shortcut = module.conv_shortcut
        if shortcut is not None and shortcut.kernel_size != (1, 1, 1):
            return "conv_shortcut: expected a Conv3d of kernel (1, 1, 1)"
        return None

    def __call__(self, input_tensor: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        m, shard = self.module, active_shard()
        if shard is None:
            return type(m).forward(m, input_tensor, temb)
        x = _convolve_over_frames(shard, m.nonlinearity(group_norm_of_video(input_tensor, m.norm1)), m.conv1)
        if m.time_emb_proj is not None:  # (B, F_r, C) per frame -> (B, C, F_r, 1, 1)
            x = x + m.time_emb_proj(m.nonlinearity(temb)).permute(0, 2, 1)[..., None, None]
        x = m.dropout(m.nonlinearity(group_norm_of_video(x, m.norm2)))
        x = _convolve_over_frames(shard, x, m.conv2)
        shortcut = input_tensor if m.conv_shortcut is None else m.conv_shortcut(input_tensor)
        return shortcut + x


@dataclass(frozen=True)
class VideoArgument:
    """Where a denoiser's forward takes the video: the argument's name and its frame axis."""

    name: str
    frame_dim: int


# The denoiser arguments the sharded forward splits besides the video: per-video tensors (split by
# guidance-parallel) and the text/image context (per video, or per frame for diffusers' motion UNet).
_PER_VIDEO = ("timestep", "added_time_ids")
_TEXT = "encoder_hidden_states"
# The frame count a pipeline's decode_latents takes besides the latents (LattePipeline's).
_FRAME_COUNT_ARGUMENTS = ("video_length",)
# Flags passed as they are; any other argument given a value (ControlNet residuals, masks, IP-Adapter
# embeddings...) is not split, and the call runs whole on every rank.
_PASSED_AS_IS = ("return_dict", "enable_temporal_attentions", "num_frames")


def _bound_arguments(signature: inspect.Signature, model, args, kwargs) -> dict:
    """The call's arguments by name (``**kwargs`` of the signature flattened in); raises TypeError as the
    forward itself would on a call that does not bind."""
    bound = signature.bind(model, *args, **kwargs).arguments
    arguments = {}
    for i, (name, value) in enumerate(bound.items()):
        kind = signature.parameters[name].kind
        if i == 0:  # self
            continue
        if kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                arguments["*" + name] = value
        else:
            arguments[name] = value
    return arguments


def _unsharded_reason(arguments: dict, video: VideoArgument) -> str | None:
    sample = arguments.get(video.name)
    if not isinstance(sample, torch.Tensor) or sample.dim() != 5:
        return f"its {video.name} is not a 5-D video"
    if torch.is_grad_enabled() and sample.requires_grad:
        return "it needs gradients; frame-parallel sampling is inference"
    extra = [name for name, value in arguments.items()
             if name not in (video.name, *_PER_VIDEO, _TEXT, *_PASSED_AS_IS) and not _is_empty(value)]
    if extra:
        return f"it passes {', '.join(extra)}, which the sharded forward does not split"
    return None


def _is_empty(value) -> bool:
    """None, or a dict of Nones (Latte's pipeline passes ``added_cond_kwargs`` of Nones)."""
    return value is None or (isinstance(value, dict) and all(v is None for v in value.values()))


def _batch_part(value, videos: slice, batch: int):
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[videos]
    return value


def _text_part(text, videos: slice, batch: int, num_frames: int, lo: int, hi: int):
    """The text embeddings of this rank's videos and frames: (B, L, C) per video or (B*F, L, C) per frame
    (diffusers' motion UNet takes them per frame)."""
    if not isinstance(text, torch.Tensor):
        return text
    if text.shape[0] == batch * num_frames and num_frames > 1:
        return text.unflatten(0, (batch, num_frames))[videos, lo:hi].flatten(0, 1)
    return _batch_part(text, videos, batch)
