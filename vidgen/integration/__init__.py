"""vidgen inside diffusers: the only part of the package that imports diffusers' models.

* :mod:`.processors`: every attention processor vidgen installs (frame, temporal, Text2Video-Zero's
  first-frame), their eager-PyTorch references, and the fallback rule they share;
* :mod:`.motion`: AnimateDiff motion modules on the copy-free temporal forward;
* :mod:`.schedulers`: DDIM and DDIM-inverse schedulers whose step is one fused kernel;
* :mod:`.video_unet`: the Tune-A-Video inflated UNet (``vidgen.inflate``);
* :mod:`.patch`: ``vidgen.patch``/``vidgen.unpatch``, the bookkeeping of what was replaced.

Below it, :mod:`vidgen.ops` (the public ops, the only importer of ``vidgen.kernels``); above it,
sampling, training and the command line. Importing this package imports nothing heavy: each
module is loaded when first used.
"""
