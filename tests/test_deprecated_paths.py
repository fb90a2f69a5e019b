"""The import paths of vidgen 0.1 keep working for one release, each with a DeprecationWarning
that names the new home, and resolve to the very objects at the new paths."""
import importlib

import pytest

MOVED = [  # (old module, name, new module, new name)
    ("vidgen.processors", "FrameAttnProcessor", "vidgen.integration.processors", "FrameAttnProcessor"),
    ("vidgen.processors", "FRAME_MODES", "vidgen.integration.processors", "FRAME_MODES"),
    ("vidgen.models", "VideoUNet", "vidgen.integration.video_unet", "VideoUNet"),
    ("vidgen.models", "inflate", "vidgen.integration.video_unet", "inflate"),
    ("vidgen.models.video_unet", "FrameCount", "vidgen.integration.video_unet", "FrameCount"),
    ("vidgen.models.attention", "ReferenceTemporalAttnProcessor", "vidgen.integration.processors",
     "ReferenceTemporalAttnProcessor"),
    ("vidgen.models.attention", "FRAME_MODES", "vidgen.integration.video_unet", "INFLATION_MODES"),
    ("vidgen.models.attention", "key_frame_indices", "vidgen.integration.processors", "key_frames_for"),
    ("vidgen.modules", "temporal_self_attention", "vidgen.integration.processors", "temporal_self_attention"),
    ("vidgen.modules", "patch_temporal_transformer", "vidgen.integration.motion", "patch_temporal_transformer"),
    ("vidgen.modules", "FusedTemporalTransformer", "vidgen.integration.motion", "FusedTemporalTransformer"),
    ("vidgen.patching", "patch", "vidgen.integration.patch", "patch"),
    ("vidgen.patching", "PatchReport", "vidgen.integration.patch", "PatchReport"),
    ("vidgen.patching", "FirstFrameAttnProcessor", "vidgen.integration.processors", "FirstFrameAttnProcessor"),
    ("vidgen.patching", "KernelFallbackWarning", "vidgen.integration.processors", "KernelFallbackWarning"),
    ("vidgen.schedulers", "FusedDDIMScheduler", "vidgen.integration.schedulers", "FusedDDIMScheduler"),
]


@pytest.mark.parametrize("old,name,new,new_name", MOVED, ids=[f"{old}.{name}" for old, name, _, _ in MOVED])
def test_old_path_warns_and_resolves_to_the_new_object(old, name, new, new_name):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{new_name}; .* 0\.3"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), new_name)
    assert name in dir(module)


def test_from_import_of_an_old_path_warns():
    with pytest.warns(DeprecationWarning, match="vidgen.processors.FrameAttnProcessor moved"):
        from vidgen.processors import FrameAttnProcessor  # noqa: F401


def test_old_path_names_what_it_does_not_have():
    import vidgen.processors

    with pytest.raises(AttributeError, match="'vidgen.processors' has no attribute 'NoSuchThing'"):
        vidgen.processors.NoSuchThing


def test_the_top_level_api_is_where_it_was_without_warnings(recwarn):
    import vidgen

    for name in ("patch", "unpatch", "is_patched", "patch_report", "PatchReport", "PatchEntry", "inflate",
                 "VideoUNet", "KernelFallbackWarning", "VideoModel", "sample_video", "invert"):
        assert getattr(vidgen, name) is not None
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning) and "vidgen" in str(w.message)]
