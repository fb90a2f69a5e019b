"""Measured frame-attention tile configs: the table ``benchmarks/sweep_frame_attention.py`` writes.

``kernels/frame_attention_tuned.json`` (shipped with the package) holds, per GPU arch, blocked
head width ``D0 + D1``, dtype, pass and size bucket, the tile config a sweep on that arch chose:
the fastest of the pass's declared candidates (``frame_attention.tile_candidates``) among those
whose output matched the fp32 reference. :func:`tuned_config` reads it::

    {"format": 1,
     "entries": {"sm90": {"48": {"bf16": {"forward": {
         "4096": {"config": "128x64 w8 s3", "ms": 6.1, "gpu": "NVIDIA H200", "triton": "3.6.0", ...},
         "any": {"config": "128x64 w8 s3", "buckets": [4096], ...}}}}}}}

* arch: ``"sm<major><minor>"`` of the GPU measured on (``sm90``: H100/H200).
* size bucket: ``triton.next_power_of_2(N)``, the forward autotuner's bucket
  (``frame_attention.forward_autotune_key``); frame attention is self-attention, so M = N. ``"any"``
  is the config with the least total time over every bucket the sweep measured for that key (among
  configs correct at all of them): the choice for a size the sweep did not run.
* each entry also records its measured milliseconds, the GPU name and the toolchain (Triton,
  PyTorch, CUDA), so a reader can tell what a choice is worth on another setup.

How the launchers use it (``frame_attention._measured_config``): on CUDA, unless
``VIDGEN_AUTOTUNE=0``, the forward asks ``tuned_config("forward", cc, D0 + D1, dtype,
next_power_of_2(N))`` with ``cc`` the device's compute capability as ``10 * major + minor``, and
runs that config without timing anything; a key the table lacks falls back to runtime
autotuning. The backward kernels ask the same for their pass, then the sweep's choice over all
sizes (``n_bucket=None``), then run their default. A config comes back only if the table has
the key *and* the config is still one of ``tile_candidates`` for it, so a table older than the
candidate lists can never launch a config that was not compiled ahead of time (it is ignored
with one warning). An explicit ``config=`` argument (the sweep's own) bypasses the table.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings

from ._launch import next_power_of_2
from .frame_attention import PASSES, LaunchConfig, tile_candidates

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frame_attention_tuned.json")
FORMAT = 1
ANY_SIZE = "any"  # the bucket key of the size-independent choice


def config_text(config: LaunchConfig) -> str:
    """``LaunchConfig(128, 64, 8, 3)`` -> ``"128x64 w8 s3"``, the notation ``LaunchConfig.parse`` reads."""
    return f"{config.block_m}x{config.block_n} w{config.num_warps} s{config.num_stages}"


def arch_name(arch: int | str) -> str:
    """90 or "sm90" -> "sm90"; (9, 0) from ``torch.cuda.get_device_capability`` too."""
    if isinstance(arch, tuple):
        arch = 10 * arch[0] + arch[1]
    if isinstance(arch, str):
        return arch if arch.startswith("sm") else f"sm{arch}"
    return f"sm{int(arch)}"


def arch_number(arch: int | str) -> int:
    """"sm90" -> 90: what ``tile_candidates`` takes (it maps 80..89 to sm_80's tiles, >= 90 to sm_90's)."""
    return int(arch_name(arch).removeprefix("sm"))


def bucket_name(n_bucket: int | str | None) -> str:
    """The JSON key of a size bucket: ``next_power_of_2(N)`` as text (idempotent on a bucket), or "any"."""
    if n_bucket is None or n_bucket == ANY_SIZE:
        return ANY_SIZE
    return str(next_power_of_2(int(n_bucket)))


def entry_path(kernel_pass: str, arch: int | str, width: int, dtype: str, n_bucket=None) -> tuple[str, ...]:
    """The nested keys of one entry, outermost first: arch, width, dtype, pass, bucket."""
    if kernel_pass not in PASSES:
        raise ValueError(f"kernel_pass: expected one of {PASSES}, got {kernel_pass!r}")
    return arch_name(arch), str(int(width)), dtype, kernel_pass, bucket_name(n_bucket)


# ----------------------------------------------------------------------------------------------
# Reading (once per process)
# ----------------------------------------------------------------------------------------------
def read_entries(path: str, *, warn: bool = True) -> dict:
    """The ``entries`` of the table at ``path``; a missing file is empty, a corrupt one is ignored
    (with a warning when ``warn``): a bad table costs tuning, never a launch."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problem = f"{type(exc).__name__}: {exc}"
    else:
        if isinstance(table, dict) and table.get("format") == FORMAT and isinstance(table.get("entries"), dict):
            return table["entries"]
        problem = f"not a format-{FORMAT} table"
    if warn:
        warnings.warn(f"ignoring the tuned frame-attention table {path} ({problem})")
    return {}


@functools.cache
def _table() -> dict:
    return read_entries(TABLE_PATH)


def _ignore(where: tuple[str, ...], shown: str, why: str) -> None:
    warnings.warn(f"tuned frame-attention table: ignoring {'/'.join(where)} = {shown} ({why}); "
                  "the launcher's own choice runs instead")


def tuned_config(kernel_pass: str, arch: int | str, width: int, dtype: str,
                 n_bucket: int | None = None) -> LaunchConfig | None:
    """The measured best config of ``kernel_pass`` ("forward", "backward_dq", "backward_dkdv") for
    compute capability ``arch`` (90, or "sm90"), blocked head width ``width`` (D0 + D1), ``dtype``
    ("fp16", "bf16") and size bucket ``n_bucket`` (``next_power_of_2(N)``; an N is rounded up to
    its bucket; None: the sweep's choice over all sizes), or None when the table lacks the key or
    names a config that is not a declared candidate for it (warned once)."""
    return _lookup(entry_path(kernel_pass, arch, width, dtype, n_bucket))


@functools.cache
def _lookup(where: tuple[str, ...]) -> LaunchConfig | None:
    """One resolution per key and process: a launch pays a dictionary lookup, and a bad entry
    warns once, not on every launch."""
    arch, width, dtype, kernel_pass, _ = where
    node = _table()
    for key in where:
        node = node.get(key) if isinstance(node, dict) else None
    if node is None:
        return None
    text = node.get("config") if isinstance(node, dict) else None
    try:
        config = LaunchConfig.parse(text)
    except (AttributeError, TypeError, ValueError):
        _ignore(where, repr(text), "not a config in the tables' notation, e.g. '128x64 w8 s3'")
        return None
    try:
        declared = tile_candidates(kernel_pass, int(width), dtype, arch_number(arch))
    except KeyError:  # a width or dtype the kernels have no tiles for: nothing to launch
        declared = ()
    if config not in declared:
        _ignore(where, repr(text), "not among the declared candidates "
                f"({', '.join(config_text(c) for c in declared) or 'none'}): the table is older than the tile lists")
        return None
    return config


# ----------------------------------------------------------------------------------------------
# Writing (the sweep)
# ----------------------------------------------------------------------------------------------
def merge_entries(existing: dict, measured: dict[tuple[str, ...], dict]) -> dict:
    """``existing`` entries with each ``measured`` entry (keyed by :func:`entry_path`) set or
    replaced; every other entry -- other archs, widths, dtypes, passes, buckets -- is kept."""
    merged = json.loads(json.dumps(existing))  # a deep copy: the caller's dict stays as it was
    for where, entry in measured.items():
        node = merged
        for key in where[:-1]:
            child = node.get(key)
            node[key] = child = child if isinstance(child, dict) else {}
            node = child
        node[where[-1]] = entry
    return merged


def write_table(path: str, measured: dict[tuple[str, ...], dict]) -> dict:
    """Merges ``measured`` into the table at ``path`` as it is on disk now and replaces the file
    atomically (a reader sees the old table or the new one, never half of one). Returns the entries."""
    entries = merge_entries(read_entries(path), measured)
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".frame_attention_tuned-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
            f.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make the shipped table private
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return entries
