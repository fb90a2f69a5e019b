"""The tile configs of the frame-attention kernels and how a launch picks one of them.

* The declared candidates, ``_TILES[(pass, arch, kind)][width]`` (:func:`tile_candidates`; the
  key is ``_launch.table_key``, ``width`` the blocked head width D0 + D1): the first is the default,
  the others the alternatives the forward autotuner times and the sweep measures. Every one is
  compiled ahead of time for its arch (``frame_attention.aot_specs``) and may keep no spill stack
  unless :func:`allowed_stack` names one: a config that spills is not shipped (docs/DEVELOPING.md,
  "Why the tile tables look as they do").
* The forward's runtime autotuning key (:func:`forward_autotune_key`, for ``kernels/_autotune.py``).
* The measured table ``frame_attention_tuned.json`` (shipped with the package, written only by
  ``tools/sweep_frame_attention.py``): per GPU arch, blocked head width, dtype, pass and
  size bucket, the config a sweep on that arch chose, the fastest of the pass's declared
  candidates whose output matched the fp32 reference. :func:`tuned_config` reads it::

    {"format": 1,
     "entries": {"sm90": {"48": {"bf16": {"forward": {
         "4096": {"config": "128x64 w8 s3", "ms": 6.1, "gpu": "NVIDIA H200", "triton": "3.6.0", ...},
         "any": {"config": "128x64 w8 s3", "buckets": [4096], ...}}}}}}}

  - arch: ``"sm<major><minor>"`` of the GPU measured on (``sm90``: H100/H200).
  - size bucket: ``next_power_of_2(N)``, the forward autotuner's bucket; frame attention is
    self-attention, so M = N. ``"any"`` is the config with the least total time over every
    bucket the sweep measured for that key (among configs correct at all of them): the choice
    for a size the sweep did not run.
  - each entry also records its measured milliseconds, the GPU name and the toolchain (Triton,
    PyTorch, CUDA), so a reader can tell what a choice is worth on another setup.

How the launchers use them (``frame_attention._measured_config``): on CUDA, unless
``VIDGEN_AUTOTUNE=0``, the forward asks ``tuned_config("forward", cc, D0 + D1, dtype,
next_power_of_2(N))`` with ``cc`` the device's compute capability as ``10 * major + minor``, and
runs that config without timing anything; a key the table lacks falls back to runtime
autotuning among the candidates. The backward kernels ask the same for their pass, then the
sweep's choice over all sizes (``n_bucket=None``), then run their default. A config comes back
only if the table has the key *and* the config is still a declared candidate for it, so a table
older than the candidate lists can never launch a config that was not compiled ahead of time (it
is ignored with one warning). An explicit ``config=`` argument (the sweep's own) bypasses the table.
"""
from __future__ import annotations

import functools
import json
import os
import warnings

from ._launch import ARCHS, LaunchConfig, next_power_of_2, stack_allowance, table_key

PASSES = ("forward", "backward_dq", "backward_dkdv")
TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frame_attention_tuned.json")
FORMAT = 1
ANY_SIZE = "any"  # the bucket key of the size-independent choice


# ----------------------------------------------------------------------------------------------
# Declared candidates
# ----------------------------------------------------------------------------------------------
# fp16 and bf16 share the "tensor" rows (tensor cores, fp32 accumulation); "fp32" rows run exact
# fp32 products on CUDA cores. Wide heads take more warps or fewer rows: per-thread state grows
# with rows x D / threads, and every entry here compiles without a spill stack at 255 registers on
# the oldest and newest Triton except those in ``_STACK_ALLOWANCES``.
_TILES = {
    ("forward", 90, "tensor"): {
        16: ("128x64 w4 s3", "64x64 w4 s3"), 32: ("128x64 w4 s3", "64x64 w4 s3"),
        48: ("128x64 w8 s3", "64x64 w4 s3"), 64: ("128x64 w8 s3", "64x64 w8 s2"),
        80: ("128x64 w8 s2", "64x64 w8 s2"), 128: ("128x64 w8 s3", "64x64 w8 s2"),
        160: ("128x32 w8 s3", "64x32 w8 s2"), 256: ("64x16 w8 s2",),
    },
    ("forward", 80, "tensor"): {
        16: ("128x64 w4 s3", "64x64 w4 s3"), 32: ("128x64 w4 s3", "64x64 w4 s3"),
        48: ("128x64 w8 s3", "64x64 w4 s3"), 64: ("64x64 w8 s2", "64x32 w4 s3"),
        80: ("128x64 w8 s2", "64x64 w8 s2"), 128: ("64x64 w8 s2", "64x32 w8 s2"),
        160: ("128x32 w16 s2", "64x16 w4 s2"), 256: ("32x64 w8 s2",),
    },
    ("backward_dq", 90, "tensor"): {
        16: ("64x32 w4 s2",), 32: ("64x32 w4 s2",), 48: ("64x32 w4 s2",), 64: ("64x32 w4 s2",),
        80: ("64x32 w8 s2",), 128: ("64x32 w8 s2",), 160: ("128x32 w8 s2",), 256: ("128x16 w8 s2",),
    },
    ("backward_dq", 80, "tensor"): {
        16: ("64x32 w4 s2",), 32: ("64x32 w4 s2",), 48: ("64x32 w4 s2",), 64: ("64x32 w4 s2",),
        80: ("64x32 w8 s2",), 128: ("64x32 w8 s2",), 160: ("64x16 w4 s2",), 256: ("32x16 w4 s2",),
    },
    ("backward_dkdv", 90, "tensor"): {
        16: ("32x64 w4 s2",), 32: ("32x64 w4 s2",), 48: ("32x64 w4 s2",), 64: ("32x64 w8 s1",),
        80: ("32x64 w8 s2",), 128: ("32x64 w8 s2",), 160: ("32x64 w8 s2",), 256: ("32x64 w16 s2",),
    },
    ("backward_dkdv", 80, "tensor"): {
        16: ("32x64 w4 s2",), 32: ("32x64 w4 s2",), 48: ("32x64 w4 s2",), 64: ("32x64 w8 s1",),
        80: ("16x64 w4 s2",), 128: ("32x64 w8 s2",), 160: ("16x32 w8 s2",), 256: ("32x64 w8 s2",),
    },
}
_FP32_TILES = {  # CUDA-core products: an FMA dot keeps its operand rows in registers for the whole D
    "forward": {**{w: ("32x32 w8 s2",) for w in (16, 32, 48, 64, 80)},
                **{w: ("32x32 w16 s2",) for w in (128, 160, 256)}},
    "backward_dq": {**{w: ("32x32 w8 s1",) for w in (16, 32, 48, 64, 80)},
                    **{w: ("32x32 w16 s1",) for w in (128, 160, 256)}},
    "backward_dkdv": {**{w: ("32x32 w8 s1",) for w in (16, 32, 48, 64, 80, 128)},
                      **{w: ("32x32 w16 s1",) for w in (160, 256)}},
}
_TILES.update({(kernel_pass, arch, "fp32"): rows for kernel_pass, rows in _FP32_TILES.items() for arch in ARCHS})
# Stack bytes per thread allowed where no spill-free tensor-core tile was found on both toolchains
# (the largest stack seen), by (pass, arch, width); each is printed with its reason in the compile table.
_WIDE_D = "D = 225..256: no spill-free tile found (16-128 rows, 4-16 warps tried)"
_STACK_ALLOWANCES: dict[tuple[str, int, int], tuple[int, str]] = {
    ("forward", 80, 256): (88, _WIDE_D),
    ("backward_dq", 80, 256): (64, _WIDE_D),
    ("backward_dq", 90, 256): (8, _WIDE_D + "; 0 B on triton 3.9, 8 B on 3.6"),
    ("backward_dkdv", 80, 160): (224, "sm_80 dk/dv at D = 129..160: no spill-free tile found (16-64 rows, 4-16 warps)"),
}
# fp32 by (pass, width): wide heads keep a stack at any tile (16x16 at 4 warps included); a D-chunked
# contraction would remove it.
_FP32_STACK: dict[tuple[str, int], int] = {
    ("forward", 128): 224, ("forward", 160): 272, ("forward", 256): 1384,
    ("backward_dq", 128): 152, ("backward_dq", 160): 224, ("backward_dq", 256): 1360,
}


def tile_candidates(kernel_pass: str, width: int, dtype: str, arch: int) -> tuple[LaunchConfig, ...]:
    """The tile configs of ``kernel_pass`` ("forward", "backward_dq", "backward_dkdv") for blocked
    head width ``D0 + D1``, input dtype ("fp16", "bf16", "fp32") and compute capability (80 or 90,
    the table newer archs use); the first is the default. Every one is compiled ahead of time."""
    return tuple(LaunchConfig.parse(text) for text in _TILES[table_key(kernel_pass, arch, dtype)][width])


def allowed_stack(kernel_pass: str, arch: int, dtype: str, width: int) -> tuple[int, str]:
    """(stack bytes per thread the configs of ``tile_candidates(kernel_pass, width, dtype, arch)`` may
    keep, why) for ``arch`` 80 or 90; (0, "") for most."""
    return stack_allowance(kernel_pass, arch, dtype, width, fp32_stack=_FP32_STACK, tensor_stack=_STACK_ALLOWANCES)


def forward_autotune_key(width: int, dtype: str, arch: int, table_shape, N: int, M: int, *, align: int = 1) -> tuple:
    """The forward's autotuning key: blocked head width, dtype, arch, key-table shape (F, K), and
    N and M rounded up to a power of two, so every N in (64, 128] -- 77 text tokens, 100 pixels --
    shares one choice while the 8x8 (N = 64) and 64x64 (N = 4096) levels of a UNet get their own;
    plus ``align`` (``frame_attention.vector_align``), which changes the code each candidate runs."""
    num_frames, table_width = table_shape
    return (width, dtype, arch, (int(num_frames), int(table_width)), next_power_of_2(N),
            next_power_of_2(M), align)


# ----------------------------------------------------------------------------------------------
# The measured table (read once per process; tools/sweep_frame_attention.py writes it)
# ----------------------------------------------------------------------------------------------
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
                f"({', '.join(map(str, declared)) or 'none'}): the table is older than the tile lists")
        return None
    return config
