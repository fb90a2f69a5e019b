"""Pick the fastest of a kernel's precompiled launch configs once per problem class, and remember it.

A launcher lists a few candidate configs, the first being its static default, each of them
declared in its module's ``aot_specs()`` (so every one compiles for sm_80 and sm_90 in CI).
:func:`pick` times every candidate on the call's real arguments the first time a key is
seen, keeps the fastest, and writes the choice to a JSON file under
``$VIDGEN_CACHE/autotune/`` (default ``~/.cache/vidgen``). There is one file per GPU model and
toolchain -- GPU name, compute capability, Triton and PyTorch versions are in its name -- so a
different GPU or toolchain never reuses a choice. Each file is read once per process; later
calls are a dictionary lookup.

Nothing is timed, and the default (first) candidate runs, when

* ``VIDGEN_AUTOTUNE=0`` (a reproducible baseline: the cache is not consulted either),
* there is a single candidate,
* the tensors are not on CUDA (Triton's interpreter, CPU),
* the current stream is being captured into a CUDA graph (timing synchronises the device);
  a choice already cached for the key is still used.

Keys hold only JSON values (ints, strings, nested tuples) and bucket the sizes, so a new size
inside a bucket reuses the choice. Choosing a config never compiles anything the kernel's
declared configs would not: a new key costs one timing of each candidate, nothing more.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import triton
import triton.testing

from ._cache import cache_dir

Candidate = TypeVar("Candidate")

DISABLE_ENV = "VIDGEN_AUTOTUNE"  # "0": always run the default candidate


def measure_ms(run: Callable[[], object], device: torch.device) -> float:
    """Median time of ``run()`` in milliseconds on ``device``'s current stream, L2 flushed before
    each run (the first run, which may compile, is not timed). Tests substitute a fake timer here."""
    with torch.cuda.device(device):
        return triton.testing.do_bench(run, warmup=10, rep=50, return_mode="median")


def device_tag(device: torch.device) -> str:
    """What a choice is valid for, as a file name: GPU model, compute capability, Triton, PyTorch."""
    major, minor = torch.cuda.get_device_capability(device)
    tag = f"{torch.cuda.get_device_name(device)}-sm{major}{minor}-triton{triton.__version__}-torch{torch.__version__}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag)


class _ChoiceFile:
    """The choices of one device tag: its JSON file ({entry key: {"choice", "ms"}}), read once."""

    def __init__(self, path: str):
        self.path = path
        self.entries = _read_entries(path, warn=True)
        self.resolved: dict[tuple, object] = {}  # (kernel name, key) -> candidate: the per-call lookup

    def lookup(self, entry_key: str) -> str | None:
        entry = self.entries.get(entry_key)
        return entry.get("choice") if isinstance(entry, dict) else None

    def record(self, entry_key: str, entry: dict) -> None:
        """Remember ``entry`` and write it through: merged into the file as it is on disk now (other
        processes may have added keys since it was read), replaced atomically."""
        self.entries[entry_key] = entry
        merged = _read_entries(self.path, warn=False)
        merged[entry_key] = entry
        try:
            _write_atomically(self.path, merged)
        except OSError as exc:  # a read-only cache costs a re-tune next process, not a failure
            warnings.warn(f"autotune cache {self.path} not written ({exc}); the choice is kept for this process")


_choice_files: dict[tuple[str, torch.device], _ChoiceFile] = {}


def _choice_file(device: torch.device) -> _ChoiceFile:
    root = cache_dir()
    found = _choice_files.get((root, device))
    if found is None:
        found = _ChoiceFile(os.path.join(root, "autotune", f"{device_tag(device)}.json"))
        _choice_files[(root, device)] = found
    return found


def _read_entries(path: str, warn: bool) -> dict:
    """The file's entries; a missing file is empty, an unreadable or corrupt one is ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (FileNotFoundError, NotADirectoryError):  # no file yet (a bad cache folder warns at write)
        return {}
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problem = f"{type(exc).__name__}: {exc}"
    else:
        if isinstance(entries, dict):
            return entries
        problem = f"expected a JSON object, got {type(entries).__name__}"
    if warn:
        warnings.warn(f"ignoring autotune cache {path} ({problem}); its choices will be timed again")
    return {}


def _write_atomically(path: str, entries: dict) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".autotune-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def tuning_enabled() -> bool:
    """False under ``VIDGEN_AUTOTUNE=0``: the defaults only, nothing timed or looked up."""
    return os.environ.get(DISABLE_ENV, "1").strip() != "0"


def pick(kernel_name: str, key: tuple, candidates: Sequence[Candidate],
         run_candidate: Callable[[Candidate], object], device: torch.device) -> Candidate:
    """The candidate to launch for ``key`` (see the module docstring for when nothing is timed).

    Args:
        kernel_name: names the kernel in the cache file (keys of different kernels never mix).
        key: JSON values only; everything the best candidate depends on (head width, dtype,
            arch, bucketed sizes), and everything ``candidates`` depend on.
        candidates: distinct configs whose ``repr`` names them (frozen dataclasses); the first
            is the default.
        run_candidate: launches the kernel once with a candidate on the real arguments. It runs
            several times per candidate, so it may only write the kernel's outputs.
        device: the tensors' device.
    """
    if not candidates:
        raise ValueError(f"{kernel_name}: expected at least one candidate config, got none")
    default = candidates[0]
    if len(candidates) == 1 or not tuning_enabled() or device.type != "cuda":
        return default
    choices = _choice_file(device)
    resolved = choices.resolved.get((kernel_name, key))
    if resolved is not None and resolved in candidates:  # every call after a key's first
        return resolved
    by_name = {repr(c): c for c in candidates}
    if len(by_name) != len(candidates):
        raise ValueError(f"{kernel_name}: candidate configs must be distinct, got {list(by_name)}")
    entry_key = f"{kernel_name}:{json.dumps(key)}"
    cached = by_name.get(choices.lookup(entry_key))
    if cached is not None:  # a choice made for other candidates (an older vidgen) is timed again
        choices.resolved[(kernel_name, key)] = cached
        return cached
    if torch.cuda.is_current_stream_capturing():
        return default
    try:
        times = {name: measure_ms(lambda c=c: run_candidate(c), device) for name, c in by_name.items()}
    except torch.cuda.OutOfMemoryError as exc:  # do_bench's 256 MB L2-flush buffer on a full GPU
        warnings.warn(f"{kernel_name}: not autotuned, the GPU is out of memory ({exc}); "
                      "the default config runs for this key until the process ends")
        choices.entries[entry_key] = {"choice": repr(default)}  # in memory only: a later process tunes
        return default
    fastest = min(times, key=times.get)
    choices.record(entry_key, {"choice": fastest, "ms": times})
    choices.resolved[(kernel_name, key)] = by_name[fastest]
    return by_name[fastest]
