"""Frame-parallel sampling on paper: bytes per collective per denoising step, and the predicted speedup.

    python -m benchmarks.parallel_model [--ranks 2 4 8] [--step-seconds-animatediff S] [--step-seconds-svd S]

The bytes are counted from the real module structure: each model is built on the meta device (no
weights, no memory) and run once with hooks on every layer that mixes frames, which record the
shapes it sees. Each such layer then costs what :mod:`vidgen.integration.frame_parallel` exchanges
for it (bytes a rank sends per denoising step, fp16 activations, classifier-free guidance batch 2):

* temporal attention (AnimateDiff motion modules; SVD's temporal transformer blocks): an all-to-all
  to whole columns of frames and one back, ``2 (P-1)/P`` of a rank's shard of the activation;
* a GroupNorm whose statistics span the frames: an all-reduce of 3 B G float64 (ring: ``2 (P-1)/P``);
* a temporal convolution (SVD's temporal ResNets, kernel 3 over frames): a halo of one frame to each
  neighbour;
* the prediction: one all-gather per step (``(P-1)/P`` of the latents), plus the 3-number input
  fingerprint per input.

SVD's count is what vidgen's SVD frame-parallel path moves (the temporal blocks' all-to-alls, the
temporal ResNets' norms and halos, the prediction's gather; its VAE decode, split by decode chunks
with one all-gather at the end of sampling, is not a per-step cost). The speedup is
``T1 / (T1 / P + bytes / bandwidth + collectives * latency)``: the spatial work divides by P, no
communication overlaps it (the motion module's exchanges sit on its critical path; the frame
attention's K/V transfer does overlap the query projection, ignored here), and T1 is the
single-GPU step time: measured when a GPU result exists in benchmarks/results/ (none yet), else
the stated assumption of ``--step-seconds-*``. Bandwidths: NVLink (H200) 900 GB/s, PCIe 5 x16
64 GB/s, as the issue states them; latency per collective 10 us (NVLink) and 20 us (PCIe).
Results are written through ``harness.write_results`` tagged ``"prediction": true``, with a plot.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import torch

from benchmarks import harness

LINKS = {"nvlink_h200": (900e9, 10e-6), "pcie5_x16": (64e9, 20e-6)}
ACTIVATION_BYTES = 2  # fp16
# Single-GPU seconds per denoising step (CFG batch 2, fp16) on an H200 when no measurement exists:
# SD1.5's UNet at 512x512 is ~20 ms per image-pair step on an A100; AnimateDiff runs 16 frames
# (x16) plus motion modules (~+15%), and an H200 is taken as ~1.6x an A100: ~0.4 s. SVD-XT 25
# frames at 576x1024: ~1.0 s per step on an A100, ~0.6 s on an H200.
ASSUMED_STEP_SECONDS = {"animatediff": 0.40, "svd": 0.60}


# ----------------------------------------------------------------------------------------------
# What mixes frames, recorded from a meta-device forward
# ----------------------------------------------------------------------------------------------
def _animatediff_layers(frames: int, height: int, width: int) -> tuple[list[dict], tuple[int, ...]]:
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    from vidgen.default_model import _CONFIGS

    with torch.device("meta"):
        unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(**_CONFIGS["sd15"]["unet"]), MotionAdapter())
    layers = []

    def record(module, args, kwargs):
        hidden = args[0]
        layers.append({"kind": "temporal_attention", "videos": hidden.shape[0] // frames, "frames": frames,
                       "positions": hidden.shape[2] * hidden.shape[3], "channels": module.proj_in.out_features,
                       "blocks": 1})
        layers.append({"kind": "group_norm", "videos": hidden.shape[0] // frames, "groups": module.norm.num_groups})

    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            module.register_forward_pre_hook(record, with_kwargs=True)
    latents = (2, 4, frames, height // 8, width // 8)
    with torch.no_grad():
        unet(torch.empty(latents, device="meta"), 999, torch.empty(2 * frames, 77, 768, device="meta"))
    return layers, latents


def _svd_layers(frames: int, height: int, width: int) -> tuple[list[dict], tuple[int, ...]]:
    from diffusers import UNetSpatioTemporalConditionModel
    from diffusers.models.resnet import TemporalResnetBlock
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel().to("meta")  # SVD's configuration (its mix factors are made on the CPU)
    layers = []

    def record_transformer(module, args, kwargs):
        hidden = args[0]  # (B*F, C, h, w)
        videos = hidden.shape[0] // frames
        layers.append({"kind": "temporal_attention", "videos": videos, "frames": frames,
                       "positions": hidden.shape[2] * hidden.shape[3], "channels": module.proj_in.out_features,
                       "blocks": len(module.temporal_transformer_blocks)})

    def record_resnet(module, args, kwargs):
        hidden = args[0]  # (B, C, F, h, w)
        videos, channels, _, h, w = hidden.shape
        for norm in (module.norm1, module.norm2):
            layers.append({"kind": "group_norm", "videos": videos, "groups": norm.num_groups})
        for conv in (module.conv1, module.conv2):
            layers.append({"kind": "halo", "videos": videos, "frame_elements": conv.in_channels * h * w})

    for module in unet.modules():
        if isinstance(module, TransformerSpatioTemporalModel):
            module.register_forward_pre_hook(record_transformer, with_kwargs=True)
        elif isinstance(module, TemporalResnetBlock):
            module.register_forward_pre_hook(record_resnet, with_kwargs=True)
    latents = (2, unet.config.out_channels, frames, height // 8, width // 8)
    sample = torch.empty(2, frames, unet.config.in_channels, height // 8, width // 8, device="meta")
    with torch.no_grad(), torch.device("meta"):  # the forward's own constants too
        unet(sample, 999, torch.empty(2, 1, unet.config.cross_attention_dim), torch.empty(2, 3))
    return layers, latents


# ----------------------------------------------------------------------------------------------
# Bytes a rank sends per step, by collective
# ----------------------------------------------------------------------------------------------
def bytes_per_step(layers: list[dict], latents: tuple[int, ...], ranks: int) -> dict:
    """Bytes one rank sends per denoising step, by collective, and the number of collectives."""
    p = ranks
    sent = {"all_to_all": 0.0, "all_reduce": 0.0, "halo": 0.0, "all_gather": 0.0}
    count = {key: 0 for key in sent}
    for layer in layers:
        if layer["kind"] == "temporal_attention":
            shard = layer["videos"] * layer["frames"] * layer["positions"] * layer["channels"] * ACTIVATION_BYTES / p
            sent["all_to_all"] += 2 * layer["blocks"] * shard * (p - 1) / p  # there and back
            count["all_to_all"] += 2 * layer["blocks"]
        elif layer["kind"] == "group_norm":
            sent["all_reduce"] += 3 * layer["videos"] * layer["groups"] * 8 * 2 * (p - 1) / p
            count["all_reduce"] += 1
        elif layer["kind"] == "halo":
            sent["halo"] += 2 * layer["videos"] * layer["frame_elements"] * ACTIVATION_BYTES  # a frame each way
            count["halo"] += 1
    latent_bytes = ACTIVATION_BYTES * torch.Size(latents).numel()
    sent["all_gather"] = latent_bytes / p * (p - 1) + 9 * 8 * (p - 1)  # prediction + input fingerprint
    count["all_gather"] = 2
    return {"bytes": sent, "collectives": count}


def _measured_step_seconds(model: str) -> float | None:
    """A single-GPU step time from benchmarks/results/ (bench_e2e's per-step rows), if one exists."""
    for path in sorted(glob.glob(os.path.join(harness.RESULTS_DIR, "e2e-*.json")), reverse=True):
        with open(path) as f:
            rows = json.load(f).get("rows", [])
        for row in rows:
            if model in str(row.get("model", "")).lower() and "step_seconds" in row:
                return float(row["step_seconds"])
    return None


def predict(model: str, layers, latents, ranks: int, step_seconds: float, source: str) -> list[dict]:
    counted = bytes_per_step(layers, latents, ranks)
    total = sum(counted["bytes"].values())
    collectives = sum(counted["collectives"].values())
    rows = []
    for link, (bandwidth, latency) in LINKS.items():
        comm = total / bandwidth + collectives * latency
        parallel = step_seconds / ranks + comm
        rows.append({
            "prediction": True, "model": model, "ranks": ranks, "link": link, "label": f"{model} {ranks} ranks {link}",
            **{f"{kind}_bytes": value for kind, value in counted["bytes"].items()},
            **{f"{kind}_collectives": value for kind, value in counted["collectives"].items()},
            "total_bytes": total, "comm_seconds": comm, "single_gpu_step_seconds": step_seconds,
            "step_seconds_source": source, "parallel_step_seconds": parallel, "speedup": step_seconds / parallel,
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--step-seconds-animatediff", type=float, default=None,
                        help=f"single-GPU step time (default: measured, else {ASSUMED_STEP_SECONDS['animatediff']})")
    parser.add_argument("--step-seconds-svd", type=float, default=None,
                        help=f"single-GPU step time (default: measured, else {ASSUMED_STEP_SECONDS['svd']})")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)
    cases = {"animatediff": (_animatediff_layers, (16, 512, 512), args.step_seconds_animatediff),
             "svd": (_svd_layers, (25, 576, 1024), args.step_seconds_svd)}
    rows = []
    for model, (layers_of, shape, given) in cases.items():
        layers, latents = layers_of(*shape)
        measured = _measured_step_seconds(model)
        if given is not None:
            seconds, source = given, "given"
        elif measured is not None:
            seconds, source = measured, "measured"
        else:
            seconds, source = ASSUMED_STEP_SECONDS[model], "assumed"
        for ranks in args.ranks:
            rows += predict(model, layers, latents, ranks, seconds, source)
    print(f"{'case':40s} {'MB sent/step':>12s} {'comm ms':>8s} {'speedup':>8s}")
    for row in rows:
        print(f"{row['label']:40s} {row['total_bytes'] / 1e6:12.1f} {row['comm_seconds'] * 1e3:8.2f} "
              f"{row['speedup']:8.2f}")
    env = {"date": harness.environment()["date"], "commit": harness.commit(), "gpu": "prediction",
           "torch": torch.__version__, "prediction": True}  # harness.is_prediction: not read as measurements
    stem = harness.write_results("parallel_model", rows, env, results_dir=args.results_dir)
    harness.plot_speedups(stem, rows, label_key="label", speedup_key="speedup",
                          title="Frame-parallel sampling: predicted speedup per step (exact)")
    print(f"wrote {stem}.json, .csv, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
