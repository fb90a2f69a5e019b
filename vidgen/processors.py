"""Deprecated path: moved to :mod:`vidgen.integration.processors` (removed in vidgen 0.3)."""
from ._deprecated import moved

__getattr__, __dir__ = moved(__name__, "vidgen.integration.processors")
