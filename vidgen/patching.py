"""Deprecated path: moved to :mod:`vidgen.integration.patch` (removed in vidgen 0.3); the patch entry
point is ``vidgen.patch``."""
from ._deprecated import moved

__getattr__, __dir__ = moved(__name__, "vidgen.integration.patch", "vidgen.integration.processors")
