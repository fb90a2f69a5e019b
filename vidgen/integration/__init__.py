"""vidgen inside diffusers: the only part of the package that imports diffusers' models.

* :mod:`.patch`: ``vidgen.patch``/``vidgen.unpatch``/``vidgen.patch_report``, the one patch entry
  point and the bookkeeping of what was replaced and what was left, with why;
* :mod:`.processors`: every attention processor vidgen installs (frame, temporal, Text2Video-Zero's
  first-frame) and their eager-PyTorch references;
* :mod:`.temporal`: self-attention over the frame axis read in place from the image layout;
* :mod:`.motion`: AnimateDiff motion modules on the copy-free temporal forward;
* :mod:`.frame_norm`: GroupNorm whose statistics pool over the frames of a video;
* :mod:`.video_unet`: the Tune-A-Video inflated UNet (``vidgen.inflate``);
* :mod:`.schedulers`: DDIM and DDIM-inverse schedulers whose step is one fused kernel;
* :mod:`.graphs`: the denoiser's forward (and the samplers' step) replayed from CUDA graphs;
* :mod:`.frame_parallel`: one video over ``torch.distributed`` ranks, exact (``patch(frame_parallel=)``);
* :mod:`.layout`: the frame count and head dims read off diffusers activations and modules.

Below it, :mod:`vidgen.ops` (the public ops, the only importer of ``vidgen.kernels``, and the
fallback warning every layer uses); above it, sampling, training and the command line. Importing
this package imports nothing heavy: each module is loaded when first used.
"""
