"""The training loop shared by one-shot tuning and Video Adapter training.

One optimizer step per training step (batch per rank, no accumulation): forward under autocast
(bf16, or fp16 with a GradScaler), backward, unscale, clip the gradient norm, AdamW step with a
constant learning rate. Only the parameters handed in as trainable require gradients and have
optimizer state; everything else is frozen and stays bit-identical.

Data parallelism comes from ``accelerate``: launched with ``accelerate launch`` (or torchrun),
the model is wrapped in DistributedDataParallel (NCCL on GPUs, gloo on CPU processes), each rank
draws its own batch and noise (:func:`~vidgen.train.checkpoint.step_generator`), gradients are
averaged, and rank 0 writes checkpoints, the loss curve and the model.

A run continues from its output folder's checkpoint only when asked (``resume``), and refuses to
start over an existing one, so no finished or interrupted work is overwritten by accident.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from ..default_model import atomic_folder
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, restore, save_checkpoint

MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainSettings:
    """Optimisation settings (defaults: Tune-A-Video's recipe, METHODS.md section 6)."""

    steps: int = 500
    lr: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = True
    checkpoint_every: int = 100
    resume: bool = False
    seed: int = 0
    device: str | None = None  # None: CUDA when available (or the rank's GPU under accelerate launch)
    progress: bool = True

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: expected one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every: expected >= 1, got {self.checkpoint_every}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm: expected > 0, got {self.max_grad_norm}")


def resolve_settings(settings: TrainSettings | None, overrides: dict) -> TrainSettings:
    """``settings`` (default: the defaults) with individual fields replaced."""
    if settings is None:
        return TrainSettings(**overrides)
    return dataclasses.replace(settings, **overrides)


@dataclass
class TrainResult:
    """What a run produced: the per-step losses (averaged over ranks) of the whole run, resumed
    parts included, and the files written (rank 0)."""

    losses: list[float]
    out: str
    resumed_from: int = 0
    files: dict[str, str] = field(default_factory=dict)
    model: torch.nn.Module | None = None  # the trained model (unwrapped, eval mode)


# loss_fn(model, step, rank, world) -> scalar loss of this rank's batch at ``step``.
LossFn = Callable[[torch.nn.Module, int, int, int], torch.Tensor]


def make_accelerator(device: str | None):
    from accelerate import Accelerator

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda' (the rank's GPU is chosen by accelerate), got {device!r}")
    # Mixed precision is handled here (autocast + GradScaler), not by accelerate, whose process-wide
    # state would pin one precision for every run of a process.
    return Accelerator(cpu=cpu, mixed_precision="no")


def peak_memory_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}GiB rss"


def optimizer_step(compute_loss: Callable[[], torch.Tensor], params: list[torch.nn.Parameter],
                   optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None,
                   max_grad_norm: float, device: torch.device) -> torch.Tensor:
    """One training step: forward under autocast, (scaled) backward, unscale, clip, step, update.
    Returns the loss (detached, not synchronised)."""
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss = compute_loss()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train(model: torch.nn.Module, trainable: list[str], loss_fn: LossFn, settings: TrainSettings, out: str,
          run: dict, accelerator, on_finish: Callable[[torch.nn.Module], dict[str, str]] | None = None) -> TrainResult:
    """Train ``model``'s parameters named in ``trainable`` (all others frozen) for ``settings.steps``.

    ``run`` identifies the run for resume (a checkpoint from a run with other values is refused).
    ``on_finish(model)`` is called on rank 0 with the unwrapped, trained model and returns the
    files it wrote. Checkpoints go to ``out/checkpoint.safetensors``.
    """
    device = accelerator.device
    named = dict(model.named_parameters())
    unknown = [n for n in trainable if n not in named]
    if unknown or not trainable:
        raise ValueError(f"trainable: no parameters to train ({'unknown: ' + str(unknown[:3]) if unknown else 'empty'})")
    model.requires_grad_(False)
    params = {name: named[name] for name in trainable}
    for param in params.values():
        param.requires_grad_(True)
    model.to(device)
    model.train()
    if settings.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params.values(), lr=settings.lr, betas=settings.betas,
                                  weight_decay=settings.weight_decay)
    amp_dtype = MIXED_PRECISION[settings.mixed_precision]
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise ValueError("mixed_precision: fp16 training needs a CUDA device; use bf16 or no on CPU")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    run = {**run, **{k: v for k, v in asdict(settings).items()
                     if k not in ("steps", "checkpoint_every", "resume", "progress", "device", "gradient_checkpointing")},
           "world_size": accelerator.num_processes}
    run["betas"] = list(settings.betas)

    checkpoint_path = os.path.join(out, CHECKPOINT_NAME)
    losses: list[float] = []
    start = 0
    if not settings.resume and os.path.isfile(checkpoint_path):
        raise ValueError(f"out: {out} holds the checkpoint of an earlier run; resume it (--resume) or "
                         "choose another output folder (nothing is overwritten)")
    if settings.resume and os.path.isfile(checkpoint_path):
        checkpoint = load_checkpoint(checkpoint_path)
        restore(checkpoint, params, optimizer, scaler, run)
        start, losses = checkpoint.step, checkpoint.losses[:checkpoint.step]
    wrapped = accelerator.prepare_model(model) if accelerator.num_processes > 1 else model

    rank, world = accelerator.process_index, accelerator.num_processes
    bar = tqdm(range(start, settings.steps), initial=start, total=settings.steps, desc="training",
               disable=not (settings.progress and accelerator.is_main_process))
    for step in bar:
        began = time.perf_counter()
        loss = optimizer_step(lambda: loss_fn(wrapped, step, rank, world), list(params.values()), optimizer, scaler,
                              amp_dtype, settings.max_grad_norm, device)
        mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean") if world > 1 else loss.detach()
        losses.append(float(mean_loss))  # one host sync per step: the loss shown and saved
        bar.set_postfix(loss=f"{losses[-1]:.4f}", step_ms=f"{1000 * (time.perf_counter() - began):.0f}",
                        peak=peak_memory_text(device))
        done = step + 1
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            if accelerator.is_main_process:
                save_checkpoint(checkpoint_path, step=done, params=params, optimizer=optimizer, scaler=scaler,
                                losses=losses, run=run)
            accelerator.wait_for_everyone()
    bar.close()

    model.requires_grad_(False)
    if settings.gradient_checkpointing:
        model.disable_gradient_checkpointing()
    model.eval()
    files: dict[str, str] = {}
    if accelerator.is_main_process:
        files["checkpoint"] = checkpoint_path
        files["loss_curve"] = plot_losses(losses, os.path.join(out, "loss.png"))
        if on_finish is not None:
            files.update(on_finish(model))
    accelerator.wait_for_everyone()
    return TrainResult(losses=losses, out=out, resumed_from=start, files=files, model=model)


def plot_losses(losses: list[float], path: str) -> str:
    """The per-step loss and its running mean, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = len(losses) // 20  # the per-step loss is noisy (one random timestep per video)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.5 if window > 1 else 1.0, label="loss")
    if window > 1:
        running = torch.tensor(losses).unfold(0, window, 1).mean(1).tolist()
        ax.plot(range(window, len(losses) + 1), running, lw=1.6, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_video_model(unet: torch.nn.Module, source_dir: str, out: str, prediction_type: str) -> str:
    """Make ``out`` a Stable-Diffusion-layout folder that ``VideoModel.from_pretrained`` (and so
    ``vidgen sample --model out``) loads: the trained VideoUNet in ``unet/`` (safetensors), the
    other components linked (hard links; copies across file systems) from ``source_dir``, and the
    scheduler configured with the ``prediction_type`` the UNet was trained for."""
    import json
    import shutil

    scheduler_config = os.path.join(source_dir, "scheduler", "scheduler_config.json")
    with open(scheduler_config) as f:
        config = json.load(f)
    target = os.path.join(out, "scheduler", "scheduler_config.json")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".tmp", "w") as f:
        json.dump({**config, "prediction_type": prediction_type}, f, indent=2)
    os.replace(target + ".tmp", target)  # a new file: never writes through a hard link into the source model
    for component in ("vae", "text_encoder", "tokenizer", "model_index.json"):
        source, target = os.path.join(source_dir, component), os.path.join(out, component)
        if os.path.exists(target) or not os.path.exists(source):
            continue
        if os.path.isdir(source):
            shutil.copytree(source, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, target)
    final = os.path.join(out, "unet")
    with atomic_folder(final) as staging:
        unet.save_pretrained(staging, safe_serialization=True)
    return final


def _link_or_copy(source: str, target: str) -> None:
    import shutil

    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
