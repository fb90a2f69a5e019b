"""Old import paths that keep working for one release (0.1 -> 0.2), with a ``DeprecationWarning``.

vidgen 0.2 gathered its diffusers integration in :mod:`vidgen.integration`. A module that moved
keeps a stub at its old path whose attributes resolve, on first use, to the same objects at the
new path (``vidgen.processors.FrameAttnProcessor is vidgen.integration.processors.FrameAttnProcessor``),
each use warning once per place in the caller's code, as Python does for any warning.
"""
from __future__ import annotations

import importlib
import warnings

REMOVED_IN = "0.3"


def moved(old: str, *new: str, renamed: dict[str, str] | None = None):
    """``(__getattr__, __dir__)`` for the stub module ``old`` whose names now live in ``new`` (searched
    in order); ``renamed`` maps an old name to its new one where the name changed too."""
    renamed = renamed or {}

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        target = renamed.get(name, name)
        for module_name in new:
            module = importlib.import_module(module_name)
            if hasattr(module, target):
                value = getattr(module, target)
                # Name the module that defines it when one new module re-imports it from another.
                home = getattr(value, "__module__", None)
                home = home if home in new else module_name
                warnings.warn(f"{old}.{name} moved to {home}.{target}; the old path is removed in vidgen "
                              f"{REMOVED_IN}", DeprecationWarning, stacklevel=2)
                return value
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        names = set(renamed)
        for module_name in new:
            module = importlib.import_module(module_name)
            names.update(getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")]))
        return sorted(names)

    return __getattr__, __dir__
