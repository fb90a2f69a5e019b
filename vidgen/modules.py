"""Deprecated path: motion modules moved to :mod:`vidgen.integration.motion`, ``temporal_self_attention``
to :mod:`vidgen.integration.processors` (removed in vidgen 0.3)."""
import warnings

from ._deprecated import REMOVED_IN, moved

__getattr__, __dir__ = moved(__name__, "vidgen.integration.motion", "vidgen.integration.processors")


def patch_motion_modules(model) -> int:
    """Deprecated: ``vidgen.patch(model, frame_attention=False, guidance=False)`` does this, with undo
    (``vidgen.unpatch``), the FreeNoise check and a report. Returns how many motion modules it patched."""
    import vidgen

    warnings.warn("vidgen.modules.patch_motion_modules is deprecated: use vidgen.patch(model, frame_attention=False, "
                  f"guidance=False), which vidgen.unpatch undoes; removed in vidgen {REMOVED_IN}",
                  DeprecationWarning, stacklevel=2)
    vidgen.patch(model, frame_attention=False, guidance=False)
    return sum(entry.what.endswith("(motion module)") for entry in vidgen.patch_report(model).replaced)
