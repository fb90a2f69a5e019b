"""Argument checks shared by the ops: each raises before any kernel launch and names the argument."""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INT32_MAX = 2**31 - 1


def floating_dtype(name: str, dtype: torch.dtype, allowed=FLOAT_DTYPES) -> None:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name}: expected a torch.dtype, got {type(dtype).__name__}")
    if dtype not in allowed:
        raise TypeError(f"{name}: expected one of {', '.join(str(d) for d in allowed)}, got {dtype}")


def tensor(name: str, value, *, ndim: int | None = None, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in ({', '.join(str(d) for d in dtypes)}), got {value.dtype}")
    return value


def linear_operands(x, weight, bias, *, dtypes, weight_shape: str, rows_ok=bool) -> None:
    """A projection's operands: x (..., K) non-empty, weight (rows, K) with ``rows_ok(rows)``, bias
    (rows,) or None, all in x's dtype (one of ``dtypes``). ``weight_shape`` is what a wrong weight's
    message expects, with ``{K}`` for x's last size."""
    tensor("x", x, dtypes=dtypes)
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"x: expected a non-empty (..., K) tensor, got shape {tuple(x.shape)}")
    tensor("weight", weight, ndim=2, dtypes=dtypes)
    if not rows_ok(weight.shape[0]) or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight: expected {weight_shape.format(K=x.shape[-1])}, got {tuple(weight.shape)}")
    if bias is not None:
        tensor("bias", bias, ndim=1, dtypes=dtypes)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias: expected ({weight.shape[0]},), one per row of weight, got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name}: expected x's dtype ({x.dtype}), got {t.dtype}")


def same_device(**tensors: torch.Tensor | None) -> torch.device:
    present = {k: t for k, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        listed = ", ".join(f"{k} on {t.device}" for k, t in present.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")
    return next(iter(devices))


def same_dtype(**tensors: torch.Tensor | None) -> torch.dtype:
    present = {k: t for k, t in tensors.items() if t is not None}
    dtypes = {t.dtype for t in present.values()}
    if len(dtypes) > 1:
        listed = ", ".join(f"{k}: {t.dtype}" for k, t in present.items())
        raise TypeError(f"all tensors must share one dtype, got {listed}")
    return next(iter(dtypes))


def same_shape(reference_name: str, reference: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.shape != reference.shape:
            raise ValueError(f"{name}: expected shape {tuple(reference.shape)} (like {reference_name}), "
                             f"got {tuple(t.shape)}")


def shape(name: str, value: Sequence[int]) -> tuple[int, ...]:
    # operator.index, not int(): 4.9 must be refused, not truncated to 4 (and True is not 1).
    try:
        if isinstance(value, (str, bytes)) or any(isinstance(d, bool) for d in value):
            raise TypeError
        dims = tuple(operator.index(d) for d in value)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of ints, got {value!r}") from None
    if not dims:
        raise ValueError(f"{name}: expected at least one dimension, got an empty shape")
    if any(d <= 0 for d in dims):
        raise ValueError(f"{name}: every dimension must be positive, got {dims}")
    return dims


def dim_index(name: str, dim: int, ndim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"{name}: expected an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim} is out of range for a {ndim}-D shape")
    return dim % ndim


def choice(name: str, value: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def scale(name: str, value) -> float:
    """An attention score scale: a finite number > 0 (0 would make attention uniform, < 0 invert it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float or None, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite value > 0, got {value}")
    return float(value)


def finite_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return float(value)


def non_negative(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name}: expected a finite value >= 0, got {value}")
    return value
