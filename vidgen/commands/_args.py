"""What every subcommand shares: its parser, typed option values, and the checks that run before any work.

Each check refuses a bad value by its flag (``--steps: expected a positive integer, got 0``)
before a model loads or a file is written: argparse ``type=`` functions for single values
(argparse prefixes their messages with ``argument --flag:`` and exits with status 2), and
:func:`check_*` helpers, raising :class:`UsageError`, for what needs the file system or
several options at once.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re

# A latent video diffusion model works on 8x-downsampled latents (every SD-family VAE), and
# beyond 4096 pixels a side one video's activations no longer fit a GPU: refuse, don't OOM.
LATENT_FACTOR = 8
MAX_PIXELS = 4096
SEED_LIMIT = 2**62  # vidgen.ops' seeds (Philox keys): 0 <= seed < 2**62
VIDEO_EXTENSIONS = (".mp4", ".gif")  # what vidgen.video_io.write_video encodes; no extension: PNG frames
LATENT_EXTENSIONS = (".safetensors", ".pt", ".pth")
# A Stable-Diffusion-layout folder: its subfolders, and the configuration file each must hold.
SD_CONFIGS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json", "tokenizer": None,
              "scheduler": "scheduler_config.json"}
# A Stable Video Diffusion folder (image-to-video), recognised by its model_index.json.
SVD_PIPELINE = "StableVideoDiffusionPipeline"
SVD_CONFIGS = {"unet": "config.json", "vae": "config.json", "image_encoder": "config.json",
               "feature_extractor": "preprocessor_config.json", "scheduler": "scheduler_config.json"}


class UsageError(Exception):
    """A bad command-line value; the message starts with the flag it names."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, unless the help already says it in words
    (options whose default depends on the model or the machine say ``default: ...`` themselves);
    an option that is off unless given shows ``(default: none)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        # Identity, not ==: a default of 0 is a value to show, False (a plain flag) is not.
        if "default" in help_ or action.required or action.default is False or action.default is argparse.SUPPRESS:
            return help_
        if action.default is None:
            return f"{help_} (default: none)"
        return super()._get_help_string(action)


def plain(docstring: str) -> str:
    """The first line of a module docstring without its reST markup (``code`` -> code)."""
    return re.sub(r"``(.*?)``", r"\1", docstring.strip().splitlines()[0])


def parser(prog: str, docstring: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=plain(docstring), formatter_class=HelpFormatter)


# ----------------------------------------------------------------------------------------------
# argparse types: one value, refused by argparse with the flag's name
# ----------------------------------------------------------------------------------------------
def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**62), got {value}")
    return value


def finite_float(text: str) -> float:
    return _number(text)


def non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def probability(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text}")
    return value


def pixels(text: str) -> int:
    """A video side in pixels: a multiple of the latent factor, at most ``MAX_PIXELS``."""
    value = _integer(text)
    if not (LATENT_FACTOR <= value <= MAX_PIXELS and value % LATENT_FACTOR == 0):
        raise argparse.ArgumentTypeError(f"expected a multiple of {LATENT_FACTOR} (the VAE's latent factor) "
                                         f"from {LATENT_FACTOR} to {MAX_PIXELS}, got {value}")
    return value


# ----------------------------------------------------------------------------------------------
# Checks that need the file system, the machine or several options
# ----------------------------------------------------------------------------------------------
def check_device(text: str) -> None:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {text} asked for, but no CUDA GPU is visible (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device: {text} asked for, but {torch.cuda.device_count()} CUDA GPU(s) are visible")


def check_backend() -> None:
    """``VIDGEN_BACKEND`` names a backend: refused here rather than at the first op, mid-run."""
    from ..ops import _backend

    try:
        _backend.requested()
    except _backend.BackendUnavailable as exc:
        raise UsageError(str(exc)) from None


def check_exists(flag: str, path: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{flag}: {path} does not exist")


def check_folder(flag: str, path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise UsageError(f"{flag}: {path} is not a folder (expected {what})")


def check_model_folder(flag: str, path: str, configs: dict[str, str | None] = SD_CONFIGS,
                       what: str = "a diffusers Stable Diffusion folder") -> None:
    """A local diffusers folder of ``configs``' layout (default: Stable Diffusion's, which a model
    vidgen saves has too)."""
    check_folder(flag, path, "a local diffusers model folder")
    missing = [sub for sub in configs if not os.path.isdir(os.path.join(path, sub))]
    missing += [f"{sub}/{config}" for sub, config in configs.items()
                if config and sub not in missing and not os.path.isfile(os.path.join(path, sub, config))]
    if missing:
        raise UsageError(f"{flag}: {path} is not {what} (missing {', '.join(missing)})")


def pipeline_class(path: str) -> str | None:
    """The pipeline a diffusers folder names in its model_index.json, or None (no readable index)."""
    try:
        with open(os.path.join(path, "model_index.json")) as f:
            name = json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def read_image(flag: str, path: str):
    """The RGB image at ``path`` (PIL), read now: before any model loads."""
    from PIL import Image

    check_exists(flag, path)
    if os.path.isdir(path):
        raise UsageError(f"{flag}: {path} is a folder; expected an image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise UsageError(f"{flag}: cannot read {path} as an image: {exc}") from None


def check_config_folder(flag: str, path: str, what: str, config_name: str = "config.json") -> dict:
    """A folder holding a diffusers/transformers ``config.json``; returns the config."""
    check_folder(flag, path, what)
    config = os.path.join(path, config_name)
    try:
        with open(config) as f:
            return json.load(f)
    except (OSError, ValueError):
        raise UsageError(f"{flag}: {path} is not {what} (no readable {config_name})") from None


def check_video_out(flag: str, path: str) -> None:
    """``path`` is something :func:`vidgen.video_io.write_video` writes: .mp4, .gif, or a PNG folder."""
    extension = os.path.splitext(path)[1].lower()
    if extension in VIDEO_EXTENSIONS or not extension or os.path.isdir(path):
        if os.path.isfile(path) and not extension:
            raise UsageError(f"{flag}: {path} is a file; a path without an extension is written as a folder of PNGs")
        return
    raise UsageError(f"{flag}: cannot write {extension} videos; give a {' or '.join(VIDEO_EXTENSIONS)} file, "
                     "or a folder name without an extension for one PNG per frame")


def check_latents_path(flag: str, path: str) -> None:
    extension = os.path.splitext(path)[1].lower()
    if extension not in LATENT_EXTENSIONS:
        raise UsageError(f"{flag}: expected a {', '.join(LATENT_EXTENSIONS)} file, got {path!r}")


def read_video_for(flag: str, path: str, num_frames: int, needed_by: str | None = None):
    """The first ``num_frames`` frames of the video at ``path``, read before any model loads;
    ``needed_by`` says which options ask for that many (default: ``--frames``)."""
    from ..video_io import read_video

    check_exists(flag, path)
    try:
        video = read_video(path, max_frames=num_frames)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"{flag}: {str(exc).removeprefix('video: ')}") from None
    if len(video) < num_frames:
        raise UsageError(f"{flag}: {path} has {len(video)} frames, {needed_by or f'--frames asks for {num_frames}'}")
    return video


# Library arguments whose CLI option has another name (vidgen's functions name their arguments
# in every error: "num_frames: expected >= 1"; the command line shows the option instead).
LIBRARY_NAMES = {"path": "model", "unet2d": "model", "num_frames": "frames", "num_inference_steps": "steps",
                 "guidance_scale": "guidance", "clip_dir": "clip"}


def flag_for(parser: argparse.ArgumentParser, name: str) -> str | None:
    """The option of ``parser`` that sets the library argument ``name`` (``batch_size`` -> ``--batch-size``)."""
    dest = LIBRARY_NAMES.get(name, name)
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return max(action.option_strings, key=len)
    return None


def name_flags(parser: argparse.ArgumentParser, message: str) -> str:
    """``message`` with its leading ``name:`` or ``name, name:`` (a library argument) shown as the CLI flags."""
    head, sep, rest = message.partition(": ")
    if not sep or head.startswith("--"):
        return message
    flags = [flag_for(parser, name) for name in head.split(", ")]
    return f"{', '.join(flags)}: {rest}" if all(flags) else message


def fail(parser: argparse.ArgumentParser, exc: Exception) -> int:
    """Report a refused input (:class:`UsageError`, or a library's ValueError/FileNotFoundError) by its flag;
    the exit status of a usage error, 2."""
    import sys

    print(f"{parser.prog}: {name_flags(parser, str(exc))}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------------------------
# Output folders and library noise
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def removing_new_empty_folders(path: str):
    """On failure, remove the folders this run created for ``path`` (its missing parents included)
    and left empty; files, and folders that existed before, are never touched."""
    top = os.path.abspath(path)
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    existed = {os.path.abspath(root) for root, _, _ in os.walk(top)}
    try:
        yield
    except BaseException:
        # Deepest first, so a folder emptied by removing its empty children goes too.
        for root, _, _ in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
            if os.path.abspath(root) not in existed and not os.listdir(root):
                os.rmdir(root)
        raise


@contextlib.contextmanager
def quiet_libraries(quiet: bool):
    """With ``quiet``: no progress bars or info/warning logs from diffusers and transformers (model
    loading, shard writing) for the block; their settings are restored afterwards."""
    if not quiet:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
             for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            (lib.enable_progress_bar if bars else lib.disable_progress_bar)()
