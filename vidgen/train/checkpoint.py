"""Training checkpoints: one safetensors file per run, replaced atomically every N steps.

A checkpoint holds everything a resumed run needs to continue *exactly* where the interrupted
one was: the trained parameters (by name), the optimizer state (AdamW moments and step counts),
the loss scaler state, the step and the loss history. The run's random numbers are a function
of (seed, step, rank) (:func:`step_generator`), so noise, timesteps and data order need no saved
RNG state: step s of a resumed run draws exactly what step s of an uninterrupted run drew.

Atomicity: the file is written under a temporary name in the same folder, flushed to disk
(fsync), then renamed over the previous checkpoint (``os.replace``, atomic on POSIX), and the
folder entry is fsynced. A crash at any moment leaves either the old or the new checkpoint,
never a torn one, so an interrupted run loses at most ``checkpoint_every`` steps.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CHECKPOINT_NAME = "checkpoint.safetensors"
_FORMAT = "vidgen-train-checkpoint-1"


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of training step ``step`` on rank ``rank``: counter-based randomness,
    so a resumed run needs no RNG state and every rank draws its own stream."""
    # Distinct (seed, step, rank) map to distinct 63-bit seeds for any realistic run length.
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + rank) & (2**63 - 1))


def atomic_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """Write a safetensors file so that ``path`` is always either the old file or the complete new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, temporary, metadata=metadata)
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Persist the rename itself (the directory entry); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Checkpoint:
    """A loaded checkpoint: what :func:`save_checkpoint` wrote."""

    step: int
    params: dict[str, torch.Tensor]
    optimizer_state: dict
    scaler_state: dict
    losses: list[float]
    run: dict  # the settings that must match for an exact resume


def save_checkpoint(path: str, *, step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, losses: list[float], run: dict) -> None:
    """Write the training state after ``step`` completed steps (see the module docstring)."""
    tensors = {f"param/{name}": p for name, p in params.items()}
    state = optimizer.state_dict()
    plain_state: dict[str, dict] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                plain_state.setdefault(str(index), {})[key] = value
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    metadata = {
        "format": _FORMAT,
        "step": str(step),
        "param_names": json.dumps(list(params)),
        "optimizer_param_groups": json.dumps(state["param_groups"]),
        "optimizer_plain_state": json.dumps(plain_state),
        "scaler": json.dumps(scaler.state_dict() if scaler.is_enabled() else {}),
        "run": json.dumps(run, sort_keys=True),
    }
    atomic_save(tensors, path, metadata)


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"checkpoint: {path} is not a vidgen training checkpoint (format {metadata.get('format')!r})")
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    names = json.loads(metadata["param_names"])
    optimizer_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, entry = key.split("/", 2)
            optimizer_state.setdefault(int(index), {})[entry] = value
    for index, entries in json.loads(metadata["optimizer_plain_state"]).items():
        optimizer_state.setdefault(int(index), {}).update(entries)
    return Checkpoint(
        step=int(metadata["step"]),
        params={name: tensors[f"param/{name}"] for name in names},
        optimizer_state={"state": optimizer_state, "param_groups": json.loads(metadata["optimizer_param_groups"])},
        scaler_state=json.loads(metadata["scaler"]),
        losses=tensors["losses"].tolist(),
        run=json.loads(metadata["run"]),
    )


def restore(checkpoint: Checkpoint, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, run: dict) -> None:
    """Load a checkpoint into a freshly set-up run; refuses one made by a different run."""
    changed = {k: (checkpoint.run.get(k), v) for k, v in run.items() if checkpoint.run.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in sorted(changed.items()))
        raise ValueError(f"resume: the checkpoint was written by a run with other settings ({detail}); "
                         "use the same settings or another --out folder")
    if list(checkpoint.params) != list(params):
        raise ValueError("resume: the checkpoint's trained parameters are not this model's "
                         f"({len(checkpoint.params)} saved, {len(params)} trainable)")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(checkpoint.params[name])
    optimizer.load_state_dict(checkpoint.optimizer_state)
    if scaler.is_enabled() and checkpoint.scaler_state:
        scaler.load_state_dict(checkpoint.scaler_state)
